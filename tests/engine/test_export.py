"""`lbfood export`: the ONNX and TorchScript detectors give `lbfood score`'s logits, scores and verdicts."""

import json

import numpy as np
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.cli import export as cli
from lbfood.engine import runs
from lbfood.engine.config import ScoreConfig
from lbfood.engine.data import backdrops
from lbfood.engine.data.images import decode, eval_transform
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import score as evaluate
from lbfood.engine.export import ExportConfig, exact_scores, export, exportable
from lbfood.engine.export.api import ONNX_AGREEMENT

ort = pytest.importorskip("onnxruntime")
runner = CliRunner()
LIMIT = 40  # the run's `limit`: scorers are fitted on 40 training images, γ calibrated on 40 test images
PARAMS = {"knn": {"k": 5}, "vim": {"dim": 16}}  # knn's default k = 50 exceeds the 40 training images


@pytest.fixture
def run(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = make_run(tmp_path)
    _set(run_dir, limit=LIMIT, parent="runs/the-parent")
    return run_dir


def _set(run_dir, limit, parent):
    meta = runs.read(run_dir)
    runs.write(run_dir, meta.replace(config={**meta.config, "limit": limit}, parent=parent))


def _images(tmp_path):
    """8 ID test and 8 novel-object images (uint8, 32 px: the run's size, so nothing is resized) as PNGs."""
    from PIL import Image

    x = torch.cat([backdrops.generate("test")[0][50:58], backdrops.generate("novel")[0][:8]]).numpy()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(x):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    return folder, x


def _run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {"images": x})]


def _run_ts(path, x):
    m = torch.jit.load(str(path))
    return [o.numpy() for o in m(torch.from_numpy(x))]


# Every exportable method, in groups that keep each test short: logits and block norms; the head on
# shaped features; statistics of the training features.
GROUPS = {"logits": ("msp", "maxlogit", "energy", "featurenorm"), "head": ("react", "dice", "dice_react", "ash"),
          "statistics": ("mahalanobis", "vim", "knn", "fargate"), "bghead": ("bghead",)}


def _as_bg_head_run(run_dir):
    """The run as `finetune --objective bg-head` leaves it: a trained (here: random) `bg_head` in its weights."""
    from lbfood.engine import models

    model, meta = runs.load_run(run_dir)
    models.add_bg_head(model)
    torch.manual_seed(1)
    with torch.no_grad():
        model.bg_head.weight.normal_()
        model.bg_head.bias.fill_(0.5)
    runs.save_model(run_dir, model)
    runs.write(run_dir, meta.replace(config={**meta.config, "objective": "bg-head", "lam": 1.0}))


def test_the_groups_and_help_cover_every_exportable_method():
    assert sorted(m for g in GROUPS.values() for m in g) == exportable() == [
        "ash", "bghead", "dice", "dice_react", "energy", "fargate", "featurenorm", "knn", "mahalanobis", "maxlogit",
        "msp",
        "react", "vim"]
    assert cli.EXPORT_NAMES == ", ".join(exportable())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_every_method_matches_lbfood_score(run, tmp_path, fmt, group):
    if group == "bghead":
        _as_bg_head_run(run)
    folder, x = _images(tmp_path)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    model, meta = runs.load_run(run)
    xf = (torch.from_numpy(nchw).float() / 255 - torch.tensor(meta.mean).view(1, 3, 1, 1)) / \
        torch.tensor(meta.std).view(1, 3, 1, 1)
    want_logits = fx.extract(model, [(xf, None)]).logits.numpy()
    decided = set()
    for method in GROUPS[group]:
        # The paper's verdict alone (--no-far-gate): the gate is checked on a trained run below.
        rows = evaluate.score_images(ScoreConfig(paths=(str(folder),), model=str(run), method=method,
                                                 params=PARAMS.get(method, {}), device="cpu", far_gate=False))
        scores = np.array([r.score for r in rows])
        thr = rows[0].threshold
        res = export(ExportConfig(model=str(run), method=method, format=fmt, params=PARAMS.get(method, {}),
                                  device="cpu", far_gate=False))
        assert res.threshold == thr and float(res.metadata["threshold"]) == thr
        logits, score, is_id = (_run_onnx if fmt == "onnx" else _run_ts)(res.path, nchw)
        assert logits.dtype == np.float32 and score.dtype == np.float32 and is_id.dtype == np.bool_
        assert np.abs(logits - want_logits).max() <= 1e-4, method
        err = np.abs(score - scores)
        if fmt == "onnx":
            # Every float32 network is a few 1e-6 off exact arithmetic in its features, which large scores
            # (Mahalanobis' squared distances, ASH's rescaled energy: a few hundred here, a float32 ulp
            # 1.5e-5) amplify in proportion to their size: `lbfood score` itself is that far off the float64
            # score. So the bound README states, on these very images: |ONNX - score| <= ABS + REL·|score|
            # per image; and the ONNX file no more than twice as far from exact arithmetic as `lbfood score`.
            exact = exact_scores(ExportConfig(model=str(run), method=method, params=PARAMS.get(method, {}),
                                              device="cpu", far_gate=False), nchw)
            own = np.abs(scores - exact).max()
            assert own <= 1e-5 + 4e-6 * np.abs(scores).max(), (method, own)  # the reference itself is sound
            bound = ONNX_AGREEMENT[0] + ONNX_AGREEMENT[1] * np.abs(scores)
            assert (err <= bound).all(), (method, (err / bound).max())
            assert np.abs(score - exact).max() <= max(1e-4, 2 * own), (method, np.abs(score - exact).max(), own)
        else:
            assert err.max() <= 1e-4, (method, err.max())
        assert [r.predicted for r in rows] == [meta.classes[k] for k in logits.argmax(1)]
        # Same verdicts wherever γ is farther from the score than the two sides differ (nearer, float
        # noise could legitimately go either way).
        clear = np.abs(scores - thr) > max(1e-4, err.max())
        assert clear.sum() >= 14, method  # at most two of the 16 are that close
        assert list(is_id[clear]) == [r.verdict == "ID" for r, c in zip(rows, clear, strict=True) if c]
        assert list(is_id) == list(score.astype(np.float64) >= thr)
        decided |= {r.verdict for r in rows}
    # The images exercise both verdicts (not the bghead group's random, untrained head: it separates nothing).
    assert decided == {"ID", "OOD"} or group == "bghead"


