"""The package's shape: no import cycle between modules (lazy imports included), the layer contracts of
pyproject.toml hold, and a wheel carries the configs."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import synthmed

PACKAGE = Path(synthmed.__file__).parent
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The synthmed modules `path` imports anywhere in its body (module level or inside functions)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n != own}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def package_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    known = {module_name(p) for p in files}
    # `from synthmed.x import y` names the package synthmed.x (its __init__): that edge is real but trivial for
    # packages whose __init__ imports nothing, so only modules with code count as nodes.
    graph = {module_name(p): imported_modules(p, known) for p in files}
    return {m: {d for d in deps if not (PACKAGE.joinpath(*d.split(".")[1:], "__init__.py").is_file())}
            for m, deps in graph.items()}


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    graph = package_graph()
    assert len(graph) > 50 and graph["synthmed.train"]  # the scan sees the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_import_linter_contracts_hold():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.slow
def test_a_wheel_carries_the_configs_and_composes_outside_the_checkout(tmp_path):
    # `pip install .` / a wheel must work, not only the editable install: conf/ ships as synthmed.conf.
    # Built from a copy of the sources: setuptools writes build/ and *.egg-info/ next to what it builds.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "outputs",
                                                             "multirun", "mlruns", "mlartifacts", "mlflow.db*",
                                                             ".cache", "__pycache__", ".pytest_cache"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("synthmed-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"synthmed/conf/train.yaml", "synthmed/conf/model/ddpm.yaml", "synthmed/conf/model/process/ddim.yaml"} <= names
    packages = {str(p.parent.relative_to(REPO)) for p in PACKAGE.rglob("__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"packages left out of the wheel (add them to [tool.setuptools] packages): {missing}"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import synthmed, synthmed.config as c; print(synthmed.__file__); print(c.CONF_DIR)"
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.split()
    assert all(line.startswith(str(target)) for line in where), where  # the installed copy, not the checkout
    done = subprocess.run([sys.executable, "-m", "synthmed.cli", "train", "--cfg", "job", "model=gan"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "_target_: synthmed.models.gan.GANModule" in done.stdout
