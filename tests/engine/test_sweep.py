"""`lbfood sweep` (lbfood/engine/sweep/): the space, the leak-free selection, resumability, shared storage,
and `--method auto`. Tiny model (width 0.125), 200 backdrops training images, 1-epoch trials."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lbfood.engine.config import FinetuneConfig
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.sweep import space
from lbfood.engine.sweep.space import SweepConfig

HERE = Path(__file__).parent
RECIPE = dict(epochs=1, batch_size=64, device="cpu", workers=0, probe_batches=1)


def _sweep(tmp_path, parent, **kw) -> SweepConfig:
    recipe = FinetuneConfig(parent=str(parent), **RECIPE)
    kw = {"out": str(tmp_path / "sw"), "lam": ("1",), "methods": ("react", "energy"), **kw}
    return SweepConfig(recipe=recipe, **kw)


# ---- the space ------------------------------------------------------------------------------------


def test_values_are_checked_and_normalised():
    assert space.parse_values("delta", "0.010, preset,0.01") == ("0.01", "preset")
    assert space.parse_values("mu", "auto,q0.250,2") == ("auto", "q0.25", "2")
    assert space.parse_values("mask_from", "current,pretrained") == ("current", "pretrained")
    for factor, text in (("delta", "1"), ("delta", "0"), ("mu", "q1"), ("mu", "-1"), ("lam", "x"), ("mask_from", "frozen")):
        with pytest.raises(ConfigError):
            space.parse_values(factor, text)


def test_paper_mode_varies_one_factor_at_a_time_and_grid_takes_every_combination():
    sc = SweepConfig(recipe=FinetuneConfig(), delta=("0.01", "0.02"), mu=("auto", "q0.25"), lam=("1", "2"))
    paper = [space.key(p) for p in space.planned_points(dataclasses.replace(sc, mode="paper"))]
    assert paper == ["control", "d0.01-muauto-l1-current", "d0.02-muauto-l1-current", "d0.01-muq0.25-l1-current",
                     "d0.01-muauto-l2-current"]
    grid = space.planned_points(dataclasses.replace(sc, mode="grid", lam=("0", "1")))
    assert [space.key(p) for p in grid] == ["control", "d0.01-muauto-l1-current", "d0.01-muq0.25-l1-current",
                                            "d0.02-muauto-l1-current", "d0.02-muq0.25-l1-current"]
    assert grid[0] == {"objective": "lff", "delta": "0.01", "mu": "auto", "lam": "0", "mask_from": "current"}
    assert [space.key(p) for p in space.planned_points(dataclasses.replace(sc, mode="search"))] == ["control"]


def test_objectives_are_a_factor_and_each_takes_its_own_mu_values():
    assert space.parse_values("objective", "lff, bg-energy,lff") == ("lff", "bg-energy")
    assert space.parse_values("mu", "rel0.50,auto") == ("rel0.5", "auto")
    for text, match in (("auroc", "--select-by auroc"), ("oe", "not one of"), ("", "at least one")):
        with pytest.raises(ConfigError, match=match):
            space.parse_values("objective", text)
    with pytest.raises(ConfigError):
        space.parse_values("mu", "rel0")
    sc = SweepConfig(recipe=FinetuneConfig(), objectives=("lff", "lff-rel", "bg-energy", "bg-head"),
                     mu=("auto", "rel0.25", "q0.5"), lam=("0.5", "1"))
    keys = [space.key(p) for p in space.planned_points(sc)]
    assert keys == ["control", "dpreset-muauto-l0.5-current", "dpreset-muauto-l1-current",
                    "dpreset-muq0.5-l0.5-current", "dpreset-muq0.5-l1-current",
                    "lff-rel-dpreset-murel0.25-l0.5-current", "lff-rel-dpreset-murel0.25-l1-current",
                    "bg-energy-dpreset-l0.5-current", "bg-energy-dpreset-l1-current",
                    "bg-head-dpreset-l0.5-current", "bg-head-dpreset-l1-current"]
    paper = [space.key(p) for p in space.planned_points(dataclasses.replace(sc, mode="paper"))]
    assert paper == ["control", "dpreset-muauto-l0.5-current", "lff-rel-dpreset-murel0.25-l0.5-current",
                     "bg-energy-dpreset-l0.5-current", "bg-head-dpreset-l0.5-current", "dpreset-muq0.5-l0.5-current",
                     "dpreset-muauto-l1-current"]
    # lff-rel without a relX value takes rel0.5; lff without a plain value takes auto
    sc2 = dataclasses.replace(sc, objectives=("lff-rel", "lff"), mu=("2",), lam=("1",))
    assert [space.key(p) for p in space.planned_points(sc2)][1:] == ["lff-rel-dpreset-murel0.5-l1-current",
                                                                    "dpreset-mu2-l1-current"]
    cfg = space.trial_config(sc, {"objective": "bg-energy", "delta": "0.1", "mu": "-", "lam": "1",
                                  "mask_from": "current"}, "o")
    assert (cfg.objective, cfg.delta, cfg.mu, cfg.lam) == ("bg-energy", 0.1, None, 1.0)
    cfg = space.trial_config(sc, {"objective": "lff-rel", "delta": "0.1", "mu": "rel0.25", "lam": "1",
                                  "mask_from": "current"}, "o")
    assert (cfg.objective, cfg.mu) == ("lff-rel", "rel0.25")


def test_per_objective_selection_uses_only_that_objectives_trials_within_the_floor():
    from lbfood.engine.sweep.results import per_objective

    rows = [{**_row(0, 0.8, 0.70), "objective": "lff"}, {**_row(1, 0.8, 0.75), "objective": "lff"},
            {**_row(2, 0.8, 0.90), "objective": "bg-energy"}, {**_row(3, 0.8, 0.60), "objective": "bg-head"},
            {**_row(4, 0.7, 0.99), "objective": "bg-head"}]
    assert per_objective(rows, "auroc", 1.0) == {"lff": {"trial": 1, "beats_control": True},
                                                 "bg-energy": {"trial": 2, "beats_control": True},
                                                 "bg-head": {"trial": 3, "beats_control": False}}
    assert per_objective(rows[:1] + rows[4:], "auroc", 1.0) == {"bg-head": {"trial": None, "beats_control": False}}


def test_trial_config_sets_the_point_and_leaves_the_rest_to_the_preset():
    sc = SweepConfig(recipe=FinetuneConfig(epochs=3), holdout=0.2)
    cfg = space.trial_config(sc, {"delta": "preset", "mu": "q0.25", "lam": "0.5", "mask_from": "pretrained"}, "o")
    assert (cfg.delta, cfg.mu, cfg.mu_quantile, cfg.lam, cfg.mask_from, cfg.holdout, cfg.out, cfg.epochs) == \
        (None, "auto", 0.25, 0.5, "pretrained", 0.2, "o", 3)  # δ None: the preset fills it
    cfg = space.trial_config(sc, {"delta": "0.05", "mu": "2", "lam": "1", "mask_from": "current"}, "o")
    assert (cfg.delta, cfg.mu, cfg.mu_quantile) == (0.05, 2.0, 0.5)


# ---- selection ------------------------------------------------------------------------------------


BOOT = {"resamples": 1001, "level": 0.95, "seed": 0, "sizes": [20, 80]}
SPREAD = np.linspace(-0.01, 0.01, 1001)  # every row's replicates: its value + SPREAD (+ its own `noise`)


def _row(n, acc, value, state="complete", noise=None):
    """A row of `trial_rows` with bootstrap replicates: with no `noise` the paired difference to another
    row is exactly the difference of their values (the interval has zero width)."""
    reps = value + SPREAD + (0 if noise is None else noise)
    return {"number": n, "key": "control" if n == 0 else f"t{n}", "role": "control" if n == 0 else "trial",
            "state": state, "val_acc": acc, "value": value, "method": "react", "bootstrap": {**BOOT, "method": "react"},
            "replicates": {"objective": list(reps), "val_acc": [acc] * 1001}}


def test_selection_is_the_best_validation_objective_within_the_accuracy_floor():
    from lbfood.engine.sweep.results import select

    rows = [_row(0, 0.80, 0.70), _row(1, 0.78, 0.95), _row(2, 0.795, 0.80), _row(3, 0.81, 0.99, "pruned")]
    best, floor = select(rows, "auroc", 1.0)
    assert best["number"] == 2 and floor == pytest.approx(0.79)  # trial 1 is better but 2 points below
    assert select(rows, "auroc", 3.0)[0]["number"] == 1
    best, _ = select([_row(0, 0.8, 0.30), _row(1, 0.8, 0.40), _row(2, 0.8, 0.30)], "fpr95", 1.0)
    assert best["number"] == 0  # lower FPR95 is better; a tie goes to the control
    with pytest.raises(RunError, match="control"):
        select([_row(1, 0.8, 0.4)], "auroc", 1.0)


def test_a_trial_is_selected_only_beyond_noise_and_the_verdict_says_by_how_much():
    """The gain's interval is the percentile interval of the paired replicate differences: here the trial's
    replicates are the control's plus linspace(0.03, 0.07, 1001) − 0.05 around a +5-point gain, so the
    95 % interval is 5 ± 1.9 points (quantiles 0.025 and 0.975 of that linspace: +3.10 and +6.90)."""
    from lbfood.engine.sweep.results import select, verdict

    d = np.linspace(0.03, 0.07, 1001) - 0.05
    rows = [_row(0, 0.80, 0.70), _row(1, 0.80, 0.75, noise=d), _row(2, 0.80, 0.76, noise=10 * d),
            _row(3, 0.70, 0.99), _row(4, 0.80, 0.99, "pruned")]
    best, floor = select(rows, "auroc", 1.0)
    assert best["number"] == 1  # 2 is better on its value but within noise (−13 to +25 points); 3 is below the floor
    assert rows[1]["gain"] == pytest.approx({"value": 0.05, "low": 0.031, "high": 0.069})
    assert rows[2]["gain"]["low"] < 0 and rows[3]["below_floor"] and not rows[2]["below_floor"]
    assert rows[4]["gain"] is None and rows[0]["gain"] is None
    assert verdict(rows, best, "auroc") == ("trial 1 (t1, react) beat the control by 5.00 ± 1.90 validation AUROC "
                                            "points (95 % paired bootstrap interval +3.10 to +6.90)")
    best, _ = select(rows, "auroc", 1.0, min_gain=3.5)  # the lower end, 3.1 points, is not above 3.5
    assert best["number"] == 0
    assert verdict(rows, best, "auroc", 3.5) == (
        "no setting beat the control beyond noise on validation data (by more than --min-gain 3.5 points); the "
        "closest, trial 2 (t2), differed by +6.00 ± 19.00 validation AUROC points (95 % paired bootstrap interval "
        "-13.00 to +25.00); the control is selected")
    # FPR95: lower is better, so the gain is control − trial
    rows = [_row(0, 0.8, 0.40), _row(1, 0.8, 0.30, noise=-d), _row(2, 0.8, 0.45)]
    best, _ = select(rows, "fpr95", 1.0)
    assert best["number"] == 1 and rows[2]["gain"]["value"] == pytest.approx(-0.05)
    assert verdict(rows, best, "fpr95").startswith("trial 1 (t1, react) beat the control by 10.00 ± 1.90 validation "
                                                   "FPR95 points")
    # trials validated on other images (other sizes) or without replicates are never "beyond noise"
    rows = [_row(0, 0.8, 0.7), _row(1, 0.8, 0.9), _row(2, 0.8, 0.9)]
    rows[1]["bootstrap"] = {**BOOT, "sizes": [21, 80], "method": "react"}
    rows[2]["replicates"] = None
    best, _ = select(rows, "auroc", 1.0)
    assert best["number"] == 0 and rows[1]["gain"] is None and rows[2]["gain"] is None
    assert verdict(rows, best, "auroc") == "no setting beat the control beyond noise on validation data; the control " \
                                           "is selected"


# ---- end to end -----------------------------------------------------------------------------------


@pytest.fixture
def recorded_loads(monkeypatch):
    """Every dataset split read (name, split), in order, with a marker when the selection is fixed."""
    from lbfood.engine.catalog import DATASETS

    log = []
    for name in DATASETS.names():
        spec = DATASETS.load(name)  # imports the data module, which provides its specs

        def load(opts, split, _spec=spec):
            log.append((_spec.name, split))
            return _spec.load(opts, split)
        monkeypatch.setitem(DATASETS._provided, name, dataclasses.replace(spec, load=load))
    return log


def test_a_sweep_over_the_background_objectives(tmp_path, monkeypatch, make_run, small_backdrops):
    """Each objective trains, validates and is tested as a trial; bghead is validated and tested only on the
    bg-head trial (the others have no head for it); the per-objective selection is recorded."""
    from lbfood.engine.sweep import results, study
    from lbfood.output import sweep_files

    monkeypatch.chdir(tmp_path)
    sc = _sweep(tmp_path, make_run(tmp_path), objectives=("lff-rel", "bg-energy", "bg-head"), delta=("0.5",),
                methods=("react", "bghead"), ood=("backdrops-noise",))
    assert study.work(sc) == 4
    doc = results.finalize(sc)
    rows = {r["key"]: r for r in doc["trials"]}
    assert list(rows) == ["control", "lff-rel-d0.5-murel0.5-l1-current", "bg-energy-d0.5-l1-current",
                          "bg-head-d0.5-l1-current"]
    for key, r in rows.items():
        cfg = json.loads((Path(sc.out) / r["run"] / "run.json").read_text())["config"]
        assert cfg["objective"] == r["objective"] and r["state"] == "complete"
        assert set(r["test"]["metrics"]) == ({"react", "bghead"} if r["objective"] == "bg-head" else {"react"}), key
        assert set(r["methods"]) == set(r["test"]["metrics"])
    assert isinstance(rows["bg-energy-d0.5-l1-current"]["mu"], str)  # no μ: the preset's text, unused
    assert set(doc["per_objective"]) == {"lff-rel", "bg-energy", "bg-head"}
    md = sweep_files.markdown(doc)
    assert "| bg-head |" in md and "Per objective" in md


def test_sweep_selects_on_validation_before_reading_any_test_image(tmp_path, monkeypatch, make_run, small_backdrops,
                                                                   recorded_loads):
    from lbfood.engine.sweep import results, study
    from lbfood.engine.sweep.results import Selected

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    sc = _sweep(tmp_path, parent, lam=("0.5", "1"), ood=("backdrops-noise",))

    def on_event(ev):
        if isinstance(ev, Selected):
            recorded_loads.append(("SELECTED", ev.key))

    assert study.work(sc, on_event) == 3
    doc = results.finalize(sc, on_event)
    cut = next(i for i, e in enumerate(recorded_loads) if e[0] == "SELECTED")
    assert set(recorded_loads[:cut]) == {("backdrops", "train")}  # no test split, no OOD set
    assert {("backdrops", "test"), ("backdrops-noise", "test")} == set(recorded_loads[cut + 1:]) - {("backdrops", "train")}

    rows = doc["trials"]
    assert [r["key"] for r in rows] == ["control", "dpreset-muauto-l0.5-current", "dpreset-muauto-l1-current"]
    assert rows[0]["number"] == 0 and rows[0]["point"]["lam"] == "0" and doc["control"] == 0
    floor = doc["accuracy_floor"]
    assert floor == pytest.approx(rows[0]["val_acc"] - 0.01)
    # selected: the best value among trials above the floor whose paired gain is beyond noise, else the control
    ok = [r for r in rows if not r["below_floor"] and r["gain"] and r["gain"]["low"] > 0]
    assert [r["below_floor"] for r in rows] == [r["val_acc"] < floor - 1e-12 for r in rows]
    assert doc["selected"]["number"] == (max(ok, key=lambda r: r["value"])["number"] if ok else 0)
    assert doc["verdict"].startswith(f"trial {doc['selected']['number']} " if ok else "no setting beat the control")
    for r in rows:  # 95 % intervals over the 20 held-out images (and 80 pseudo-OOD per generator), not kept replicates
        assert "replicates" not in r and r["bootstrap"] == {"method": r["method"], "resamples": 1000, "level": 0.95,
                                                            "seed": 0, "sizes": [20, 20, 20, 20, 20]}
        assert r["val_acc_ci"][0] <= r["val_acc"] <= r["val_acc_ci"][1] and r["val_acc_ci"][1] - r["val_acc_ci"][0] > 0
        assert r["value_ci"][0] <= r["value"] <= r["value_ci"][1]
        assert (r["gain"] is None) == (r["role"] == "control")
    for r in rows:  # each value is the best scorer's average validation AUROC, from the run's own run.json
        meta = json.loads((Path(sc.out) / r["run"] / "run.json").read_text())
        assert meta["status"] == "done" and meta["config"]["holdout"] == 0.1 and meta["config"]["lam"] == float(r["point"]["lam"])
        aucs = {m: c["average"]["auroc"] for m, c in meta["validation"]["methods"].items()}
        assert r["value"] == max(aucs.values()) and r["method"] == max(aucs, key=aucs.get)
        assert meta["validation"]["num_held_out"] == 20 and "test_acc" not in meta["metrics"]
        assert set(r["test"]["metrics"]) == {"react", "energy"}
    assert os.readlink(Path(sc.out) / "best") == doc["selected"]["run"]
    assert json.loads((Path(sc.out) / "sweep.json").read_text())["selected"] == doc["selected"]
    assert not (Path(sc.out) / "sweep.md").exists()  # the engine returns data; lbfood.output.sweep_files writes for people
    from lbfood.engine.sweep.space import FACTORS
    from lbfood.output import plots, sweep_files

    assert tuple(plots.FACTOR_NAMES) == FACTORS
    md, png = sweep_files.write(doc, sc.out)
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"**Verdict:** {doc['verdict']}." in md.read_text()
    selected = [ln for ln in md.read_text().splitlines() if "**selected**" in ln]
    assert len(selected) == 1 and selected[0].startswith(f"| {doc['selected']['number']} | {doc['selected']['key']}")
    # The same command again runs nothing and selects the same trial; other options are refused.
    assert study.work(sc) == 0
    with pytest.raises(ConfigError, match="other options"):
        study.open_study(dataclasses.replace(sc, max_acc_drop=2.0))


def _cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, str(HERE.parent / "sweep_cli.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1",
                                          **(env or {})}, timeout=300)


def _args(parent, out, lam):
    return ["sweep", "--from", str(parent), "--out", str(out), "--lambda", lam, "--epochs", "1", "--batch-size",
            "64", "--probe-batches", "1", "--device", "cpu", "--workers", "0", "--quiet"]


def _trials(out):
    """(number, key, state) of every trial; read under the sweep folder's lock, as the workers do, so that
    this never races a worker creating the storage's tables."""
    import fcntl

    import optuna

    with open(Path(out) / "study.db.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            study = optuna.load_study(study_name="lbfood-sweep", storage=f"sqlite:///{out}/study.db")
            return [(t.number, t.user_attrs.get("key"), t.state.name) for t in study.get_trials()]
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_a_killed_worker_is_resumed_without_repeating_finished_trials(tmp_path, monkeypatch, make_run,
                                                                       small_backdrops):
    from lbfood.engine import killpoints

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    out = tmp_path / "sw"
    p = _cli(tmp_path, *_args(parent, out, "0.5,1"), env={killpoints.ENV: "trial-epoch:1"})  # after trial 1's epoch
    assert p.returncode == 137, p.stderr
    assert _trials(out) == [(0, "control", "COMPLETE"), (1, "dpreset-muauto-l0.5-current", "RUNNING"),
                            (2, "dpreset-muauto-l1-current", "WAITING")]
    control_mtime = (out / "trials/control/model.safetensors").stat().st_mtime_ns
    p = _cli(tmp_path, *_args(parent, out, "0.5,1"))  # the same command, to the end
    assert p.returncode == 0, p.stderr
    assert _trials(out) == [(0, "control", "COMPLETE"), (1, "dpreset-muauto-l0.5-current", "FAIL"),
                            (2, "dpreset-muauto-l1-current", "COMPLETE"), (3, "dpreset-muauto-l0.5-current", "COMPLETE")]
    assert (out / "trials/control/model.safetensors").stat().st_mtime_ns == control_mtime
    assert {f.name for f in out.iterdir()} >= {"sweep.json", "sweep.md", "sensitivity.png", "best"}


def test_two_workers_share_one_sqlite_study(tmp_path, monkeypatch, make_run, small_backdrops):
    from sqlalchemy.exc import OperationalError

    from lbfood.engine.sweep import study

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    out = tmp_path / "sw"
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE.parent / "sweep_cli.py"), *_args(parent, out, "0.5,1,2"), "--worker"]
    other = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    def running() -> bool:
        try:
            return any(s == "RUNNING" for _, _, s in _trials(out))
        except (KeyError, OperationalError):  # the database is there (or being made), the study not yet
            return False

    while not ((out / "study.db").exists() and running()):
        assert other.poll() is None and time.time() < deadline, other.stderr.read() if other.stderr else ""
        time.sleep(0.2)
    mine = study.work(_sweep(tmp_path, parent, lam=("0.5", "1", "2"), methods=("react",)))
    _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err
    trials = _trials(out)
    assert sorted(k for _, k, _ in trials) == ["control", "dpreset-muauto-l0.5-current", "dpreset-muauto-l1-current",
                                               "dpreset-muauto-l2-current"]
    assert {s for _, _, s in trials} == {"COMPLETE"} and mine <= 3  # the other worker held one


