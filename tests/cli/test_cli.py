"""The command line: help without torch, version, pretrain/finetune end to end, bad input → one line, exit 2."""

import json
import subprocess
import sys

import fakedata
import pytest
from typer.testing import CliRunner

from lbfood import __version__
from lbfood.cli import app

runner = CliRunner()
FT = ["--batch-size", "64", "--limit", "128", "--device", "cpu", "--workers", "0", "-q"]
TINY = ["--width", "0.125", *FT]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from lbfood.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); "
            "r2 = CliRunner().invoke(app, ['pretrain', '--help']); "
            "print(r.exit_code, r2.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "False"]


def test_version_and_module_entry():
    assert invoke("--version").output.strip() == f"lbfood {__version__}"
    r = subprocess.run([sys.executable, "-m", "lbfood", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["report", "--limit", "abc"], "Invalid value for '--limit'"),
    (["report", "--bogus"], "No such option: --bogus"),
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["export", "--threshold", "abc"], "Invalid value for '--threshold'"),
])
def test_unparsable_options_are_one_error_line_from_the_console_script(args, needle):
    """The console script (lbfood.cli:main) turns Typer's boxed usage panel into one line naming the
    help to read; --help, --version and the bare command still behave as Typer makes them."""
    r = subprocess.run([sys.executable, "-m", "lbfood", *args], capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert lines[0].endswith("--help`")
    assert r"Traceback" not in r.stderr
    for ok in (["score", "--help"], ["--version"]):
        assert subprocess.run([sys.executable, "-m", "lbfood", *ok], capture_output=True).returncode == 0


def test_pretrain_help_shows_defaults():
    out = invoke("pretrain", "--help").output
    for text in ("backdrops", "resnet18", "default: 100", "default: 128", "default: 0.1"):
        assert text in out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_pretrain_then_finetune(in_tmp):
    r = invoke("pretrain", "--epochs", "1", *TINY)
    assert r.exit_code == 0, r.output
    parent = (in_tmp / "runs" / "latest").resolve()
    r = invoke("finetune", "--epochs", "1", "--delta", "0.2", *FT)
    assert r.exit_code == 0, r.output
    assert "background" in r.output
    child = (in_tmp / "runs" / "latest").resolve()
    assert child != parent and child.name.endswith("-lff")
    meta = json.loads((child / "run.json").read_text())
    assert meta["kind"] == "finetune" and meta["parent"] == str(parent)
    cfg = meta["config"]
    assert cfg["delta"] == 0.2 and cfg["lam"] == 1.0 and cfg["jitter"] == 0.0 and cfg["weight_decay"] == 1e-4
    assert isinstance(cfg["mu"], float) and meta["mu_auto"] is True
    line = json.loads((child / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "lff", "bg_share", "bg_norm", "fg_norm", "test_acc"} <= set(line)
    # The CE-only control: λ = 0.
    r = invoke("finetune", "--from", parent, "--epochs", "1", "--lambda", "0", *FT)
    assert r.exit_code == 0, r.output
    assert (in_tmp / "runs" / "latest").resolve().name.endswith("-ce")


def test_cifar10_fake_data_trains_and_reloads(in_tmp):
    fakedata.write_cifar10(in_tmp / "d", n_train=64, n_test=32)
    r = invoke("pretrain", "--data", "cifar10", "--data-root", in_tmp / "d", "--epochs", "1", "--out", "c10", *TINY)
    assert r.exit_code == 0, r.output
    from lbfood.engine import runs

    model, meta = runs.load_run(in_tmp / "c10")
    assert meta.data == "cifar10" and len(meta.classes) == 10 and meta.mean[0] == pytest.approx(0.4914)


def _one_error_line(r, code=2, *needles):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert "error" in lines[0] and "Traceback" not in r.output
    for n in needles:
        assert n in text, text


def test_bad_inputs(in_tmp):
    _one_error_line(invoke("pretrain", "--arch", "vgg11", *TINY), 2, "unknown architecture", "resnet18")
    _one_error_line(invoke("pretrain", "--data", "nope", *TINY), 2, "unknown dataset", "backdrops")
    _one_error_line(invoke("pretrain", "--data", "cifar10", "--data-root", in_tmp / "empty", *TINY), 2,
                    "cifar-10-batches-py", "--download")
    _one_error_line(invoke("pretrain", "--epochs", "0", *TINY), 2, "--epochs")
    _one_error_line(invoke("finetune", *FT), 2, "not found")  # no runs/latest yet
    (in_tmp / "notarun").mkdir()
    _one_error_line(invoke("finetune", "--from", "notarun", *FT), 2, "not an lbfood run")
    assert not (in_tmp / "runs").exists()  # nothing half-written

    r = invoke("pretrain", "--epochs", "1", "--out", "r1", *TINY)
    assert r.exit_code == 0, r.output
    for flag, value, needle in (("--delta", "1.5", "--delta"), ("--delta", "0", "--delta"), ("--mu", "-1", "--mu"),
                                ("--mu", "big", "--mu"), ("--lambda", "-0.5", "--lambda"),
                                ("--mask-from", "nowhere", "--mask-from")):
        _one_error_line(invoke("finetune", "--from", "r1", flag, value, *FT), 2, needle)
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == ["latest"]  # only the link to r1

    _one_error_line(invoke("pretrain", "--resume", "--out", "r1", "--arch", "resnet34", *TINY), 2, "resnet18")
    _one_error_line(invoke("pretrain", "--epochs", "1", "--out", "r1", *TINY), 2, "holds a run with finished epochs")
    meta = json.loads((in_tmp / "r1" / "run.json").read_text())
    (in_tmp / "r1" / "run.json").write_text(json.dumps({**meta, "format": 99, "lbfood": "9.0"}))
    _one_error_line(invoke("finetune", "--from", "r1", *FT), 2, "format")
    (in_tmp / "r1" / "run.json").write_text("{not json")
    _one_error_line(invoke("finetune", "--from", "r1", *FT), 2, "corrupt")


# ---- issue 21.1–21.4: documented paths that crashed -------------------------------------------------

HOLD = ["--arch", "resnet18", "--width", "0.125", "--batch-size", "16", "--limit", "64", "--device", "cpu",
        "--workers", "0"]


def test_pretrain_holdout_runs_resumes_and_its_at_chance_guard_reads_validation(tmp_path, small_backdrops,
                                                                                 monkeypatch):
    """21.1: `pretrain --holdout` died after its first epoch (the guard read `test_acc`); its epoch line called
    the held-out images "test images". Now: end to end, resumed, judged on validation accuracy."""
    from lbfood.engine.training import guards

    monkeypatch.chdir(tmp_path)
    r = invoke("pretrain", *HOLD, "--holdout", "0.25", "--epochs", "1", "--out", "p")
    assert r.exit_code == 0, r.output
    flat = "".join(r.output.split())  # Rich wraps at the terminal width
    assert "46train/18validationimages" in flat and "valacc" in flat and "testacc" not in flat
    meta = json.loads((tmp_path / "p" / "run.json").read_text())
    assert meta["status"] == "done" and "val_acc" in meta["metrics"] and "test_acc" not in meta["metrics"]
    r = invoke("pretrain", "--resume", "--out", "p", "--epochs", "2", "-q")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "p" / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"], meta["config"]["holdout"]) == ("done", 2, 0.25)
    # The guard on validation accuracy (judged at epoch 3 here): the stop names the validation split.
    monkeypatch.setattr(guards, "CHANCE_MIN_STEPS", 1)
    r = invoke("pretrain", *HOLD, "--holdout", "0.25", "--epochs", "3", "--lr", "1e-9", "-q", "--out", "c")
    assert r.exit_code == 2 and "KeyError" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: validation accuracy is "), r.output


def test_resume_keeps_every_recorded_setting_not_given(tmp_path, small_backdrops, monkeypatch):
    """21.3: `--resume` without --epochs took the CLI default (100): a finished 1-epoch run retrained toward
    100, and a run killed in its closing calibration trained on instead of calibrating."""
    monkeypatch.chdir(tmp_path)
    assert invoke("pretrain", *HOLD, "--epochs", "1", "-q", "--out", "p").exit_code == 0
    run = tmp_path / "p"
    r = invoke("pretrain", "--resume", "--out", "p", "-q")
    assert r.exit_code == 2 and "already finished 1 epoch(s)" in r.output, r.output
    assert json.loads((run / "run.json").read_text())["config"]["epochs"] == 1
    # Killed during calibration: trained, not done; --resume (no --epochs) only calibrates.
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="trained", threshold=None)
    (run / "run.json").write_text(json.dumps(meta))
    r = invoke("pretrain", "--resume", "--out", "p")
    assert r.exit_code == 0 and "was not calibrated; calibrating it now" in r.output, r.output
    meta = json.loads((run / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"], meta["config"]["epochs"]) == ("done", 1, 1)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_holdout_parent_feeds_a_sweep_with_data_root(tmp_path, small_backdrops, monkeypatch):
    """21.1 + 21.4: a `pretrain --holdout` parent feeds `lbfood sweep`, which takes --data-root like every
    other command that reads data (the run records it; backdrops itself is generated, so any folder does)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LBFOOD_DATA", raising=False)
    assert invoke("pretrain", *HOLD, "--holdout", "0.25", "--epochs", "1", "-q", "--out", "p").exit_code == 0
    root = tmp_path / "datasets"
    root.mkdir()
    r = invoke("sweep", "--from", "p", "--out", "s", "--data-root", root, "--lambda", "1", "--mu", "auto",
               "--epochs", "1", "--batch-size", "16", "--limit", "64", "--holdout", "0.25", "--pseudo", "uniform",
               "--device", "cpu", "--workers", "0", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [t["key"] for t in doc["trials"]][0] == "control" and len(doc["trials"]) == 2
    for t in doc["trials"]:
        cfg = json.loads((tmp_path / "s" / t["run"] / "run.json").read_text())["config"]
        assert cfg["data_root"] == str(root)


def test_sweep_help_lists_data_root():
    assert "--data-root" in invoke("sweep", "--help").output
