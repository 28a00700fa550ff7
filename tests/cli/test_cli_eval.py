"""`lbfood report`, `lbfood score` and `lbfood datasets` through the command line (CliRunner, CPU, tiny runs)."""

import csv
import json
from pathlib import Path

import fakedata
import numpy as np
import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.commands import options as common
from lbfood.engine import runs
from lbfood.engine.data import LoadOptions, get
from lbfood.engine.data.base import CIFAR10_MEAN, CIFAR10_STD
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import metrics, scorers
from lbfood.engine.io import load_tensors
from lbfood.engine.runtime import make_runtime

runner = CliRunner()
OOD = ("backdrops-scenes", "backdrops-novel", "backdrops-noise")
CPU = ("--device", "cpu", "-q")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def run(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path)


def _direct_scores(run_dir, method, name, root, train=None):
    """A scorer's scores on a dataset, computed here: spec images normalised with the run's mean/std."""
    rt = make_runtime("cpu")
    model, meta = runs.load_run(run_dir)
    model = rt.prepare(model)

    def feats(ds, split):
        images = get(ds).load(LoadOptions(root=root, image_size=32), split)
        return fx.extract(model, make_loader(images, batch_size=256, mean=meta.mean, std=meta.std,
                                             image_size=32, train=False, channels_last=rt.channels_last))

    s = scorers.get(method)
    if s.needs_fit:
        s.fit(feats(train or meta.data, "train"), model.head)
    return s.score(feats(name, "test"))


def test_scorer_names_match_the_registry():
    assert common.SCORER_NAMES == ", ".join(scorers.names())


def test_report_table_json_and_cache(run, tmp_path, monkeypatch):
    r = invoke("report", "--method", "energy,react", "--method", "msp", "--output", "r.json", *CPU)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["methods"] == ["energy", "react", "msp"] and res["ood"] == list(OOD)
    assert res["convention"] == "paper" and res["params"]["react"] == {"percentile": 90.0}
    assert res["runs"][0]["path"] == str(run) and res["data_root"] == "data"
    assert res["extractions"] == 5  # test, 3 OOD sets, train (for react)
    (m,) = [x["metrics"] for x in res["runs"]]
    id_scores = _direct_scores(run, "energy", "backdrops", tmp_path)
    for o in OOD:
        want = metrics.summarize(id_scores, _direct_scores(run, "energy", o, tmp_path))
        assert m["energy"][o] == pytest.approx(want, abs=1e-9)
    # The table: one row per OOD set and Average, percentages with two decimals, caption with accuracy.
    for o in (*OOD, "Average"):
        assert o in r.output
    assert f"{100 * m['react']['average']['auroc']:.2f}" in r.output
    assert f"{100 * m['msp']['backdrops-noise']['fpr95']:.2f}" in r.output
    assert f"accuracy {res['runs'][0]['id_accuracy']:.2%}" in r.output and "convention paper" in r.output
    assert "AUPR" not in r.output

    monkeypatch.setattr(fx, "extract", lambda *a, **k: pytest.fail("features were re-extracted"))
    r = invoke("report", "--method", "vim", "--method", "maxlogit", "--all-metrics", "--output", "r2.json", *CPU)
    assert r.exit_code == 0, r.output
    res2 = json.loads((tmp_path / "r2.json").read_text())
    assert (res2["extractions"], res2["fits"]) == (0, 1)  # only vim was fitted, from the cached train split
    assert "AUPR-In" in r.output and "AUPR-Out" in r.output