def test_method_auto_records_a_scorer_and_threshold_that_score_uses(tmp_path, monkeypatch, make_run, small_backdrops):
    import numpy as np
    from PIL import Image

    from lbfood.engine import pipeline
    from lbfood.engine.config import ReportConfig, ScoreConfig
    from lbfood.engine.evaluation import auto
    from lbfood.engine.evaluation import score as evaluate
    from lbfood.engine.evaluation.validation import AUTO_CANDIDATES
    from lbfood.engine.training.finetune import prepare_finetune

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    cfg = FinetuneConfig(parent=str(parent), out=str(tmp_path / "ft"), holdout=0.1, **RECIPE)
    for _ in pipeline.train(prepare_finetune(cfg)):
        pass
    meta = json.loads((tmp_path / "ft/run.json").read_text())
    a = meta["auto"]
    assert a["method"] in AUTO_CANDIDATES and a["split"] == "holdout" and a["holdout"] == 0.1
    assert a["objective_value"] == max(c["auroc"] for c in a["candidates"].values())
    assert a["candidates"][a["method"]]["auroc"] == a["objective_value"]
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    rows = evaluate.score_images(ScoreConfig(paths=(str(tmp_path / "grey.png"),), model=str(tmp_path / "ft"),
                                             method="auto", device="cpu"))
    assert rows[0].method == a["method"] and rows[0].threshold == a["value"]
    assert auto.resolve_report(ReportConfig(model=str(tmp_path / "ft"), methods=("auto", "energy"))).methods == \
        (a["method"], "energy")
    with pytest.raises(ConfigError, match="without --holdout"):
        auto.resolve_score(ScoreConfig(paths=("x",), model=str(parent), method="auto"))


