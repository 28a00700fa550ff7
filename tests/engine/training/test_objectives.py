"""The fine-tuning objectives (issue 23) as loss hooks and runs: each lowers its own term, trains a run whose
run.json records the objective and every resolved constant, resumes exactly, and reloads."""

import json

import pytest
import torch

from lbfood.engine import models, runs
from lbfood.engine.config import FinetuneConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.events import EpochEnd
from lbfood.engine.training import loop as train
from lbfood.engine.training import objectives
from lbfood.engine.training.finetune import prepare_finetune

NEW = ("lff-rel", "bg-energy", "bg-head")


def _hook(name, m):
    if name == "lff-rel":
        return objectives.RelLFFHook(m, 0.25, 0.5, 1.0)
    if name == "bg-energy":
        return objectives.BgEnergyHook(m, 0.25, -2.0, 0.0, 1.0)
    return objectives.BgHeadHook(m, 0.25, 1.0)


@pytest.mark.parametrize("name", NEW)
def test_a_few_steps_lower_the_objectives_term(name):
    torch.manual_seed(0)
    m = models.build("resnet18", num_classes=4, width=0.125, bg_head=name == "bg-head").eval()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    hook = _hook(name, m)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)

    def term():
        logits, z = m(x, with_features=True)
        return hook(x, y, logits, z)[0]

    before = term().item()
    for _ in range(5):
        loss = term()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert term().item() < before


def test_defaults_and_refusals():
    cfg = objectives.defaults(FinetuneConfig(objective="lff-rel"))
    assert (cfg.mu, cfg.lam) == ("rel0.5", None)  # λ: the dataset preset's
    assert objectives.defaults(FinetuneConfig(objective="bg-energy")).lam == 0.1  # Liu et al.'s weight
    assert objectives.defaults(FinetuneConfig(objective="bg-energy", lam=2.0)).lam == 2.0
    with pytest.raises(ConfigError, match="objective"):
        objectives.defaults(FinetuneConfig(objective="oe"))
    base = dict(delta=0.1, lam=1.0, epochs=1, lr=0.1, milestones=(), momentum=0.9, weight_decay=0.0, wd_on_bn=True,
                jitter=0.0, schedule="multistep", gamma=0.1, warmup_epochs=0, data="backdrops", val_split=0.0,
                arch="resnet18", width=0.125)
    with pytest.raises(ConfigError, match="relative margin"):
        FinetuneConfig(**base, mu="rel0.5").check()  # lff with a relative margin
    with pytest.raises(ConfigError, match="lff-rel takes"):
        FinetuneConfig(**base, mu=1.0, objective="lff-rel").check()
    with pytest.raises(ConfigError, match="--m-in"):
        FinetuneConfig(**base, mu=1.0, objective="bg-energy", m_in=float("nan")).check()
    FinetuneConfig(**base, mu="rel2", objective="lff-rel").check()


SMALL = dict(batch_size=64, limit=192, device="cpu", workers=0, log_every=1, probe_batches=1, epochs=2,
             milestones=(), delta=0.5)


@pytest.fixture
def parent(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path)


def _fit(cfg, resume=False):
    return list(train.fit(prepare_finetune(cfg, resume=resume)))


@pytest.mark.parametrize("name", NEW)
def test_objective_trains_records_its_constants_resumes_exactly_and_reloads(parent, tmp_path, name):
    cfg = FinetuneConfig(parent=str(parent), objective=name, **SMALL)
    _fit(cfg.replace(out=str(tmp_path / "straight")))
    meta = json.loads((tmp_path / "straight" / "run.json").read_text())
    c = meta["config"]
    assert c["objective"] == name and c["delta"] == 0.5
    if name == "lff-rel":
        assert (c["mu"], c["lam"]) == ("rel0.5", 1.0)
    if name == "bg-energy":  # the parent's median energies, numbers in run.json
        assert c["lam"] == 0.1 and isinstance(c["m_in"], float) and c["m_out"] > c["m_in"]
        assert len(meta["probe"]["e_in_quantiles"]) == 3 and meta["probe"]["e_in_quantiles"][1] == pytest.approx(
            c["m_in"], abs=1e-3)
    weights = runs.load_tensors(tmp_path / "straight" / "model.safetensors")
    assert ("bg_head.weight" in weights) == (name == "bg-head")
    if name == "bg-head":
        assert weights["bg_head.weight"].abs().sum() > 0  # trained from its zero start
    model, _ = runs.load_run(tmp_path / "straight")  # rebuilt from run.json, head included
    assert (getattr(model, "bg_head", None) is not None) == (name == "bg-head")

    # Ctrl-C after the first epoch, then --resume: the same weights as the straight run.
    gen = train.fit(prepare_finetune(cfg.replace(out=str(tmp_path / "cut"))))
    for ev in gen:
        if isinstance(ev, EpochEnd):
            gen.throw(KeyboardInterrupt)
            break
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["epochs_done"] == 1
    _fit(FinetuneConfig(parent=str(parent), out=str(tmp_path / "cut"), device="cpu", workers=0), resume=True)
    a, b = weights, runs.load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_bg_head_parent_fine_tuned_with_lff_drops_its_head(parent, tmp_path):
    _fit(FinetuneConfig(parent=str(parent), objective="bg-head", out=str(tmp_path / "h"), **{**SMALL, "epochs": 1}))
    _fit(FinetuneConfig(parent=str(tmp_path / "h"), mu=1.0, out=str(tmp_path / "l"), **{**SMALL, "epochs": 1}))
    assert not any(k.startswith("bg_head") for k in runs.load_tensors(tmp_path / "l" / "model.safetensors"))
    runs.load_run(tmp_path / "l")
