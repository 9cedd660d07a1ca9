"""Every ```bash block of the README runs as written (tests/readme_runner.py says how blocks are chosen)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests import readme_runner as R

REPO = Path(__file__).resolve().parents[1]
HOME = "/home/user"


def test_every_block_is_run_or_says_why_not():
    found = R.blocks(R.readme(REPO))
    assert len(found) >= 10
    run = [b for b in found if b.skip is None]
    assert run, "no README block is run"
    for block in run:
        R.runnable(block)  # raises on placeholders other than run references


def test_every_override_in_the_readme_parses():
    """Hydra's grammar, on every train/sample/evaluate command of every block, run or skipped (e.g. an unquoted
    `root=~/x` is a grammar error: the README's MedMNIST command failed as written)."""
    parser = OverridesParser.create()
    for block in R.blocks(R.readme(REPO)):
        for argv in R.hydra_argvs(block, {"HOME": HOME}):
            overrides = [a for a in argv if "=" in a and not a.startswith("-")]
            try:
                parser.parse_overrides(overrides)
            except Exception as exc:  # noqa: BLE001 - reported with the README line
                pytest.fail(f"README block at line {block.line}: {argv}: {exc}")


def test_runner_refuses_unknown_placeholders():
    block = R.Block(1, "synthmed sample run=<run id> out=<folder>", None)
    with pytest.raises(ValueError, match="<folder>"):
        R.runnable(block)
    assert '"$LAST_RUN"' in R.runnable(R.Block(1, "synthmed sample run=<run id | config hash> n=4", None))
    with pytest.raises(ValueError, match="needs a reason"):
        R.blocks("<!-- readme-test: skip -->\n```bash\nls\n```\n")


def test_the_console_script_runs_cold():
    """The installed `synthmed` entry point itself (the README blocks below run through a warm fork of it)."""
    synthmed = shutil.which("synthmed", path=str(Path(sys.executable).parent)) or shutil.which("synthmed")
    assert synthmed, "the synthmed console script is not installed next to this python"
    done = subprocess.run([synthmed, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: synthmed <command>" in done.stdout
    done = subprocess.run([synthmed, "no-such-command"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown command 'no-such-command'" in done.stderr


@pytest.mark.slow
def test_readme_blocks_run(tmp_path, warm_synthmed):
    """Each `synthmed` line runs as a user's would, in a fresh process forked from one that imported torch & co once
    (tests/warm_cli.py): ~36 commands would otherwise spend ~5 minutes of the suite importing."""
    selected = [b for b in R.blocks(R.readme(REPO)) if b.skip is None]
    bin_dir = Path(sys.executable).parent
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(SYNTHMED_BIN=warm_synthmed, README_ROOT=str(tmp_path), HOME=str(tmp_path / "home"),
               PATH=f"{Path(warm_synthmed).parent}{os.pathsep}{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}")
    script = tmp_path / "readme.sh"
    script.write_text(R.script(selected))
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500)  # ~36 commands, ~5 min on 2 idle cores
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.count("### README block") == len(selected)