def test_search_trains_each_point_once_and_stops_when_the_space_is_exhausted(tmp_path, monkeypatch, make_run,
                                                                              small_backdrops):
    from lbfood.engine.sweep import study

    monkeypatch.chdir(tmp_path)
    sc = _sweep(tmp_path, make_run(tmp_path), mode="search", trials=5, lam=("0.5", "1"), methods=("react",))
    study.work(sc)
    trials = _trials(tmp_path / "sw")
    complete = sorted(k for _, k, s in trials if s == "COMPLETE")
    assert complete == ["control", "dpreset-muauto-l0.5-current", "dpreset-muauto-l1-current"]
    assert all(s == "PRUNED" for _, _, s in trials if s != "COMPLETE")  # TPE's repeats: skipped, not trained
    assert sorted(p.name for p in (tmp_path / "sw/trials").iterdir()) == \
        ["control", *sorted(f"t{n:03d}-{k}" for n, k, s in trials if s == "COMPLETE" and k != "control")]


def test_prune_stops_a_trial_whose_accuracy_falls_below_the_controls_curve(tmp_path, monkeypatch, make_run,
                                                                            small_backdrops):
    """--prune: after each epoch a trial's held-out accuracy is compared with the control's at that epoch;
    more than max_acc_drop points below it, the trial stops there, is recorded as pruned and never selected.
    The LFF trial's reported accuracy is forced down (the real one is not reliably lower on a tiny run)."""
    from lbfood.engine.events import EpochEnd
    from lbfood.engine.sweep import results, study
    from lbfood.engine.training import loop

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    real_fit = loop.fit
    epochs_seen = []

    def fit(session):
        for ev in real_fit(session):
            if isinstance(ev, EpochEnd) and session.cfg.lam > 0:
                epochs_seen.append(ev.epoch)
                ev = dataclasses.replace(ev, metrics={**ev.metrics, "val_acc": 0.0})
            yield ev

    monkeypatch.setattr(loop, "fit", fit)
    sc = dataclasses.replace(_sweep(tmp_path, parent, lam=("0.5",), methods=("react",), prune=True),
                             recipe=FinetuneConfig(parent=str(parent), **{**RECIPE, "epochs": 2}))
    assert study.work(sc) == 2
    assert epochs_seen == [0]  # stopped after its first of two epochs
    doc = results.finalize(sc)
    control, trial = doc["trials"]
    assert (control["state"], trial["state"]) == ("complete", "pruned")
    assert trial["val_acc"] == 0.0 and trial["value"] is None and "test" not in trial
    assert doc["selected"]["number"] == control["number"] == 0
    meta = json.loads((Path(sc.out) / trial["run"] / "run.json").read_text())
    assert meta["status"] != "done" and meta["epochs_done"] == 1
    from lbfood.output import sweep_files

    line = sweep_files.markdown(doc).splitlines()[-1]
    assert line.startswith("| 1 | dpreset-muauto-l0.5-current (pruned) |") and "None" not in line, line


