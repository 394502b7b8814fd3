"""The import layers (``.importlinter``): the contract passes on this tree and catches a violation."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_contract_names_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    roots = cfg["importlinter"]["root_packages"].split()
    layers = [name.strip() for line in cfg["importlinter:contract:layers"]["layers"].split("\n")
              for name in line.split("|") if name.strip()]
    assert sorted(roots) == PACKAGES
    assert sorted(layers) == PACKAGES


def test_contract_holds():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_contract_catches_a_storage_module_importing_train(tmp_path):
    for name in PACKAGES + [".importlinter"]:
        src = ROOT / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, tmp_path / name))
    atomic = tmp_path / "storage" / "atomic.py"
    atomic.write_text(atomic.read_text() + "\nfrom train.config import RunConfig  # noqa: E402,F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "storage.atomic -> train.config" in result.stdout
    assert "0 kept, 1 broken" in result.stdout


def test_no_package_imports_run_py():
    """run.py sits on top of every package (it is a module, so the contract cannot list it)."""
    importers = []
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in PACKAGES:
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                importers += [str(path) for n in names if n == "run" or n.startswith("run.")]
    assert importers == []