def test_metadata_layout_and_dynamic_batch(run, tmp_path):
    import onnx

    _, x = _images(tmp_path)
    a = export(ExportConfig(model=str(run), method="react", format="onnx", layout="NHWC", threshold=2.5,
                            out=str(tmp_path / "d.onnx"), device="cpu", far_gate=False))
    b = export(ExportConfig(model=str(run), method="react", format="torchscript", device="cpu"))
    assert b.path == f"{run.name}-react.pt" and (tmp_path / b.path).is_file()
    props = {p.key: p.value for p in onnx.load(a.path).metadata_props}
    assert props == a.metadata
    extra = {"lbfood.json": ""}
    torch.jit.load(b.path, _extra_files=extra)
    ts = json.loads(extra["lbfood.json"])
    assert ts == b.metadata
    assert props["threshold"] == "2.5" and props["threshold_source"] == "--threshold"
    assert ts["threshold_source"] == "run" and float(ts["threshold"]) == b.threshold != 2.5
    assert json.loads(props["classes"]) == list(backdrops.CLASSES) and props["method"] == "react"
    assert json.loads(props["params"]) == {"percentile": 90.0} and props["input_size"] == "32"
    assert (props["layout"], ts["layout"]) == ("NHWC", "NCHW")
    assert json.loads(props["mean"]) == json.loads((run / "run.json").read_text())["mean"]
    assert props["run"] == str(run) and props["parent_run"] == "runs/the-parent"
    assert props["lbfood_version"] == "0.1.0" and props["format"] == "lbfood-detector-1"
    assert props["far_gate"] == props["far_threshold"] == "" and [o.name for o in onnx.load(a.path).graph.output] == [
        "logits", "score", "is_id"]  # --no-far-gate: the paper's verdict alone, as before the gate
    assert ts["far_gate"] == "fargate" and float(ts["far_threshold"]) == b.far_threshold
    assert "far_score >= far_threshold" in ts["score"] and json.loads(ts["far_params"]) == {"shrinkage": "auto"}
    # NHWC input gives the NCHW file's logits; any batch size (the example had 2 images) runs.
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for n in (1, 5, 16):
        la, sa, ia = _run_onnx(a.path, x[:n])
        lb, sb, _, _ = _run_ts(b.path, nchw[:n])  # b has the far-OOD gate: far_score comes last
        assert la.shape == (n, 10) and sa.shape == ia.shape == (n,)
        assert np.abs(la - lb).max() <= 1e-4 and np.abs(sa - sb).max() <= 1e-4
        assert list(ia) == list(sa.astype(np.float64) >= 2.5)