def test_output_formats(run, tmp_path):
    assert invoke("report", "--method", "energy", "--output", "r.json", *CPU).exit_code == 0
    res = json.loads((tmp_path / "r.json").read_text())
    m = res["runs"][0]["metrics"]["energy"]
    r = invoke("report", "--method", "energy", "--output", "r.csv", *CPU)
    assert r.exit_code == 0 and "wrote r.csv" in r.output
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [row["dataset"] for row in rows] == [*OOD, "average"]
    for row in rows:
        for k in metrics.SUMMARY_KEYS:
            assert float(row[k]) == m[row["dataset"]][k]
        assert row["method"] == "energy" and row["convention"] == "paper"
    assert invoke("report", "--method", "energy", "--output", "r.md", *CPU).exit_code == 0
    md = (tmp_path / "r.md").read_text()
    assert "| Run | Method | Dataset | FPR95↓ | AUROC↑ | AUPR-In↑ | AUPR-Out↑ |" in md
    avg = m["average"]
    assert f"| energy | Average | {100 * avg['fpr95']:.2f} | {100 * avg['auroc']:.2f} |" in md
    assert "ID accuracy" in md and "convention: ID positive" in md
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.csv", "r.json", "r.md"]  # atomic


def test_compare_and_benchmark(run, make_run, tmp_path, monkeypatch):
    ft = make_run(tmp_path, kind="finetune", seed=1)
    r = invoke("report", "--model", ft, "--compare", run, "--benchmark", "backdrops", "--method", "energy",
               "--output", "c.json", *CPU)
    assert r.exit_code == 0, r.output
    assert "finetune" in r.output and "pretrain" in r.output and "benchmark" in r.output
    res = json.loads((tmp_path / "c.json").read_text())
    assert [x["kind"] for x in res["runs"]] == ["finetune", "pretrain"] and res["benchmark"] == "backdrops"

    # The better value of each pair is bold green (rendered on a colour terminal).
    import io

    from rich.console import Console

    from lbfood.engine.config import ReportConfig
    from lbfood.engine.evaluation import report as evaluate
    from lbfood.output import render, render_eval

    result = evaluate.report(ReportConfig(model=str(ft), compare=(str(run),), methods=("energy",), device="cpu"))
    buf = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=buf, force_terminal=True, color_system="standard", width=250))
    render_eval.report(result)
    a, b = (x.metrics["energy"]["average"]["auroc"] for x in result.runs)
    better = f"{100 * max(a, b):.2f}"
    assert f"\x1b[1;32m{better}" in buf.getvalue()


def test_benchmark_file_carries_paper_numbers(run, tmp_path):
    bench = tmp_path / "b.toml"
    bench.write_text('[benchmark]\nname = "mine"\nid = "backdrops"\nood = ["backdrops-noise"]\nimage_size = 32\n'
                     'arch = "resnet18"\n[paper.energy]\nbackdrops-noise = {fpr95 = 12.34, auroc = 98.76}\n'
                     'average = {fpr95 = 12.34, auroc = 98.76}\n')
    r = invoke("report", "--benchmark", bench, "--method", "energy", *CPU)
    assert r.exit_code == 0, r.output
    assert "12.34" in r.output and "98.76" in r.output and "paper" in r.output


def test_bad_inputs(run, tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "extract", lambda *a, **k: pytest.fail("work started"))
    one_error_line(invoke("report", "--method", "nope", *CPU), "unknown scorer", "react")
    one_error_line(invoke("report", "--ood", "nope", *CPU), "unknown dataset", "backdrops-noise")
    one_error_line(invoke("report", "--output", "r.xlsx", *CPU), ".json, .csv or .md")
    one_error_line(invoke("report", "--param", "react.pct=3", *CPU), "percentile")
    one_error_line(invoke("report", "--model", "missing", *CPU), "not found")
    (tmp_path / "notarun").mkdir()
    one_error_line(invoke("report", "--model", "notarun", *CPU), "not an lbfood run")
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "format": 99, "lbfood": "9.0"}))
    one_error_line(invoke("report", *CPU), "format 99")
    one_error_line(invoke("score", "x.png", "--device", "cpu"), "format 99")
    (run / "run.json").unlink()
    (tmp_path / "runs" / "latest").unlink()
    one_error_line(invoke("report", *CPU), "not found", "lbfood pretrain")
    assert not (tmp_path / "r.xlsx").exists()


