"""The layers hold: `lint-imports` checks the contracts in pyproject.toml, and fails on an upward import.

The installed package maps folders (`core/`, `deployments/`, `flows/`, `tasks/`, `models/`) onto one import root,
which import-linter cannot walk; the test lays the same tree out with links in a temporary folder
and runs `lint-imports` on it, so it checks exactly the files of this checkout.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def _package_tree(dest: Path, copy: tuple[str, ...] = ()) -> Path:
    """`dest/smolforge` with links to the checkout's files; the folders in `copy` are real copies."""
    package = dest / "smolforge"
    package.mkdir(parents=True)
    for entry in (ROOT / "core").iterdir():
        (package / entry.name).symlink_to(entry)
    for folder in ("deployments", "flows", "tasks", "models"):
        if folder in copy:
            shutil.copytree(ROOT / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (package / folder).symlink_to(ROOT / folder)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return package


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_hold(tmp_path):
    _package_tree(tmp_path)
    done = _lint(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_them(tmp_path):
    package = _package_tree(tmp_path, copy=("tasks",))
    planted = package / "tasks" / "curate" / "quality.py"
    planted.write_text(planted.read_text() + "\nfrom smolforge.flows import config  # planted: tasks -> flows\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "smolforge.tasks.curate.quality -> smolforge.flows.config" in done.stdout
