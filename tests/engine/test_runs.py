"""lbfood.engine.runs: the typed run.json, its one writer, and the folder rules."""

import json

import pytest

from lbfood.engine import runs
from lbfood.engine.errors import RunError
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
    updated = runs.update(tmp_path, status="done", thresholds={"energy": {"value": 2.0}})
    assert runs.read(tmp_path).status == "done" == updated.status
    assert runs.read(tmp_path).thresholds == {"energy": {"value": 2.0}}


@pytest.mark.parametrize(("change", "message"), [
    ({"width": "abc"}, "width must be a finite number"),
    ({"width": float("nan")}, "width must be a finite number"),
    ({"classes": []}, "classes must be a non-empty list"),
    ({"input_size": 0}, "input_size must be a positive integer"),
    ({"std": [1, 0, 1]}, "std must be three finite numbers"),
    ({"mean": [1, 2]}, "mean must be three finite numbers"),
    ({"config": []}, "config must be a JSON object"),
    ({"format": 99}, "run format 99"),
    ({"far_gate": []}, "far_gate must be an object"),
    ({"far_gate": {"method": "fargate", "value": "x", "keep": 0.995}}, "far_gate must be an object"),
    ({"far_gate": {"method": "fargate", "value": float("inf"), "keep": 0.995}}, "far_gate must be an object"),
    ({"far_gate": {"method": "fargate", "value": -3.0, "keep": 1.5}}, "far_gate must be an object"),
    ({"far_gate": {"method": 1, "value": -3.0, "keep": 0.995}}, "far_gate must be an object"),
    ({"far_gate": {"method": "fargate", "value": -3.0, "keep": 0.995, "params": 3}}, "far_gate must be an object"),
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
