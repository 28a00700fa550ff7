"""`lbfood import` end to end (CliRunner, CPU, offline): torchvision and timm models with random convolutions
and a head fitted in closed form (so its accuracy is known), imported, fine-tuned with L_LFF, reported,
scored, explained, exported and swept; every bad input is one line, exit 2 and no file written."""

import json
from pathlib import Path

import fakedata
import numpy as np
import pytest
import torch
from cli_checks import clean, one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import runs

pytest.importorskip("timm")
runner = CliRunner()
CLASSES = ["ant", "bee", "cat", "dog"]
SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = ("--device", "cpu", "--workers", "0", "-q")
FT = ("--epochs", "1", "--batch-size", "8", "--lr", "0.01", *CPU)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """imagefolder with train/ and test/ holding the same 4 × 3 images (32 px PNGs): the test split's
    accuracy is the fitted head's training fit."""
    root = tmp_path_factory.mktemp("imgs")
    for split in ("train", "test"):
        images = fakedata.write_image_folder(root / split, CLASSES, n_per_class=3, size=(SIZE, SIZE))
    x = torch.tensor(np.stack([im for c in CLASSES for im in images[c]])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.arange(len(CLASSES)).repeat_interleave(3)
    return root, x, y


def fit_head(features, fc, x, y, k=len(CLASSES)) -> None:
    """Set the linear classifier `fc` by least squares on the pooled `features(x)`: 100 % accuracy on `x`."""
    with torch.no_grad():
        f = features(x).mean(dim=(2, 3))
        f1 = torch.cat([f, torch.ones(len(f), 1)], 1).double()
        w = torch.linalg.lstsq(f1, 10 * torch.nn.functional.one_hot(y, k).double(), driver="gelsd").solution
        fc.weight.copy_(w[:-1].T.float())
        fc.bias.copy_(w[-1].float())


@pytest.fixture(scope="module")
def r18(data, tmp_path_factory):
    """torchvision's ResNet-18, random convolutions, fitted head; saved with torch.save."""
    import torchvision

    _, x, y = data
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    body = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                               net.layer4)
    fit_head(body, net.fc, x, y)
    assert (net(x).argmax(1) == y).all()
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def resnet10t(data, tmp_path_factory):
    """timm's resnet10t, random convolutions, fitted head; saved as safetensors."""
    import timm
    from safetensors.torch import save_file

    _, x, y = data
    torch.manual_seed(1)
    net = timm.create_model("resnet10t", num_classes=4).eval()
    fit_head(net.forward_features, net.fc, x, y)
    assert (net(x).argmax(1) == y).all()
    path = tmp_path_factory.mktemp("w") / "resnet10t.safetensors"
    save_file(net.state_dict(), str(path))
    return net, path


def _imported(out, model, weights, root, *extra):
    r = invoke("import", model, "--weights", weights, "--data", f"imagefolder:{root}", "--input-size", SIZE,
               "--out", out, *CPU, *extra)
    clean(r)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("which", ["r18", "resnet10t"])
def test_import_keeps_the_logits_and_measures_accuracy(which, request, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, weights = request.getfixturevalue(which)
    root, x, _ = data
    source = "torchvision:resnet18" if which == "r18" else "timm:resnet10t"
    r = _imported(tmp_path / "imp", source, weights, root)
    assert "100.00% accuracy on 12" in r.output
    model, meta = runs.load_run(tmp_path / "imp")  # rebuilt from run.json + model.safetensors alone
    assert meta.kind == "imported" and meta.status == "done" and meta.arch == source
    assert meta.metrics["test_acc"] == 1.0 and meta.input_size == SIZE and meta.classes == CLASSES
    assert meta.mean == list(MEAN) and meta.source["head_rows"] == 4 and len(meta.source["sha256"]) == 64
    assert meta.threshold["method"] == "react"
    with torch.no_grad():
        assert (model(x) - net(x)).abs().max() <= 1e-5
        z = model.forward_features(x)
        assert z.ndim == 4 and torch.allclose(model.head(z.mean((2, 3))), model(x))
        assert len(model.forward_blocks(x)) == (8 if which == "r18" else 4)
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "imp").resolve()