def test_datasets_on_an_empty_root(tmp_path):
    from lbfood.engine.data import specs

    r = invoke("datasets", "--data-root", tmp_path / "empty", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == [s.name for s in specs()]
    assert all(set(row) == {"name", "role", "found", "count", "path"} for row in rows)
    generated = {s.name for s in specs() if s.generated}
    for row in rows:
        if row["name"] in generated:
            assert row["found"]
        else:
            assert not row["found"] and row["count"] is None and row["path"].startswith(str(tmp_path / "empty"))
    table = invoke("datasets", "--data-root", tmp_path / "empty")
    assert table.exit_code == 0 and "missing" in table.output and "found" in table.output and "cifar10" in table.output
    (tmp_path / "a-file").write_text("x")  # a data root that is a file: one line naming it, not "all missing"
    one_error_line(invoke("datasets", "--data-root", tmp_path / "a-file"), "is a file, not a folder")


def test_cifar10_run_with_svhn_and_a_folder(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (small_backdrops: for its single-thread setting)
    root = tmp_path / "data"
    fakedata.write_cifar10(root, n_train=20, n_test=6)
    fakedata.write_svhn(root, n=5)
    fakedata.write_flat_folder(tmp_path / "mine", n=3, size=(48, 40))
    run = make_run(tmp_path, data="cifar10")
    r = invoke("report", "--id", "cifar10", "--ood", "svhn", "--ood", f"folder:{tmp_path / 'mine'}",
               "--method", "energy,react", "--data-root", root, "--output", "r.json", *CPU)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    folder = f"folder:{tmp_path / 'mine'}"
    assert res["num_images"] == {"cifar10": 6, "svhn": 5, folder: 3}
    assert res["data_root"] == str(root)
    # OOD sets are normalised with the run's (CIFAR-10) statistics, not their specs' (ImageNet's for folders).
    assert get(folder).mean != tuple(CIFAR10_MEAN) and runs.read(run).std == list(CIFAR10_STD)
    for method in ("energy", "react"):
        id_scores = _direct_scores(run, method, "cifar10", root)
        for name in ("svhn", folder):
            want = metrics.summarize(id_scores, _direct_scores(run, method, name, root))
            assert res["runs"][0]["metrics"][method][name] == pytest.approx(want, abs=1e-9)


def test_report_downloads_a_missing_ood_set_and_limits_every_split(tmp_path, make_run, small_backdrops, monkeypatch):
    """--download reaches the OOD set's loader (torchvision's SVHN replaced by a writer of its real file:
    no network here); without it the error says to pass it. --limit N reports on the first N of each split."""
    import torchvision.datasets as tvd

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    fakedata.write_cifar10(root, n_train=20, n_test=6)
    run = make_run(tmp_path, data="cifar10")
    fetched = []

    class FakeSVHN:
        def __init__(self, folder, split, download):
            fetched.append((folder, split, download))
            fakedata.write_svhn(Path(folder), n=5, in_subdir=False)

    monkeypatch.setattr(tvd, "SVHN", FakeSVHN)
    args = ("report", "--model", run, "--ood", "svhn", "--method", "energy", "--data-root", root, *CPU)
    one_error_line(invoke(*args), "svhn", "pass --download")
    assert fetched == []

    class Offline:
        def __init__(self, folder, split, download):
            Path(folder).mkdir(parents=True)  # as torchvision does before it fetches
            raise OSError("Name or service not known")

    monkeypatch.setattr(tvd, "SVHN", Offline)
    one_error_line(invoke(*args, "--download"), "svhn: download to", "failed", "by hand into")
    assert not (root / "svhn").exists() and (root / "cifar-10-batches-py").is_dir()  # only what it made is gone
    monkeypatch.setattr(tvd, "SVHN", FakeSVHN)
    r = invoke(*args, "--download", "--limit", "4", "--output", "r.json")
    assert r.exit_code == 0, r.output
    assert fetched == [(str(root / "svhn"), "test", True)]
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == {"cifar10": 4, "svhn": 4}


def test_score_mixed_files(run, tmp_path):
    fakedata.write_mixed_images(tmp_path / "mixed")
    bad = {"truncated.jpg", "notes.txt", "fake.png"}
    r = invoke("score", tmp_path / "mixed", "--json", "--device", "cpu")
    assert r.exit_code == 1, r.output
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert set(by_name) == {"rgb.png", "photo.jpg", "gray.png", "rgba.png", "gray16.png", "palette.png", *bad}
    for name, row in by_name.items():
        if name in bad:
            assert row["error"] and row["score"] is None and row["verdict"] is None, row
        else:
            assert row["error"] is None and row["verdict"] in ("ID", "OOD") and 0 < row["confidence"] <= 1
            assert row["predicted"] in fakedata_classes() and row["method"] == "react"
            near = row["far_score"] >= row["far_threshold"]  # the far-OOD gate passes
            assert row["verdict"] == ("ID" if row["score"] >= row["threshold"] and near else "OOD")
            assert row["reason"] == (None if row["verdict"] == "ID" else "score" if near else "far")
    assert "truncated or corrupt" in by_name["truncated.jpg"]["error"]
    # The threshold was calibrated on the ID test split and stored; it keeps >= 95 % of those images.
    meta = json.loads((run / "run.json").read_text())
    thr = meta["thresholds"]["react"]
    assert thr["value"] == rows[0]["threshold"] and thr["tpr"] == 0.95
    (cached,) = (run / "cache").glob("features-backdrops.test.32px-*.safetensors")
    (fitted,) = (run / "scorers").glob("react.safetensors")
    react = scorers.get("react").load_state_dict(load_tensors(fitted))
    id_scores = react.score(fx.Features.from_tensors(load_tensors(cached)))
    assert int((id_scores >= thr["value"]).sum()) >= 95  # of 100
    table = invoke("score", "mixed/rgb.png", "mixed/notes.txt", "--device", "cpu")  # short: the table is not cut
    assert table.exit_code == 1 and "rgb.png" in table.output and "error" in table.output
    ok = invoke("score", tmp_path / "mixed" / "*.png", "--threshold", "-1e9", "--no-far-gate", "--json", "--device",
                "cpu")
    assert ok.exit_code == 1  # fake.png matches the glob and fails
    rows = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [r["verdict"] for r in rows].count("ID") == 5 and [r["verdict"] for r in rows].count(None) == 1
    assert {r["far_score"] for r in rows} == {r["far_threshold"] for r in rows} == {None}  # no gate
    assert "reason" in table.output and "far-OOD gate ≥" in table.output  # the column, and the rule in the caption
    good = invoke("score", tmp_path / "mixed" / "rgb.png", "--json", "--device", "cpu")
    assert good.exit_code == 0 and np.isfinite(json.loads(good.stdout)["score"])


def fakedata_classes():
    from lbfood.engine.data.backdrops import CLASSES

    return CLASSES


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_a_run_with_nan_weights_is_refused_by_every_command(run, tmp_path):
    """Was: `score` printed a NaN score with verdict OOD and exit 0; `finetune --from` it said "try a
    larger --delta". Now one line naming the cause, and nothing written."""
    import torch

    from lbfood.engine.io import save_tensors

    weights = load_tensors(run / "model.safetensors")
    weights["head.weight"] = weights["head.weight"].clone()
    weights["head.weight"][0, 0] = float("nan")
    save_tensors(run / "model.safetensors", weights)
    img = tmp_path / "a.png"
    fakedata.write_png(img, fakedata.pattern(0, 32, 32))
    before = _snapshot(tmp_path)
    for args in (("score", img, "--json"), ("report", "--ood", "backdrops-noise"), ("explain", img, "--out", "pics"),
                 ("export", "--method", "energy", "--out", "d.onnx"), ("finetune", "--from", run, "--out", "ft")):
        one_error_line(invoke(*args, "--device", "cpu"), "model.safetensors holds 1 non-finite weight(s) (NaN or inf): "
                       "the training that made it diverged", "--out NEW")
    assert _snapshot(tmp_path) == before
    assert torch.isnan(load_tensors(run / "model.safetensors")["head.weight"]).any()


def test_score_json_never_writes_nan(run, tmp_path):
    """Finite weights whose logits overflow (a head scaled to 1e38): that image gets an error row, and
    every line is valid JSON (no bare NaN or Infinity)."""
    from lbfood.engine.io import save_tensors

    weights = load_tensors(run / "model.safetensors")
    weights["head.weight"] = weights["head.weight"] * 1e38
    save_tensors(run / "model.safetensors", weights)
    img = tmp_path / "a.png"
    fakedata.write_png(img, fakedata.pattern(0, 32, 32))
    r = invoke("score", img, "--method", "energy", "--threshold", "0", "--json", "--device", "cpu")
    assert r.exit_code == 1, r.output
    (row,) = [json.loads(ln, parse_constant=lambda c: pytest.fail(f"bare {c} in --json")) for ln in r.stdout.splitlines()]
    assert row["score"] is None and row["verdict"] is None
    assert row["error"].startswith("the energy score is ") and "(not a finite number), so there is no verdict" in row["error"]


def test_score_on_a_run_being_trained_does_not_advise_resume(run, tmp_path):
    """Was: "finish it with --resume", which the training's lock refuses."""
    from lbfood.engine import checkpoint

    runs.update(run, status="running", config={**runs.read(run).config, "epochs": 4})
    img = tmp_path / "a.png"
    fakedata.write_png(img, fakedata.pattern(0, 32, 32))
    with checkpoint.lock(run):  # a `pretrain` still training it
        r = invoke("score", img, "--model", run, "--method", "energy", "--threshold", "0", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    note = "".join(r.stderr.split())
    assert "".join(f"run {run} is still being trained by another lbfood command (1 of 4 epochs so far): these numbers "
                   "are its epoch-1 weights; run this again once it is done for the final ones".split()) in note
    assert "--resume" not in r.stderr


def test_report_counts_undecodable_files_and_refuses_a_mostly_unread_set(run, tmp_path):
    """Was: metrics on the 2 readable files of 6, with no note. Now: a note (table footnote and JSON
    `notes`) counting the skipped files, and a set of which fewer than half could be read is refused
    unless --allow-skips; the same on a second report that reads the feature cache."""
    odd = tmp_path / "odd"
    fakedata.write_flat_folder(odd, n=2)
    for i in range(4):
        (odd / f"bad{i}.png").write_bytes(b"not a png")
    args = ("report", "--ood", "folder:odd", "--method", "energy", *CPU)
    refusal = ("folder:odd: only 2 of 6 image files could be decoded (fewer than half), so its metrics would "
               "describe another set; fix or remove the unreadable files, or pass --allow-skips to report on the 2")
    one_error_line(invoke(*args, "--output", "a.json"), refusal)
    assert not (tmp_path / "a.json").exists()
    note = "folder:odd: skipped 4 image file(s) that could not be decoded; its numbers are over 2 of 6"
    r = invoke(*args, "--allow-skips", "--output", "b.json")
    assert r.exit_code == 0, r.output
    assert f"note: {note}" in r.output and json.loads((tmp_path / "b.json").read_text())["notes"] == [note]
    one_error_line(invoke(*args), refusal)  # the features are cached now: counted all the same
    (odd / "bad0.png").unlink()
    (odd / "bad1.png").unlink()
    fakedata.write_flat_folder(tmp_path / "more", n=2)
    for i, f in enumerate(sorted((tmp_path / "more").iterdir())):
        f.rename(odd / f"more{i}.png")
    r = invoke(*args, "--output", "c.json")  # 4 of 6 read: more than half, reported with the note
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c.json").read_text())["notes"] == [
        "folder:odd: skipped 2 image file(s) that could not be decoded; its numbers are over 4 of 6"]