def test_a_trial_that_diverges_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, make_run, small_backdrops):
    """A trial whose loss becomes NaN (bg-energy at λ 1 and the custom preset's lr 0.1 did so on real photos)
    is a finding about that point: it is recorded as diverged, never selected nor tested, and the other
    trials still run. A diverging control ends the sweep (nothing could be compared with it)."""
    from lbfood.engine.errors import Diverged
    from lbfood.engine.sweep import results, study
    from lbfood.engine.training import loop, objectives

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    real_call = objectives.LFFHook.__call__

    def call(self, *a):  # at λ 1 the term (and so the running L_LFF the loop reads) is NaN
        loss, stats = real_call(self, *a)
        if self.lam == 1:
            loss, stats = loss * float("nan"), {**stats, "mean_lff": stats["mean_lff"] * float("nan")}
        return loss, stats

    monkeypatch.setattr(objectives.LFFHook, "__call__", call)
    sc = _sweep(tmp_path, parent, lam=("1", "0.5"), methods=("react",))
    assert study.work(sc) == 3
    doc = results.finalize(sc)
    states = {r["key"]: r["state"] for r in doc["trials"]}
    assert states == {"control": "complete", "dpreset-muauto-l1-current": "diverged",
                      "dpreset-muauto-l0.5-current": "complete"}, states
    bad = next(r for r in doc["trials"] if r["state"] == "diverged")
    assert bad["diverged"].startswith("training diverged: ") and bad["value"] is None and "test" not in bad
    assert doc["selected"]["key"] != bad["key"]
    from lbfood.output import sweep_files

    assert "dpreset-muauto-l1-current (diverged)" in sweep_files.markdown(doc)

    real_read = loop._read_metrics  # ... and the control (λ 0) diverging ends the sweep with the reason
    monkeypatch.setattr(loop, "_read_metrics", lambda *a: {**real_read(*a), "ce": float("inf")})
    with pytest.raises(Diverged, match="training diverged"):
        study.work(dataclasses.replace(sc, out=str(tmp_path / "sw2")))


