"""The house rules that keep the package navigable (ARCHITECTURE.md): checked on the source, not by habit."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lbfood"


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth (function-local imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize(("wing", "other"), [("training", "evaluation"), ("evaluation", "training")])
def test_the_wings_never_import_each_other(wing, other):
    bad = {str(p.relative_to(PKG)): sorted(i for i in _imports(p) if i.startswith(f"lbfood.engine.{other}"))
           for p in _modules(PKG / "engine" / wing)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_engine_never_imports_the_cli_or_rich_or_prints():
    for p in _modules(PKG / "engine"):
        imports = _imports(p)
        assert not {i for i in imports if i.split(".")[0] in ("typer", "rich")}, p
        assert not {i for i in imports if i.startswith(("lbfood.cli", "lbfood.commands", "lbfood.output"))}, p
        calls = [n for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{p} calls print()"


def test_run_json_has_one_writer():
    writers = sorted({p.relative_to(PKG).as_posix() for p in _modules(PKG)
                      for line in p.read_text(encoding="utf-8").splitlines()
                      if "run.json" in line and re.search(r"\bwrite|open\(", line) and not line.lstrip().startswith("#")})
    assert writers == ["engine/runs.py"]


def test_no_file_over_400_lines():
    """About 400 lines at most (STYLE 15), unless the file says why at its top ("Over 400 lines: ...")."""
    long = {p.relative_to(PKG).as_posix(): n for p in _modules(PKG)
            if (n := len((text := p.read_text(encoding="utf-8")).splitlines())) > 400
            and "Over 400 lines: " not in (ast.get_docstring(ast.parse(text)) or "")}
    assert long == {}


def test_one_file_lock():
    """Folders are locked by one helper (engine/io.py folder_lock), not by flock calls spread around."""
    users = sorted(p.relative_to(PKG).as_posix() for p in _modules(PKG) if "fcntl.flock" in p.read_text("utf-8"))
    assert users == ["engine/io.py"]


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, lbfood.cli; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


RUN_FOLDER_NAMES = {"run.json", "model.safetensors", "train_state.safetensors", "metrics.jsonl",
                    "scorers", "cache"}  # (.lock is the lock helper's, engine/io.py: runs and sweeps have one)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_only_runs_py_names_a_run_folders_files():
    """What a run folder contains is known in one place: a path built from a run folder's file name (a string
    that is exactly "run.json", "model.safetensors", …) anywhere but engine/runs.py fails; messages that
    mention them in a sentence are fine."""
    found = {}
    for p in _modules(PKG):
        rel = p.relative_to(PKG).as_posix()
        if rel in ("engine/runs.py", "engine/weights.py"):  # weights.py: the Hugging Face hub's file names
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        hits = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and id(n) not in docs and (n.value in RUN_FOLDER_NAMES or n.value.rsplit("/", 1)[-1] in
                                           RUN_FOLDER_NAMES - {"scorers", "cache"})]
        if hits:
            found[rel] = hits
    assert found == {}


def test_every_config_is_defined_in_config_py():
    """Every *Config dataclass lives in engine/config.py (each with its one check())."""
    found = {}
    for p in _modules(PKG):
        rel = p.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and rel != "engine/config.py":
                found.setdefault(rel, []).append(node.name)
    assert found == {}


def test_only_the_command_and_output_folders_print():
    """Outside lbfood/cli.py, lbfood/commands/ and lbfood/output/, nothing calls print() or imports rich."""
    outside = [p for p in _modules(PKG) if p.relative_to(PKG).parts[0] not in ("commands", "output", "cli.py")]
    bad = {}
    for p in outside:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        prints = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        rich = sorted(i for i in _imports(p) if i.split(".")[0] == "rich")
        if prints or rich:
            bad[p.relative_to(PKG).as_posix()] = (prints, rich)
    assert bad == {}


def test_the_design_cards_layout():
    """lbfood/cli.py is the Typer app; the commands and the output files each have one folder."""
    assert (PKG / "cli.py").is_file() and not (PKG / "cli").exists()
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"]
    from lbfood.cli import app

    assert {c.callback.__wrapped__.__module__.split(".")[1] for c in app.registered_commands} == {"commands"}
