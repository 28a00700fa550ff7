"""lbfood.engine.runs: the typed run.json, its one writer, and the folder rules."""

from __future__ import annotations

import json

import fakedata as fd
import pytest
from cli_checks import clean, one_error_line
from hostile_checks import (
    CPU,
    TINY,
    invoke,
    squeezed,
    tree,
)
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import runs
from lbfood.engine.errors import RunError, StorageError
from lbfood.engine.runs import RunMeta

META = dict(kind="pretrain", arch="resnet18", width=0.25, classes=["a", "b"], input_size=32,
            mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], data="backdrops", config={"epochs": 1})


def test_round_trip_and_the_one_writer(tmp_path):
    meta = RunMeta(**META, threshold={"method": "react", "value": 1.5})
    runs.write(tmp_path, meta)
    raw = json.loads((tmp_path / "run.json").read_text())
    assert raw["format"] == runs.SCHEMA and raw["lbfood"] and "run_dir" not in raw
    assert "parent" not in raw and "thresholds" not in raw  # unset optional keys are not written
    back = runs.read(tmp_path)
    assert back == meta and back.run_dir == tmp_path.resolve()
    updated = runs.update(tmp_path, status="done", thresholds={"energy": {"method": "energy", "value": 2.0}})
    assert runs.read(tmp_path).status == "done" == updated.status
    assert runs.read(tmp_path).thresholds == {"energy": {"method": "energy", "value": 2.0}}


def test_an_imported_run_records_its_source_and_old_runs_load_without_one(tmp_path):
    src = {"model": "timm:resnet50.a1_in1k", "weights": "w.pth", "head_rows": 1000, "new_head": True}
    runs.write(tmp_path, RunMeta(**{**META, "kind": "imported", "arch": "timm:resnet50"}, source=src))
    assert runs.read(tmp_path).source == src and runs.read(tmp_path).kind == "imported"
    runs.write(tmp_path, RunMeta(**META))
    assert "source" not in json.loads((tmp_path / "run.json").read_text()) and runs.read(tmp_path).source is None


@pytest.mark.parametrize(("change", "message"), [
    ({"width": "abc"}, "width must be a finite number"),
    ({"width": float("nan")}, "width must be a finite number"),
    ({"classes": []}, "classes must be a non-empty list"),
    ({"input_size": 0}, "input_size must be a positive integer"),
    ({"std": [1, 0, 1]}, "std must be three finite numbers"),
    ({"mean": [1, 2]}, "mean must be three finite numbers"),
    ({"config": []}, "config must be a JSON object"),
    ({"format": 99}, "run format 99"),
    ({"kind": "imported", "source": "timm:resnet50"}, "source must be a JSON object"),
    ({"far_gate": []}, "far_gate must be "),
    ({"far_gate": {"method": "fargate", "value": "x", "keep": 0.995}}, "far_gate.value must be "),
    ({"far_gate": {"method": "fargate", "value": float("inf"), "keep": 0.995}}, "far_gate.value must be "),
    ({"far_gate": {"method": "fargate", "value": -3.0, "keep": 1.5}}, r"far_gate.keep must be in \(0, 1\]"),
    ({"far_gate": {"method": 1, "value": -3.0, "keep": 0.995}}, "far_gate.method must be "),
    ({"far_gate": {"method": "fargate", "value": -3.0, "keep": 0.995, "params": 3}}, "far_gate.params must be "),
])
def test_run_json_is_validated_on_load(tmp_path, change, message):
    raw = {"format": runs.SCHEMA, **META, **change}
    (tmp_path / "run.json").write_text(json.dumps(raw))
    with pytest.raises(RunError, match=message):
        runs.read(tmp_path)


def test_the_far_gate_entry_round_trips_and_older_run_json_loads_without_it(tmp_path):
    gate = {"method": "fargate", "value": -41.5, "keep": 0.995, "split": "train", "params": {"shrinkage": 0.1}}
    runs.write(tmp_path, RunMeta(**META, far_gate=gate))
    assert json.loads((tmp_path / "run.json").read_text())["far_gate"] == gate
    assert runs.read(tmp_path).far_gate == gate
    (tmp_path / "run.json").write_text(json.dumps({"format": runs.SCHEMA, **META}))  # before the gate existed
    assert runs.read(tmp_path).far_gate is None
    runs.write(tmp_path, runs.read(tmp_path))
    assert "far_gate" not in json.loads((tmp_path / "run.json").read_text())  # unset: not written


def test_missing_keys_and_damaged_files(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"format": runs.SCHEMA, "kind": "pretrain"}))
    with pytest.raises(RunError, match="lacks arch, width, classes"):
        runs.read(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="corrupt"):
        runs.read(tmp_path)
    with pytest.raises(RunError, match="not found"):
        runs.read(tmp_path / "nope")


