"""lbfood.engine.evaluation.report: report numbers, the feature/scorer caches, calibration, scoring files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_checks import clean
from hostile_checks import CPU, invoke, tree

from lbfood.engine import runs
from lbfood.engine import runs as runs_mod
from lbfood.engine.config import ReportConfig, ScoreConfig
from lbfood.engine.data import LoadOptions, get
from lbfood.engine.data.images import eval_transform
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.errors import ConfigError, DataError, RunError, StorageError
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import metrics, score, scorers
from lbfood.engine.evaluation import report as evaluate
from lbfood.engine.evaluation.calibrate import calibrate
from lbfood.engine.io import atomic_write_bytes, load_tensors
from lbfood.engine.runtime import make_runtime

OOD = ("backdrops-scenes", "backdrops-novel", "backdrops-noise")
# Not backdrops' own normalisation: the report must use the run's, for ID and OOD sets alike.
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


def _direct(run_dir, name, split, jigsaw=False):
    """Features computed without the evaluation module: the spec's images, the run's normalisation."""
    model, meta = runs.load_run(run_dir)
    images = get(name).load(LoadOptions(root=run_dir, image_size=32), split)
    loader = make_loader(images, batch_size=256, mean=meta.mean, std=meta.std, image_size=32, train=False)
    return model, fx.extract(model, loader, jigsaw=jigsaw)


@pytest.fixture
def run(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path, mean=MEAN, std=STD)


def _cached(run_dir, key):
    (path,) = (run_dir / "cache").glob(f"features-{key}-*.safetensors")
    return fx.Features.from_tensors(load_tensors(path))


def test_report_matches_metrics_computed_directly(run):
    methods = ("energy", "react", "knn", "msp", "featurenorm")
    res = evaluate.report(ReportConfig(model=str(run), methods=methods, device="cpu"))
    assert res.id_data == "backdrops" and res.ood == OOD and res.convention == "paper"
    assert res.methods == methods and res.params["react"] == {"percentile": 90.0}
    assert res.num_images == {"backdrops": 100, **{o: 100 for o in OOD}}
    # One pass over each of test, three OOD sets and the jigsaw training split; fitted: react, knn, featurenorm.
    assert (res.extractions, res.fits, res.odin_passes) == (5, 3, 0)
    assert sorted(p.name for p in (run / "scorers").iterdir()) == \
        ["featurenorm.safetensors", "knn.safetensors", "react.safetensors"]
    # The cached features are the model's on the spec's images normalised with the run's mean/std
    # (up to float rounding: the report runs channels-last convolutions) ...
    model, _ = runs.load_run(run)
    feats = {"train": _cached(run, "backdrops.train.32px.jigsaw"), "test": _cached(run, "backdrops.test.32px"),
             **{o: _cached(run, f"{o}.test.32px") for o in OOD}}
    for key, f in feats.items():
        name, split = ("backdrops", key) if key in ("train", "test") else (key, "test")
        _, want = _direct(run, name, split, jigsaw=key == "train")
        for field in ("logits", "features", "block_norms"):
            torch.testing.assert_close(getattr(f, field), getattr(want, field), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f.labels, want.labels)
    # ... and every number is the scorer's metrics on those features, exactly.
    (r,) = res.runs
    assert r.name == run.name and r.kind == "pretrain"
    assert r.id_accuracy == metrics.accuracy(feats["test"].logits, feats["test"].labels)
    for m in methods:
        s = scorers.get(m).fit(feats["train"], model.head)
        id_scores = s.score(feats["test"])
        for o in OOD:
            assert r.metrics[m][o] == metrics.summarize(id_scores, s.score(feats[o])), (m, o)
        avg = {k: np.mean([r.metrics[m][o][k] for o in OOD]) for k in metrics.SUMMARY_KEYS}
        assert r.metrics[m]["average"] == pytest.approx(avg, abs=1e-12)


def test_second_report_reads_the_caches(run, monkeypatch):
    evaluate.report(ReportConfig(model=str(run), methods=("react",), device="cpu"))

    def no_forward(*a, **k):
        raise AssertionError("extract called: the feature cache was not used")

    monkeypatch.setattr(fx, "extract", no_forward)
    res = evaluate.report(ReportConfig(model=str(run), methods=("msp", "vim", "dice", "maxlogit", "react"),
                                       device="cpu", fpr_convention="openood"))
    assert (res.extractions, res.odin_passes) == (0, 0)
    assert res.fits == 2  # vim and dice; react's statistics are reloaded from scorers/react.safetensors
    assert res.convention == "openood"
    again = evaluate.report(ReportConfig(model=str(run), methods=("react",), device="cpu",
                                         params={"react": {"percentile": 80}}))
    assert again.fits == 1 and again.params["react"] == {"percentile": 80.0}
    assert any(p.name.startswith("react-") for p in (run / "scorers").iterdir())  # hashed params
    assert again.runs[0].metrics["react"] != res.runs[0].metrics["react"]


def test_odin_runs_its_own_pass(run):
    res = evaluate.report(ReportConfig(model=str(run), methods=("odin",), ood=("backdrops-noise",), device="cpu"))
    assert res.odin_passes == 2 and res.extractions == 1  # ID test features give the accuracy
    rt = make_runtime("cpu")  # the same memory format as the report's: ODIN's ranking is float-sensitive
    model = rt.prepare(runs.load_run(run)[0])
    odin = scorers.get("odin")

    def scores(name):
        images = get(name).load(LoadOptions(root=run, image_size=32), "test")
        loader = make_loader(images, batch_size=256, mean=MEAN, std=STD, image_size=32, train=False,
                             channels_last=rt.channels_last)
        return odin.score_images(model, loader, std=STD)

    want = metrics.summarize(scores("backdrops"), scores("backdrops-noise"))
    assert res.runs[0].metrics["odin"]["backdrops-noise"] == pytest.approx(want, abs=1e-9)


def test_compare_and_benchmark_numbers(run, make_run, tmp_path):
    other = make_run(tmp_path, kind="finetune", seed=1, mean=MEAN, std=STD)
    bench = tmp_path / "mine.toml"
    bench.write_text('[benchmark]\nname = "mine"\nid = "backdrops"\nood = ["backdrops-noise", "backdrops-novel"]\n'
                     'image_size = 32\narch = "resnet18"\n[labels]\nenergy = "Energy"\n[paper.energy]\n'
                     'backdrops-noise = {fpr95 = 12.5, auroc = 90.0}\naverage = {fpr95 = 20.0, auroc = 80.0}\n')
    res = evaluate.report(ReportConfig(model=str(run), compare=(str(other),), methods=("energy", "msp"),
                                       benchmark=str(bench), device="cpu"))
    assert res.ood == ("backdrops-noise", "backdrops-novel") and res.benchmark == "mine"
    assert [r.kind for r in res.runs] == ["pretrain", "finetune"]
    assert res.runs[0].metrics != res.runs[1].metrics
    assert res.paper == {"energy": {"backdrops-noise": {"fpr95": 0.125, "auroc": 0.9},
                                    "average": {"fpr95": 0.2, "auroc": 0.8}}}
    assert res.labels == {"energy": "Energy"}
    builtin = evaluate.report(ReportConfig(model=str(run), methods=("energy",), benchmark="backdrops", device="cpu"))
    assert builtin.ood == OOD and builtin.paper == {} and builtin.extractions == 1  # only scenes is new


def test_report_rejects_bad_input_before_work(run, tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "extract", lambda *a, **k: pytest.fail("work started"))
    bad = [
        (dict(methods=("nope",)), ConfigError, "valid: ash"),
        (dict(ood=("nope",)), DataError, "valid:"),
        (dict(ood=("backdrops",)), ConfigError, "ID dataset"),
        (dict(id_data="backdrops-noise"), ConfigError, "OOD set"),
        (dict(fpr_convention="x"), ConfigError, "openood"),
        (dict(params={"knn": {"k": 3}}), ConfigError, "not a requested"),
        (dict(params={"react": {"pct": 3}}), ConfigError, "percentile"),
        (dict(model=str(tmp_path / "missing")), RunError, "not found"),
        (dict(model=str(tmp_path)), RunError, "not an lbfood run"),
        (dict(compare=(str(run),)), ConfigError, "twice"),
        (dict(benchmark="nope"), ConfigError, "backdrops"),
    ]
    for kw, err, needle in bad:
        with pytest.raises(err, match=needle):
            evaluate.report(ReportConfig(**{"model": str(run), "device": "cpu", **kw}))
    assert not (run / "cache").exists()


def test_calibrate_keeps_95_percent_of_id_test(run):
    rt = make_runtime("cpu")
    model, meta = runs.load_run(run)
    entry = calibrate(run, model, meta, rt, method="react")
    assert entry["method"] == "react" and entry["tpr"] == 0.95 and entry["split"] == "test"
    # The training split is cached once, with FeatureNorm's jigsaw norms, for every later fit.
    test, train = _cached(run, "backdrops.test.32px"), _cached(run, "backdrops.train.32px.jigsaw")
    assert train.jigsaw_block_norms is not None
    assert not list((run / "cache").glob("features-backdrops.train.32px-*"))
    s = scorers.get("react").fit(train, model.head).score(test)
    assert int((s >= entry["value"]).sum()) >= 95  # of 100 ID test images
    assert int((s > entry["value"]).sum()) < 95  # the tightest such threshold
    assert entry["value"] == pytest.approx(float(torch.sort(s, descending=True).values[94]))


def test_preprocess_matches_torchvision():
    from PIL import Image
    from torchvision import transforms as T

    arr = (np.arange(300 * 217 * 3) % 251).astype(np.uint8).reshape(300, 217, 3)
    want = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(Image.fromarray(arr)))
    np.testing.assert_array_equal(eval_transform(arr, 224), want)
    small = np.asarray(T.Compose([T.Resize(32), T.CenterCrop(32)])(Image.fromarray(arr)))
    np.testing.assert_array_equal(eval_transform(arr, 32), small)


def test_expand_paths(tmp_path):
    (tmp_path / "a").mkdir()
    for p in ("a/x.png", "a/.hidden.png", "b.jpg"):
        (tmp_path / p).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    got = score.expand_paths([str(tmp_path / "a"), str(tmp_path / "*.jpg"), str(tmp_path / "b.jpg"),
                                 str(tmp_path / "none.png"), str(tmp_path / "*.gif"), str(tmp_path / "empty")])
    assert got == [(str(tmp_path / "a/x.png"), None), (str(tmp_path / "b.jpg"), None),
                   (str(tmp_path / "none.png"), "file not found"),
                   (str(tmp_path / "*.gif"), "no file matches this pattern"),
                   (str(tmp_path / "empty"), "empty folder: no files to score")]


def test_score_images_stores_a_threshold(run, tmp_path):
    import fakedata

    fakedata.write_flat_folder(tmp_path / "imgs", n=3, size=(40, 30))
    rows = score.score_images(ScoreConfig(paths=(str(tmp_path / "imgs"),), model=str(run), method="energy",
                                             device="cpu"))
    meta = json.loads((run / "run.json").read_text())
    stored = meta["thresholds"]["energy"]["value"]
    assert meta["threshold"]["method"] == "energy" and meta["threshold"]["value"] == stored
    assert [r.error for r in rows] == [None] * 3 and all(r.threshold == stored for r in rows)
    # Each row equals the model on the preprocessed, run-normalised image.
    model, _ = runs.load_run(run)
    x = torch.stack([torch.from_numpy(fakedata.pattern(k, 30, 40)) for k in range(3)])
    x = torch.from_numpy(np.stack([eval_transform(a.numpy(), 32) for a in x])).permute(0, 3, 1, 2) / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
    energy = torch.logsumexp(logits, dim=1)
    assert [r.score for r in rows] == pytest.approx(energy.tolist(), abs=1e-4)
    assert [r.verdict for r in rows] == ["ID" if e >= stored else "OOD" for e in energy.tolist()]
    over = score.score_images(ScoreConfig(paths=(str(tmp_path / "imgs"),), model=str(run), method="energy",
                                             threshold=-1e9, device="cpu"))
    assert {r.verdict for r in over} == {"ID"}


def test_calibrate_limit_and_a_stored_threshold(run, tmp_path):
    import fakedata

    rt = make_runtime("cpu")
    model, meta = runs.load_run(run)
    entry = calibrate(run, model, meta, rt, method="energy", limit=40)
    assert entry["limit"] == 40
    test = _cached(run, "backdrops.test.32px.first40")  # the only split calibration needed for energy
    assert len(list((run / "cache").iterdir())) == 1 and len(test) == 40
    s = scorers.get("energy").score(test)
    assert int((s >= entry["value"]).sum()) == 38  # ⌈0.95 · 40⌉
    # A threshold the training wrote (no params recorded) is used as is; nothing is recalibrated.
    runs.write(run, meta.replace(threshold={"method": "energy", "value": 1.5, "tpr": 0.95, "split": "test"}))
    fakedata.write_flat_folder(tmp_path / "imgs", n=2)
    rows = score.score_images(ScoreConfig(paths=(str(tmp_path / "imgs"),), model=str(run), method="energy",
                                             device="cpu"))
    assert [r.threshold for r in rows] == [1.5, 1.5]
    assert "thresholds" not in json.loads((run / "run.json").read_text())


def test_lff_runs_are_compared_with_the_plus_ours_rows(run, make_run, tmp_path):
    """A fine-tuned run with λ > 0 gets the paper's "+Ours" row; the pretrained run and the λ = 0 control
    the baseline row. `--ood NAME=DATASET` labels a set without changing what is evaluated."""
    runs = {}
    for lam in (1.0, 0.0):
        d = make_run(tmp_path, kind="finetune", seed=int(lam) + 1, mean=MEAN, std=STD)
        meta = runs_mod.read(d)
        runs_mod.write(d, meta.replace(config={**meta.config, "lam": lam}))
        runs[lam] = d
    bench = tmp_path / "mine.toml"
    bench.write_text('[benchmark]\nname = "mine"\nid = "backdrops"\nood = ["backdrops-noise"]\nimage_size = 32\n'
                     'arch = "resnet18"\n[paper.energy]\naverage = {fpr95 = 50.0, auroc = 80.0}\n'
                     '[paper_ours.energy]\naverage = {fpr95 = 30.0, auroc = 90.0}\n')
    res = evaluate.report(ReportConfig(model=str(runs[1.0]), compare=(str(runs[0.0]), str(run)),
                                       ood=("noise=backdrops-noise",), methods=("energy",), benchmark=str(bench),
                                       device="cpu"))
    assert res.ood == ("backdrops-noise",) and res.ood_labels == {"backdrops-noise": "noise"}
    assert [(r.kind, r.lff) for r in res.runs] == [("finetune", True), ("finetune", False), ("pretrain", False)]
    ours, control, pretrained = (res.paper_for(r, "energy") for r in res.runs)
    assert ours == {"average": {"fpr95": 0.3, "auroc": 0.9}}
    assert control == pretrained == {"average": {"fpr95": 0.5, "auroc": 0.8}}
    from lbfood.output.writers import _csv

    csv_rows = _csv(res).splitlines()
    assert csv_rows[0].endswith("paper_fpr95,paper_auroc,paper_row")
    assert csv_rows[2].endswith(",0.3,0.9,+Ours") and csv_rows[4].endswith(",0.5,0.8,baseline")


def test_featurenorm_threshold_from_the_stage_layout_is_not_reused(run):
    from lbfood.engine.evaluation.calibrate import stored_threshold

    entry = {"method": "featurenorm", "value": 3.5, "params": {"block": None}}
    meta = runs.read(run).replace(thresholds={"featurenorm": entry})
    assert stored_threshold(meta, scorers.get("featurenorm")) is None  # no "features": recalibrate
    entry["features"] = fx.FORMAT
    assert stored_threshold(meta, scorers.get("featurenorm")) == 3.5
    react = {"method": "react", "value": 1.5, "params": scorers.get("react").params}  # no block norms: kept
    assert stored_threshold(meta.replace(thresholds={"react": react}), scorers.get("react")) == 1.5


def test_report_reads_the_far_gate_as_a_method(trained_run, tmp_path, monkeypatch):
    """`report --method fargate`: the gate's FPR95/AUROC beside the paper's score (a scorer of the registry)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))  # a report writes caches
    res = evaluate.report(ReportConfig(model=str(run), methods=("react", "fargate"), ood=("backdrops-noise",),
                                       device="cpu", workers=0, limit=300))
    assert res.methods == ("react", "fargate") and res.params["fargate"] == {"shrinkage": "auto"}
    got = res.runs[0].metrics
    assert got["fargate"]["backdrops-noise"]["auroc"] > max(0.9, got["react"]["backdrops-noise"]["auroc"])
# ---- hostile input (formerly tests/test_hostile.py) ----


def test_report_on_a_read_only_run_finishes_with_a_note(run, tmp_path, read_only):
    read_only(run)
    before = tree(tmp_path)
    r = invoke("report", "--method", "react", "--ood", "backdrops-noise", "--output", tmp_path / "r.json", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert f"could not save to {run}/cache (permission denied)" in " ".join(r.output.split())
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["extractions"] == 3 and res["fits"] == 1  # test, noise, train; nothing came from a cache
    assert math.isfinite(res["runs"][0]["metrics"]["react"]["backdrops-noise"]["auroc"])
    after = tree(tmp_path)
    assert after.pop("r.json") and after == before
    with pytest.raises(StorageError, match=f"cannot write {run}/cache/f: permission denied; make {run} writable"):
        atomic_write_bytes(run / "cache" / "f", b"")  # the advice names the folder that refused
