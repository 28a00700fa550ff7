"""`report --plots`: the arrays behind the histograms, ROC curves and Fig. 5, and the PNG files."""

import struct

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine.config import ReportConfig
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import metrics, plotdata, scorers
from lbfood.engine.evaluation import report as evaluate
from lbfood.engine.evaluation.calibrate import store_threshold
from lbfood.engine.io import load_tensors
from lbfood.output import plots

OOD = ("backdrops-scenes", "backdrops-novel", "backdrops-noise")


def png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_roc_and_histograms_on_a_hand_made_case():
    ind, ood = np.array([3.0, 2.0, 1.0, 0.5]), np.array([2.0, 0.0])
    c = plotdata.roc(ind, ood)
    want = roc_curve([1, 1, 1, 1, 0, 0], [3, 2, 1, 0.5, 2, 0])
    for got, exp in zip((c.fpr, c.tpr, c.thresholds), want, strict=True):
        np.testing.assert_array_equal(got, exp)
    # 95 % of 4 ID images is all 4: the threshold is 0.5, which accepts 1 of the 2 OOD images.
    assert c.point == (0.5, 1.0) and c.auroc == 5.5 / 8
    edges = plotdata.shared_edges([np.array([0.0, 1.0]), np.array([2.0, 4.0])], 4)
    np.testing.assert_array_equal(edges, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(plotdata.counts(np.array([0.0, 1.0]), edges), [1, 1, 0, 0])
    np.testing.assert_array_equal(plotdata.counts(np.array([2.0, 4.0]), edges), [0, 0, 1, 1])
    assert plotdata.run_labels(["a/lff", "b/lff", "b/pre"]) == ["a/lff", "b/lff", "pre"]


@pytest.fixture
def runs(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path, name="lff", kind="finetune"), make_run(tmp_path, seed=1, name="pretrained")


def _cached(run_dir, key):
    (path,) = (run_dir / "cache").glob(f"features-{key}-*.safetensors")
    return fx.Features.from_tensors(load_tensors(path))


def test_plot_data_equals_an_independent_computation(runs, tmp_path):
    # msp and energy need no fitting (no pass over the training split); msp has a stored threshold.
    store_threshold(runs[0], "msp", {"method": "msp", "value": 0.105, "params": {}})
    cfg = ReportConfig(model=str(runs[0]), compare=(str(runs[1]),), methods=("energy", "msp"), device="cpu")
    result = evaluate.report(cfg)
    data = plotdata.collect(cfg, result, bins=20)
    assert data.ood == OOD and data.norms.runs == ("lff", "pretrained")
    assert [(h.run, h.method) for h in data.histograms] == \
        [("lff", "energy"), ("lff", "msp"), ("pretrained", "energy"), ("pretrained", "msp")]
    assert len(data.rocs) == 4 * 3
    for run_dir in runs:
        name = run_dir.name
        feats = {d: _cached(run_dir, f"{d}.test.32px") for d in ("backdrops", *OOD)}
        for method in ("energy", "msp"):
            s = scorers.get(method)
            sc = {d: s.score(f).double().numpy() for d, f in feats.items()}
            (h,) = [h for h in data.histograms if h.run == name and h.method == method]
            assert h.edges.shape == (21,) and h.edges[0] == min(a.min() for a in sc.values())
            assert h.edges[-1] == max(a.max() for a in sc.values())
            assert h.id_counts.sum() == 100 and all(h.ood_counts[o].sum() == 100 for o in OOD)
            np.testing.assert_array_equal(h.id_counts, np.histogram(sc["backdrops"], h.edges)[0])
            assert h.threshold == (0.105 if (name, method) == ("lff", "msp") else None)
            for o in OOD:
                np.testing.assert_array_equal(h.ood_counts[o], np.histogram(sc[o], h.edges)[0])
                assert h.summary[o] == metrics.summarize(sc["backdrops"], sc[o])
                assert h.summary[o] == result.runs[runs.index(run_dir)].metrics[method][o]
                (c,) = [c for c in data.rocs if (c.run, c.method, c.ood) == (name, method, o)]
                want = roc_curve(np.r_[np.ones(100), np.zeros(100)], np.r_[sc["backdrops"], sc[o]])
                for got, exp in zip((c.fpr, c.tpr, c.thresholds), want, strict=True):
                    np.testing.assert_array_equal(got, exp)
                # The marked point: the threshold keeping ⌈0.95·n⌉ ID images (the first ROC point with TPR ≥ 0.95).
                t = np.sort(sc["backdrops"])[::-1][94]
                assert c.point == (float(np.mean(sc[o] >= t)), float(np.mean(sc["backdrops"] >= t)))
                assert c.point[1] >= 0.95
        for d, f in feats.items():
            np.testing.assert_array_equal(data.norms.norms[name][d], f.features.norm(dim=1).double().numpy())
            assert data.norms.counts[name][d].sum() == 100



def _hand_made_plot_data():
    """Two runs and three OOD sets with made-up scores (the drawing does not care where they came from)."""
    rng = np.random.default_rng(0)
    hists, rocs, norms = [], [], {}
    for run in ("lff", "pretrained"):
        sc = {d: rng.normal(size=50) + (1.0 if d == "backdrops" else 0.0) for d in ("backdrops", *OOD)}
        edges = plotdata.shared_edges(list(sc.values()), 20)
        hists.append(plotdata.ScoreHistograms(
            run=run, method="msp", id_data="backdrops", edges=edges, id_counts=plotdata.counts(sc["backdrops"], edges),
            ood_counts={o: plotdata.counts(sc[o], edges) for o in OOD}, threshold=0.5 if run == "lff" else None,
            summary={o: metrics.summarize(sc["backdrops"], sc[o]) for o in OOD}, convention="paper"))
        rocs.extend(plotdata.roc(sc["backdrops"], sc[o], run=run, method="msp", ood=o) for o in OOD)
        norms[run] = {d: np.abs(v) * 10 for d, v in sc.items()}
    edges = plotdata.shared_edges([a for per in norms.values() for a in per.values()], 20)
    dist = plotdata.NormDistributions(
        runs=("lff", "pretrained"), datasets=("backdrops", *OOD), norms=norms, edges=edges,
        counts={r: {d: plotdata.counts(a, edges) for d, a in per.items()} for r, per in norms.items()})
    # Histograms and ROC curves of one run only: each figure costs a second or two to draw.
    return plotdata.PlotData("backdrops", OOD, tuple(hists[:1]), tuple(rocs[:3]), dist)


def test_report_pictures_are_pngs_of_the_stated_size(tmp_path):
    drawn = plots.write_report_plots(_hand_made_plot_data(), tmp_path / "pics")
    names = [p.path.name for p in drawn]
    assert names == ["norms.png", "hist-lff-msp.png", "roc-lff-msp.png"]
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted([*names, "index.html", ".lbfood-output"])
    sizes = {p.path.name: png_size(p.path) for p in drawn}
    # Figure inches × 150 dpi: Fig. 5 is 2 runs × 3 OOD sets (6.8 × 7.5 in), histograms 3 panels in a
    # row (12 × 3.5 in), ROC 5.2 × 4.8 in.
    assert sizes == {"norms.png": (1020, 1125), "hist-lff-msp.png": (1800, 525), "roc-lff-msp.png": (780, 720)}
    assert all((p.width, p.height) == sizes[p.path.name] for p in drawn)
    index = (tmp_path / "pics" / "index.html").read_text()
    assert all(f"src='{n}'" in index for n in names)


def test_report_plots_from_the_command_line(runs, tmp_path):
    base = ["report", "--model", str(runs[0]), "--method", "msp", "--device", "cpu", "-q"]
    bad = tmp_path / "a-file"
    bad.write_text("x")
    r = CliRunner().invoke(app, [*base, "--plots", str(bad / "pics")])
    assert r.exit_code == 2 and r.output.strip().startswith("error: --plots") and len(r.output.strip().splitlines()) == 1
    assert not (runs[0] / "cache").exists()  # refused before any work

    before = {p for p in tmp_path.rglob("*") if "cache" not in p.parts and "scorers" not in p.parts}
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    after = {p for p in tmp_path.rglob("*") if "cache" not in p.parts and "scorers" not in p.parts}
    assert after == before  # nothing but the runs' caches unless asked

    r = CliRunner().invoke(app, [*base, "--plots", str(tmp_path / "out" / "pics")])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "out" / "pics").iterdir())
    assert files == [".lbfood-output", "hist-lff-msp.png", "index.html", "norms.png", "roc-lff-msp.png"]
    assert all(png_size(tmp_path / "out" / "pics" / f) for f in files if f.endswith(".png"))
    assert "pictures: 3 PNG(s)" in r.output