def test_imported_run_finetunes_reports_scores_explains_and_exports(r18, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, _, _ = data
    _imported("imp", "torchvision:resnet18", r18[1], root)
    r = invoke("finetune", "--from", "imp", "--out", "lff", *FT)
    assert r.exit_code == 0, r.output
    meta = json.loads(Path("lff/run.json").read_text())
    assert meta["kind"] == "finetune" and meta["arch"] == "torchvision:resnet18" and meta["mean"] == list(MEAN)
    assert meta["config"]["lam"] == 1.0 and "lff" in json.loads(Path("lff/metrics.jsonl").read_text().splitlines()[0])
    r = invoke("report", "--model", "lff", "--compare", "imp", "--ood", f"folder:{root}/test/ant", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("score", root / "test" / "bee", "--model", "lff", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(row["verdict"] in ("ID", "OOD") for row in rows)
    r = invoke("explain", root / "test" / "cat", "--model", "imp", "--out", "pics", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(list(Path("pics").glob("*.png"))) == 3
    r = invoke("export", "--model", "imp", "--format", "torchscript", "--out", "imp.pt", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert Path("imp.pt").stat().st_size > 1e6
    r = invoke("sweep", "--from", "imp", "--out", "sw", "--mode", "grid", "--lambda", "1", "--epochs", "1",
               "--batch-size", "4", "--holdout", "0.34", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(Path("sw/sweep.json").read_text())
    assert [t["key"] for t in doc["trials"]] == ["control", "dpreset-muauto-l1-current"]
    assert runs.read(Path("sw") / doc["trials"][1]["run"]).arch == "torchvision:resnet18"


def test_new_head_convnext_then_finetune(data, tmp_path, monkeypatch):
    import timm

    monkeypatch.chdir(tmp_path)
    root, _, _ = data
    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_atto", num_classes=10).state_dict(), "cnx.pth")
    r = invoke("import", "timm:convnext_atto", "--weights", "cnx.pth", "--data", f"imagefolder:{root}", *CPU)
    one_error_line(r, "10 classes", "has 4", "--new-head")
    assert not Path("runs").exists()
    r = _imported("imp", "timm:convnext_atto", "cnx.pth", root, "--new-head")
    assert "LayerNorm" in r.output
    model, meta = runs.load_run("imp")
    assert meta.source["new_head"] and meta.source["head_rows"] == 10 and model.head.out_features == 4
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model(x), model.head(model.forward_features(x).mean((2, 3))))
    r = invoke("finetune", "--from", "imp", "--out", "ft", "--delta", "0.3", *FT)
    assert r.exit_code == 0, r.output
    assert runs.read("ft").status == "done" and runs.read("ft").config["lam"] == 1.0
    r = invoke("report", "--model", "ft", "--ood", f"folder:{root}/test/dog", "--output", "r.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(Path("r.json").read_text())
    r = invoke("score", root / "test" / "ant", "--model", "ft", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len([line for line in r.output.splitlines() if line.startswith("{")]) == 3
    r = invoke("explain", root / "test" / "ant", "--model", "ft", "--out", "pics", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(list(Path("pics").glob("*.png"))) == 3
    r = invoke("export", "--model", "ft", "--method", "featurenorm", "--format", "onnx", "--out", "ft.onnx",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert Path("ft.onnx").stat().st_size > 1e6


def test_bad_inputs_are_one_line_and_write_nothing(r18, data, tmp_path, monkeypatch):
    import timm
    import torchvision

    monkeypatch.chdir(tmp_path)
    root, _, _ = data
    net, weights = r18
    d = ("--data", f"imagefolder:{root}", "--input-size", SIZE, *CPU)
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), "r34.pth")
    one_error_line(invoke("import", "torchvision:resnet18", "--weights", "r34.pth", *d), "96 unexpected",
                   "layer1.2.conv1.weight")
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.1.bn2.")}
    torch.save({"state_dict": {**sd, "extra.weight": torch.ones(1)}}, "partial.pth")  # a training checkpoint
    one_error_line(invoke("import", "torchvision:resnet18", "--weights", "partial.pth", *d),
                   "5 missing (layer4.1.bn2.weight", "1 unexpected (extra.weight)")
    torch.save(net, "whole.pth")
    one_error_line(invoke("import", "torchvision:resnet18", "--weights", "whole.pth", *d), "code execution",
                   "state_dict")
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=4).state_dict(), "vit.pth")
    one_error_line(invoke("import", "timm:vit_tiny_patch16_224", "--weights", "vit.pth", *d), "3-D", "tokens")
    one_error_line(invoke("import", "timm:resnet10x", "--weights", weights, *d), "unknown timm model",
                   "resnet10t")
    one_error_line(invoke("import", "torchvision:resnt18", "--weights", weights, *d), "resnet18")
    monkeypatch.setenv("LBFOOD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    one_error_line(invoke("import", "torchvision:resnet18:IMAGENET1K_V1", *d), "resnet18-f37072fd.pth",
                   str(tmp_path / "th"))
    one_error_line(invoke("import", "timm:resnet10t", *d), "not cached", "timm/resnet10t")
    permuted = {k: v.roll(1, 0) if k.startswith("fc.") else v for k, v in net.state_dict().items()}
    torch.save(permuted, "permuted.pth")
    one_error_line(invoke("import", "torchvision:resnet18", "--weights", "permuted.pth", *d), "0.0%",
                   "chance is 25.0%", "class order")
    assert not Path("runs").exists() and not list(tmp_path.glob("*imported*"))


def test_init_for_pretrain_and_finetune(r18, resnet10t, data, tmp_path, monkeypatch):
    """`--init FILE|torchvision:NAME|timm:NAME` on any architecture: pretrain a timm model from local weights,
    fine-tune a run from other weights of its architecture; mismatches and offline sources are one line."""
    monkeypatch.chdir(tmp_path)
    root, x, _ = data
    r = invoke("pretrain", "--arch", "timm:resnet10t", "--init", resnet10t[1], "--data", f"imagefolder:{root}",
               "--out", "pre", *FT)
    assert r.exit_code == 0, r.output
    meta = runs.read("pre")
    assert meta.arch == "timm:resnet10t" and meta.config["init"] == str(resnet10t[1]) and meta.input_size == 224
    _imported("imp", "torchvision:resnet18", r18[1], root, "--new-head")
    r = invoke("finetune", "--from", "imp", "--init", r18[1], "--out", "ft", "--lambda", "0", "--lr", "1e-9",
               *FT[:4], *FT[6:])
    assert r.exit_code == 0, r.output
    model, _ = runs.load_run("ft")  # the --init weights (lr 1e-9: unchanged but for BN statistics)
    assert torch.allclose(model.head.weight, r18[0].fc.weight, atol=1e-6)
    d = ("--data", f"imagefolder:{root}", "--out", "bad", *FT)
    one_error_line(invoke("pretrain", "--arch", "resnet18", "--init", r18[1], *d), "--init", "missing")
    monkeypatch.setenv("LBFOOD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    one_error_line(invoke("pretrain", "--arch", "resnet50_imagenet", "--init", "torchvision:resnet50", *d),
                   "resnet50-", str(tmp_path / "th" / "hub" / "checkpoints"))
    one_error_line(invoke("pretrain", "--arch", "timm:resnet10t", "--init", "timm:resnet10t", *d), "not cached")
    assert not Path("bad").exists()