def test_refusals_leave_no_half_made_sweep_folder(tmp_path, monkeypatch, make_run, small_backdrops):
    """A file, or a folder of other things, as --out is refused; options and data that fail only once the
    first trial starts (here: fewer training images than --batch-size) leave no sweep folder behind."""
    from cli_checks import one_error_line
    from typer.testing import CliRunner

    from lbfood.cli import app

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)

    def sweep(out, *extra):
        r = CliRunner().invoke(app, ["sweep", "--from", str(parent), "--out", str(out), "--lambda", "0.5", "--epochs",
                                     "1", "--device", "cpu", "--workers", "0", "-q", *extra])
        return " ".join(one_error_line(r).split())

    (tmp_path / "afile").write_text("x")
    assert "--out afile is a file" in sweep("afile")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert "already holds files and is not a sweep folder" in sweep("mine")
    assert "already holds files and is a run folder" in sweep(parent)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"] and not (parent / "study.db").exists()
    assert "unknown scorer 'nope'" in sweep("sw", "--method", "nope")
    assert "--lambda: nan is out of range; each value must be a number >= 0" in sweep("sw", "--lambda", "nan")
    assert "--batch-size 512 exceeds the 180 training images" in sweep("sw", "--batch-size", "512")
    assert not (tmp_path / "sw").exists()