def test_weights_that_do_not_match_run_json_are_a_run_error(tmp_path, make_run):
    run = make_run(tmp_path)
    runs.update(run, classes=["a", "b", "c"])  # the weights have 10 classes
    with pytest.raises(RunError, match="does not match run.json"):
        runs.load_run(run)


def test_output_dir_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    with pytest.raises(RunError, match="not empty"):
        runs.output_dir(tmp_path / "full", resume=False, data="d", arch="a")
    assert runs.output_dir(tmp_path / "new", resume=False, data="d", arch="a") == tmp_path / "new"
    made = runs.output_dir(None, resume=False, data="imagefolder:/x/my data", arch="resnet18", suffix="lff")
    assert made.parent == runs.RUNS_DIR and made.name.endswith("-my_data-resnet18-lff")
    with pytest.raises(RunError, match="no run under runs/"):
        runs.output_dir(None, resume=True, data="d", arch="a")
    runs.write(tmp_path / "runs" / "r1", RunMeta(**META))
    with pytest.raises(RunError, match="holds no finished epoch.*without --resume, with --out runs/r1"):
        runs.output_dir(None, resume=True, data="d", arch="a")
    assert runs.output_dir("runs/r1", resume=False, data="d", arch="a") == runs.RUNS_DIR / "r1"  # start over
    (tmp_path / "runs" / "r1" / runs.STATE_FILE).write_bytes(b"")
    assert runs.output_dir(None, resume=True, data="d", arch="a") == runs.RUNS_DIR / "r1"
    with pytest.raises(RunError, match="holds a run with finished epochs; continue it with --resume"):
        runs.output_dir("runs/r1", resume=False, data="d", arch="a")