def test_cli_exports_and_refuses_unsupported_methods(run, tmp_path):
    r = runner.invoke(app, ["export", "--method", "energy", "--out", "e.onnx", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e.onnx").is_file() and "e.onnx" in r.output
    one_error_line(runner.invoke(app, ["export", "--method", "odin"]), "cannot export odin", "gradient")
    one_error_line(runner.invoke(app, ["export", "--method", "nope"]), "unknown method 'nope'",
                    "valid for export: ash, bghead, dice, dice_react, energy, fargate, featurenorm, knn, mahalanobis, "
                    "maxlogit, msp, react, vim")
    one_error_line(runner.invoke(app, ["export", "--method", "msp", "--format", "tflite"]), "--format 'tflite'")
    one_error_line(runner.invoke(app, ["export", "--method", "msp", "--layout", "NWHC"]), "--layout 'NWHC'")
    one_error_line(runner.invoke(app, ["export", "--format", "torchscript", "--out", "d.onnx"]),
                    "--out d.onnx names an ONNX file but --format torchscript writes TorchScript; name it d.pt")
    one_error_line(runner.invoke(app, ["export", "--out", str(run / "d.onnx")]), "is inside the run folder")
    # 21.10: an existing file is replaced only if lbfood exported it (ONNX metadata / TorchScript extra file)
    r = runner.invoke(app, ["export", "--method", "energy", "--out", "e.onnx", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (tmp_path / "mine.onnx").write_bytes(b"my model")
    one_error_line(runner.invoke(app, ["export", "--out", "mine.onnx"]), "already exists and lbfood did not write it")
    assert (tmp_path / "mine.onnx").read_bytes() == b"my model"
    r = runner.invoke(app, ["export", "--method", "msp", "--format", "torchscript", "--out", "m.pt", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from lbfood.engine.export.writer import is_detector
    assert is_detector(tmp_path / "m.pt") and is_detector(tmp_path / "e.onnx")
    assert not is_detector(tmp_path / "mine.onnx")
    one_error_line(runner.invoke(app, ["export", "--method", "react", "--out", str(tmp_path)]), "it is a folder")
    assert not list((run / "scorers").glob("react*"))  # refused before ReAct was fitted (energy's gate was)
    # KNN's bank: 40 training features × 64 dims × 4 bytes = 10,240 bytes ≈ 0.0098 MiB.
    one_error_line(runner.invoke(app, ["export", "--method", "knn", "--param", "k=5", "--max-bank-mb", "0.005",
                                        "--device", "cpu"]),
                    "feature bank is 0.00977 MiB (40 × 64 float32)", "--param fraction=0.512")
    assert not list(tmp_path.glob("*knn*"))


def test_onnx_without_the_onnx_package_says_what_to_install(run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    one_error_line(runner.invoke(app, ["export", "--method", "msp"]), "pip install 'lbfood[export]'",
                    "--format torchscript")


def _deploy():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "deploy.py"
    spec = importlib.util.spec_from_file_location("deploy_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("size", [32, 224])
def test_deploy_example_prepares_images_as_lbfood_score(tmp_path, size):
    import fakedata
    from PIL import Image

    deploy = _deploy()
    for h, w in ((40, 30), (30, 47), (size, size), (300, 260), (17, 17)):
        arr = fakedata.pattern(h + w, h, w)
        Image.fromarray(arr).save(tmp_path / "a.png")
        got = deploy.load(tmp_path / "a.png", size)
        assert got.shape == (size, size, 3) and np.array_equal(got, eval_transform(arr, size)), (h, w)
    gray16 = (fakedata.pattern(7, 40, 30)[..., 0].astype(np.uint16) * 257 + 100).astype(np.uint16)
    fakedata.png16(tmp_path / "g16.png", gray16)  # Pillow opens it as mode I;16 (or I)
    assert np.array_equal(deploy.load(tmp_path / "g16.png", size), eval_transform(decode(tmp_path / "g16.png"), size))


def test_deploy_example_classifies_a_folder(run, tmp_path, capsys):
    folder, x = _images(tmp_path)
    res = export(ExportConfig(model=str(run), method="energy", out=str(tmp_path / "d.onnx"), device="cpu"))
    logits, score, is_id, _ = _run_onnx(res.path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    (folder / "07b-broken.png").write_bytes(b"not a png")  # sorted between 07.png and 08.png
    assert _deploy().main(res.path, str(folder), batch=5) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"{folder / '07b-broken.png'}\terror: ") and len(err.splitlines()) == 1
    lines = [ln.split("\t") for ln in out.splitlines()]
    assert [ln[0] for ln in lines] == [str(folder / f"{i:02d}.png") for i in range(16)]
    assert [ln[1] for ln in lines] == [backdrops.CLASSES[k] for k in logits.argmax(1)]
    assert [float(ln[2]) for ln in lines] == pytest.approx(score.tolist(), abs=1e-4)
    assert [ln[3] for ln in lines] == ["ID" if v else "OOD" for v in is_id]


def test_knn_bank_over_the_limit_is_refused_before_the_fit_is_stored(run, tmp_path):
    """Was: refused only after `scorers/knn*` was written into the run. The training features extracted for
    the fit stay in the run's cache/ (any scorer reuses them); no fitted KNN is kept."""
    one_error_line(runner.invoke(app, ["export", "--method", "knn", "--param", "k=5", "--max-bank-mb", "0.005",
                                        "--device", "cpu"]), "feature bank is 0.00977 MiB (40 × 64 float32)")
    assert not list(run.rglob("*knn*")) and not (run / "scorers").exists()
    assert "threshold" not in runs.read(run).to_dict() and not runs.read(run).thresholds
    r = runner.invoke(app, ["export", "--method", "knn", "--param", "k=5", "--max-bank-mb", "0.01", "--out", "k.onnx",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list((run / "scorers").glob("knn*"))) == 1


def test_deploy_example_reads_every_image_file_score_reads(run, tmp_path, capsys):
    """Was: .gif and .tif files, which `lbfood score` reads, were ignored. The extensions come from the
    detector's metadata, written from the engine's one list (no lbfood needed beside the file)."""
    from PIL import Image

    from lbfood.engine.data.images import IMAGE_EXTENSIONS

    folder, x = _images(tmp_path)
    res = export(ExportConfig(model=str(run), method="energy", out=str(tmp_path / "d.onnx"), device="cpu"))
    assert json.loads(res.metadata["image_extensions"]) == list(IMAGE_EXTENSIONS)
    pics = tmp_path / "pics"
    pics.mkdir()
    for i, ext in enumerate(("gif", "tif", "TIFF", "ppm")):
        Image.fromarray(x[i]).save(pics / f"{i}.{ext}", format={"tif": "tiff", "TIFF": "tiff"}.get(ext, ext))
    (pics / ".hidden.png").write_bytes(b"not read")
    assert _deploy().main(res.path, str(pics)) == 0
    out, err = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in out.splitlines()] == [str(pics / n) for n in ("0.gif", "1.tif", "2.TIFF", "3.ppm")]
    rows = evaluate.score_images(ScoreConfig(paths=(str(pics),), model=str(run), method="energy", device="cpu"))
    assert [r.file for r in rows] == [ln.split("\t")[0] for ln in out.splitlines()] and err == ""
def _far_and_id_images(tmp_path):
    """8 backdrops test images and 8 far-OOD ones (uniform noise, blank frames, rendered text), 32 px PNGs."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(1)
    far = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    far += [np.full((32, 32, 3), v, np.uint8) for v in (0, 255, 128)]
    for words in ("invoice total", "error 404"):
        im = Image.new("RGB", (128, 128), (240, 240, 240))
        ImageDraw.Draw(im).text((4, 40), words, fill=(20, 20, 20), font=ImageFont.load_default(size=24))
        far.append(eval_transform(np.asarray(im), 32))
    x = np.concatenate([backdrops.generate("test")[0][:8].numpy(), np.stack(far)])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(x):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    return folder, np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_far_gate_agrees_with_lbfood_score(trained_run, tmp_path, monkeypatch, fmt):
    """On a trained run: the file's far_score is `lbfood score`'s (the tolerance of the scores above: the
    gate is a Mahalanobis distance), and its is_id needs both tests, as `score`'s verdict does."""
    monkeypatch.chdir(tmp_path)
    folder, nchw = _far_and_id_images(tmp_path)
    rows = evaluate.score_images(ScoreConfig(paths=(str(folder),), model=str(trained_run), device="cpu"))
    far, thr, far_thr = np.array([r.far_score for r in rows]), rows[0].threshold, rows[0].far_threshold
    assert [r.reason for r in rows[8:]] == ["far"] * 8  # every far-OOD image is stopped by the gate
    cfg = ExportConfig(model=str(trained_run), format=fmt, device="cpu", out=str(tmp_path / f"d{fmt}"))
    res = export(cfg)
    assert res.far_threshold == far_thr and float(res.metadata["far_threshold"]) == far_thr
    out = (_run_onnx if fmt == "onnx" else _run_ts)(res.path, nchw)
    assert len(out) == 4 and out[3].dtype == np.float32
    _, score, is_id, got = out
    err = np.abs(got - far)
    if fmt == "onnx":
        exact = exact_scores(cfg, nchw, "far_score")
        own = np.abs(far - exact).max()
        assert own <= 1e-5 + 4e-6 * np.abs(far).max(), own
        assert err.max() <= max(1e-4, 3 * own), (err.max(), own)
        assert np.abs(got - exact).max() <= max(1e-4, 2 * own)
    else:
        assert err.max() <= 1e-4, err.max()
    assert list(is_id) == list((score.astype(np.float64) >= thr) & (got.astype(np.float64) >= far_thr))
    clear = (np.abs(far - far_thr) > max(1e-4, err.max())) & (np.abs(np.array([r.score for r in rows]) - thr) > 1e-4)
    assert clear.sum() >= 14
    assert list(is_id[clear]) == [r.verdict == "ID" for r, c in zip(rows, clear, strict=True) if c]
    assert not is_id[8:].any()