def test_readme_objectives_sweep_command_at_tiny_size(tmp_path, monkeypatch, make_run, small_backdrops):
    """README "Does background training help?": the measured command (there: the demo's parent, --limit 1000,
    --epochs 2, seeds 0 and 1), here on a tiny parent and data; and the help texts name every objective."""
    from cli_checks import one_error_line
    from typer.testing import CliRunner

    from lbfood.cli import app
    from lbfood.engine.catalog import OBJECTIVES

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    r = CliRunner().invoke(app, ["sweep", "--from", str(parent), "--out", "sweeps/objectives-s0", "--objective",
                                 "lff,lff-rel,bg-energy,bg-head", "--lambda", "0.5", "--limit", "200", "--epochs", "1",
                                 "--method", "energy,react,knn,vim,bghead", "--seed", "0", "--device", "cpu",
                                 "--workers", "0", "-q", "--batch-size", "64", "--probe-batches", "1", "--delta", "0.5"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "sweeps/objectives-s0/sweep.json").read_text())
    assert [t["objective"] for t in doc["trials"]] == ["lff", "lff", "lff-rel", "bg-energy", "bg-head"]
    assert set(doc["per_objective"]) == {"lff", "lff-rel", "bg-energy", "bg-head"}
    assert "bg-energy" in r.output and "Per objective" in (tmp_path / "sweeps/objectives-s0/sweep.md").read_text()
    for cmd in ("sweep", "finetune"):
        out = " ".join(CliRunner().invoke(app, [cmd, "--help"], terminal_width=200).output.split())
        for name in OBJECTIVES.names():
            assert f"{name}: {' '.join(OBJECTIVES.entry(name).meta['help'].split())}" in out.replace("│ ", ""), (cmd, name)
    table = subprocess.run([sys.executable, str(HERE.parents[1] / "docs" / "objectives_table.py"),
                            "sweeps/objectives-s0/sweep.json"], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [ln.split(" | ")[1] for ln in lines[2:7]] == ["control", "lff", "lff-rel", "bg-energy", "bg-head"]
    assert "bar met on every seed" in table.stdout or "no objective meets the bar" in table.stdout
    bad = CliRunner().invoke(app, ["sweep", "--from", str(parent), "--out", "x", "--objective", "fpr95"])
    assert "--select-by fpr95" in one_error_line(bad) and not (tmp_path / "x").exists()