def test_point_latest_is_a_relative_link(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    runs.point_latest(run, tmp_path / "runs")
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and not latest.readlink().is_absolute() and latest.resolve() == run.resolve()


@pytest.mark.parametrize(("change", "message"), [
    ({"threshold": {"method": "react", "value": "high"}},
     "threshold.value must be a finite number, got 'high'; the file was edited or damaged: remove it from "
     "run.json and `lbfood score` calibrates it again"),
    ({"threshold": {"method": "react", "value": float("nan")}}, "threshold.value must be a finite number, got nan"),
    ({"thresholds": {"energy": {"method": "energy", "value": float("inf")}}},
     "thresholds.energy.value must be a finite number, got inf"),
    ({"thresholds": {"energy": {"value": 1.0}}}, "thresholds.energy.method is missing"),
    ({"epochs_done": -5}, "epochs_done must be a whole number >= 0, got -5"),
    ({"epochs_done": 1.5}, "epochs_done must be a whole number, got 1.5"),
    ({"kind": "bogus"}, "kind must be one of 'pretrain', 'finetune', 'imported', got 'bogus'"),
    ({"status": "weird"}, "status must be one of 'running', 'interrupted', 'stopped', 'trained', 'done', got 'weird'"),
    ({"metrics": {"test_acc": "high"}}, "metrics.test_acc must be a number, got 'high'"),
    ({"config": {"epochs": "ten"}}, "config.epochs must be a whole number, got 'ten'"),
    ({"config": {"milestones": [1, "x"]}}, r"config.milestones\[1\] must be a whole number, got 'x'"),
    ({"kind": "finetune", "config": {"mu": [1]}}, r"config.mu must be a number or text or null, got \[1\]"),
    ({"probe": {"bg_quantiles": [0.1, None]}}, r"probe.bg_quantiles\[1\] must be a number, got None"),
    ({"auto": {"method": "knn", "value": 1.0, "candidates": {"knn": {"auroc": "x"}}}},
     "auto.candidates.knn.auroc must be a number, got 'x'"),
    ({"validation": {"val_acc": 0.5}}, "validation.methods is missing"),
    ({"parent": 3}, "parent must be text, got 3"),
    ({"config": {"epochs": [[[[[[[[1]]]]]]]]}}, r"config.epochs must be a whole number, got \[\[\[...\]\]\]"),
    ({"input_size": 100000}, "input size 100000 px is over the 1024 px lbfood resizes images to"),
    ({"width": 1e9}, "width 1e\\+09 makes resnet18's widest layer 512,000,000,000 channels, over the 8,192"),
    ({"arch": "wrn1000000_1"}, "WideResNet depth 1000000 is over the 1000 lbfood builds"),
])
def test_every_field_is_type_checked_on_load_in_one_line(tmp_path, change, message):
    """Nested entries too (thresholds, auto, validation, probe, the config by its stage's types): one
    RunError naming the key path, never a ValueError later in `score`."""
    raw = {"format": runs.SCHEMA, **META, **change}
    (tmp_path / "run.json").write_text(json.dumps(raw))
    with pytest.raises(RunError, match=message) as e:
        runs.read(tmp_path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_json_nested_too_deep_is_one_line(tmp_path):
    (tmp_path / "run.json").write_text("[" * 100000)
    with pytest.raises(RunError, match="is corrupt \\(nested too deep to be a run description\\)"):
        runs.read(tmp_path)


def test_the_entries_lbfood_writes_pass_the_check(tmp_path):
    """What calibrate, --method auto, validation and finetune's probe write is what the check allows."""
    entry = {"method": "react", "value": 1.5, "tpr": 0.95, "split": "test", "data": "backdrops",
             "params": {"percentile": 90}, "limit": None, "features": "lbfood-features-2"}
    summary = {"fpr95": 0.5, "auroc": 0.75, "aupr_in": 0.7, "aupr_out": 0.6}
    validation = {"val_acc": 0.5, "num_held_out": 10, "val_ood": {"blur": 10},
                  "methods": {"msp": {"sets": {"blur": summary}, "average": summary, "threshold": 0.3}}}
    auto = {"method": "msp", "params": {}, "value": 0.3, "tpr": 0.95, "split": "holdout", "holdout": 0.1,
            "objective": "auroc", "objective_value": 0.75, "val_acc": 0.5, "val_ood": {"blur": 10},
            "candidates": {"msp": summary}}
    meta = RunMeta(**{**META, "kind": "finetune", "config": {"mu": "auto", "milestones": [2, 3], "limit": None}},
                   status="done", threshold=entry, thresholds={"react": entry}, auto=auto, validation=validation,
                   probe={"bg_share": 0.5, "bg_quantiles": [1.0, 2.0, 3.0], "fg_quantiles": []}, mu_auto=True)
    runs.write(tmp_path, meta)
    assert runs.read(tmp_path) == meta


def test_non_finite_weights_are_refused_where_a_run_is_loaded(tmp_path, make_run):
    """Every command that loads a run (score, report, explain, export, finetune --from) goes through
    `load_run`: a NaN weight is one line there, never a NaN score or a fine-tuning from NaN."""
    import torch

    from lbfood.engine.io import load_tensors, save_tensors

    run = make_run(tmp_path)
    weights = load_tensors(run / "model.safetensors")
    weights["head.bias"] = weights["head.bias"].clone()
    weights["head.bias"][[0, 3]] = torch.tensor([float("nan"), float("inf")])
    save_tensors(run / "model.safetensors", weights)
    with pytest.raises(RunError, match=r"model.safetensors holds 2 non-finite weight\(s\) \(NaN or inf\): the "
                                       r"training that made it diverged; .* `lbfood pretrain --lr 0.01 --out NEW`"):
        runs.load_run(run)


def test_out_under_a_file_is_one_line_before_anything_is_made(tmp_path, small_backdrops, monkeypatch):
    """Was: NotADirectoryError from the run lock."""
    from cli_checks import one_error_line


    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="--out notes.txt/run: notes.txt is a file, not a folder; pick a folder path"):
        runs.output_dir("notes.txt/run", resume=False, data="d", arch="a")
    r = CliRunner().invoke(app, ["pretrain", "--width", "0.125", "--epochs", "1", "--batch-size", "8", "--limit", "16",
                                 "--device", "cpu", "-q", "--out", "notes.txt/run"])
    one_error_line(r, "--out notes.txt/run: notes.txt is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"
    from lbfood.engine import checkpoint

    with pytest.raises(StorageError, match="cannot use .*notes.txt/run: .*notes.txt is a file, not a folder; pass another path"):
        with checkpoint.lock(tmp_path / "notes.txt" / "run"):
            pass


def test_resume_of_a_run_that_wrote_nothing_says_to_start_it(tmp_path, monkeypatch):
    """Killed before its folder (or its run.json) existed: the advice is the command that works."""
    monkeypatch.chdir(tmp_path)
    for made in ("never", "lock-only"):
        if made == "lock-only":
            (tmp_path / made).mkdir()
            (tmp_path / made / ".lock").write_bytes(b"")
        with pytest.raises(RunError, match=f"--resume: {made} holds no run \\(it was stopped before writing anything\\)"
                                           f", so there is nothing to resume: run the same command without --resume, "
                                           f"with --out {made}"):
            runs.output_dir(made, resume=True, data="d", arch="a")
        assert runs.output_dir(made, resume=False, data="d", arch="a") == tmp_path.joinpath(made).relative_to(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="--resume: mine is not a run folder \\(no run.json\\)"):
        runs.output_dir("mine", resume=True, data="d", arch="a")
    with pytest.raises(RunError, match="--resume: mine/notes.txt is not a folder"):
        runs.output_dir("mine/notes.txt", resume=True, data="d", arch="a")


def test_a_run_being_trained_is_told_from_a_killed_one(tmp_path, make_run):
    """`--resume` is the advice only when it would work: while another command holds the run's lock, it
    would be refused, so the note says the run is still being trained."""
    from lbfood.engine import checkpoint

    run = make_run(tmp_path)
    meta = runs.update(run, status="running", config={**runs.read(run).config, "epochs": 4})
    assert not runs.being_written(run) and not (run / runs.LOCK_FILE).exists()  # asking creates nothing
    killed = runs.unfinished(meta)
    assert killed == (f"run {run} is unfinished (status running, 1 of 4 epochs): these numbers are its epoch-1 "
                      f"weights; finish it with `lbfood pretrain --resume --out {run}`")
    with checkpoint.lock(run):
        assert runs.being_written(run)
        assert runs.unfinished(meta, uses="fine-tuning starts from") == (
            f"run {run} is still being trained by another lbfood command (1 of 4 epochs so far): fine-tuning starts "
            "from its epoch-1 weights; run this again once it is done for the final ones")
    assert not runs.being_written(run)


# ---- hostile input (formerly tests/test_hostile.py) ----


def test_a_done_run_without_weights_says_to_put_them_back(run, tmp_path):
    (run / "model.safetensors").unlink()
    one_error_line(invoke("report", "--model", run, *CPU), "has no model.safetensors (status: done)",
                   "put model.safetensors back, or re-run the training")


def test_pretrain_into_a_read_only_folder_is_one_line(tmp_path, small_backdrops, monkeypatch, read_only):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    before = tree(tmp_path)
    r = invoke("pretrain", *TINY, "--limit", "8", "--out", tmp_path / "ro" / "run")
    one_error_line(r, f"cannot use {tmp_path / 'ro' / 'run'}: permission denied", f"make {tmp_path / 'ro'} writable")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("status", ["running", "interrupted", "trained"])
def test_score_report_and_export_say_the_run_is_unfinished(run, tmp_path, status):
    from lbfood.engine import runs

    runs.update(run, status=status, config={**runs.read(run).config, "epochs": 4})
    img = tmp_path / "a.png"
    fd.write_png(img, fd.pattern(0, 32, 32))
    note = (f"run {run} is unfinished (status {status}, 1 of 4 epochs): these numbers are its epoch-1 weights; "
            f"finish it with `lbfood pretrain --resume --out {run}`")
    r = invoke("score", img, "--model", run, "--device", "cpu", "--json")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.stderr), r.output
    assert "threshold" not in runs.read(run).to_dict() and not runs.read(run).thresholds  # γ of moving weights
    r = invoke("report", "--model", run, "--ood", "backdrops-noise", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.output), r.output
    r = invoke("export", "--model", run, "--method", "energy", "--threshold", "1", "--out", tmp_path / "d.pt",
               "--format", "torchscript", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.output), r.output


@pytest.mark.parametrize("change,needle", [
    ({"classes": 7}, "classes must be a non-empty list of class names, got 7"),
    ({"width": "abc"}, "width must be a finite number > 0, got 'abc'"),
    ({"width": float("nan")}, "width must be a finite number > 0, got nan"),
    ({"input_size": None}, "lacks input_size"), ({"mean": None}, "lacks mean"), ({"std": None}, "lacks std"),
    ({"data": None}, "lacks data")])
def test_damaged_run_json_is_one_line(run, tmp_path, change, needle):
    meta = json.loads((run / "run.json").read_text())
    for k, v in change.items():
        if v is None:
            del meta[k]
        else:
            meta[k] = v
    (run / "run.json").write_text(json.dumps(meta))  # json writes NaN for nan, as an editor might
    img = tmp_path / "a.png"
    fd.write_png(img, fd.pattern(0, 32, 32))
    before = tree(tmp_path)
    for args in (("report", "--model", run), ("score", img, "--model", run),
                 ("finetune", "--from", run, "--out", tmp_path / "f")):
        one_error_line(invoke(*args, "--device", "cpu"), f"{run / 'run.json'}", needle, "re-run the training")
    assert tree(tmp_path) == before


def test_starting_over_never_removes_what_is_not_an_abandoned_run(tmp_path, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, text in (("run.json", '{"name": "my own run.json"}'), ("metrics.jsonl", "{}\n"),
                       (".notes.tmp", "mine")):
        (tmp_path / name.replace(".", "_")).mkdir()
        (tmp_path / name.replace(".", "_") / name).write_text(text)
        before = tree(tmp_path)
        one_error_line(invoke("pretrain", *TINY, "--limit", "8", "--out", name.replace(".", "_")),
                       "already exists and is not empty; pick a new folder")
        assert tree(tmp_path) == before
