"""Run the README's ```bash blocks as a new user would: every block, in order, in one fresh folder.

Conventions a README author follows (generic: new sections need nothing here):

- `<!-- readme-test: skip (reason) -->` on the line(s) right before a block: the block is not run (a server, a GPU,
  your own data, a long run). The reason is required.
- A run reference placeholder (`<run id | config hash>`, `<id>`, `<config hash>`, `<vae run id | config hash>`,
  ...) stands for the run trained last: the runner substitutes the config hash that run printed.
- Any other `<placeholder>` or `...` in a block that is run is an error: write a command that runs as written.

`synthmed train` commands get fast overrides appended (`debug=smoke` unless the command sets `debug=`, 4 steps),
so the whole README runs in minutes on a CPU; everything else runs exactly as written.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*(?:\((?P<reason>[^)]*)\))?\s*-->")
RUN_REF = re.compile(r"<[^<>]*\b(?:id|hash)\b[^<>]*>")
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")
FAST_TRAIN = ["trainer.max_steps=4", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    text: str  # the block's lines, as written
    skip: str | None  # the reason it is not run, or None

    def commands(self) -> list[str]:
        """Shell commands, continuation lines joined, comment-only and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [c for c in (line.strip() for line in joined.splitlines()) if c and not c.startswith("#")]


def blocks(readme: str) -> list[Block]:
    """Every ```bash block with its skip reason (None = run it). A skip marker without a reason is an error."""
    lines, out, i = readme.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, j = i, i + 1
            while lines[j].strip() != "```":
                j += 1
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = SKIP.search(lines[k]) if k >= 0 else None
            if marker and not (marker.group("reason") or "").strip():
                raise ValueError(f"README line {k + 1}: a readme-test skip marker needs a reason: "
                                 f"<!-- readme-test: skip (why) -->")
            out.append(Block(start + 1, "\n".join(lines[start + 1:j]), marker and marker.group("reason").strip()))
            i = j
        i += 1
    return out


def runnable(block: Block) -> str:
    """The block's text with run references substituted; refuses other placeholders."""
    text = RUN_REF.sub('"$LAST_RUN"', block.text)
    left = PLACEHOLDER.findall(text) + (["..."] if re.search(r"\s\.\.\.(\s|$)", text) else [])
    if left:
        raise ValueError(f"README block at line {block.line} is run by tests/test_readme.py but holds placeholders "
                         f"{left}: write a command that runs as written, or mark it "
                         f"<!-- readme-test: skip (reason) -->")
    return text


PRELUDE = r"""
set -eo pipefail
LAST_RUN=""
# `synthmed train` gets fast overrides; every call's output is kept to learn the config hash it printed.
synthmed() {
  local fast=()
  if [ "$1" = train ]; then
    case " $* " in *" debug="*) ;; *) fast+=(debug=smoke) ;; esac
    fast+=(%(fast)s)
  fi
  "$SYNTHMED_BIN" "$@" "${fast[@]}" 2>&1 | tee "$README_ROOT/.last_output"
  local found
  found=$(sed -n 's/^config hash: *//p' "$README_ROOT/.last_output" | tail -n 1)
  if [ -n "$found" ]; then LAST_RUN=$found; fi
}
"""


def script(selected: list[Block]) -> str:
    """One bash script running `selected` in order; each block announces its README line."""
    parts = [PRELUDE % {"fast": " ".join(shlex.quote(o) for o in FAST_TRAIN)}]
    for block in selected:
        parts.append(f'echo "### README block at line {block.line}"\n{runnable(block)}\n')
    return "\n".join(parts)


def hydra_argvs(block: Block, env: dict[str, str]) -> list[list[str]]:
    """The arguments of every `synthmed train|sample|evaluate|translate` command as the shell passes them
    (quotes removed, `$VAR` from `env` expanded; a shell would not expand `~` inside `key=~/x`)."""
    out = []
    for command in block.commands():
        expanded = RUN_REF.sub("abcdef123456", command)
        for name, value in env.items():
            expanded = expanded.replace(f"${{{name}}}", value).replace(f"${name}", value)
        words = shlex.split(expanded, comments=True)
        if len(words) > 1 and words[0] == "synthmed" and words[1] in ("train", "sample", "evaluate", "translate"):
            out.append([w for w in words[2:] if w not in ("-m", "--multirun")])
    return out


def readme(repo: Path) -> str:
    return (repo / "README.md").read_text()
