"""The fine-tuning objectives as loss hooks (L = CE + λ·term, paper Eq. 7), and the constants each
resolves from the parent model before the first step. Names and one-line meanings: catalog.OBJECTIVES.

    lff        the paper's L_LFF (Eqs. 4–6), μ a number or measured (`--mu auto`)
    lff-rel    L_LFF with μ_i = r × the image's mean foreground norm (`--mu relR`, default rel0.5)
    bg-energy  Liu et al.'s energy-bounded loss, background locations as outliers; m_in, m_out measured
    bg-head    BCE of a linear background-vs-ID head `bg_head` on the feature space (scorer `bghead`)

Every hook takes the mean of its terms over the whole global batch under data parallelism: the count
is summed over ranks (an all-reduce of one number, no host sync) and rank r returns W·S_r / G for its
own sum S_r (W processes, G the global count); DDP averages gradients over ranks, so the step follows
∇(Σ_r S_r / G), the gradient of the global-batch mean, exactly as one process on the whole batch. The
logged `mean_*` values are divided by W again when the ranks' values are summed (loop._read_metrics).
"""

from __future__ import annotations

from typing import Any

import torch

from lbfood.engine import runs
from lbfood.engine.catalog import OBJECTIVES
from lbfood.engine.config import FinetuneConfig, has_bg_head, relative_mu
from lbfood.engine.distributed import DistInfo
from lbfood.engine.errors import ConfigError
from lbfood.engine.events import Note
from lbfood.engine.training import losses

# bg-energy's automatic margins: these quantiles of the parent's free energies on the probe's training
# batches. The medians make each squared hinge active on half of its set at the first step (neither zero
# nor everywhere). Liu et al. chose theirs (m_in −25, m_out −7 for their CIFAR-10 WRN) by a search on
# validation data; those numbers belong to their network and have no portable value.
M_IN_QUANTILE = 0.5  # of the ID images' energies E(f(z̄))
M_OUT_QUANTILE = 0.5  # of the background locations' energies E(W z_j + b)
REL_DEFAULT = "rel0.5"  # lff-rel without --mu: background norms below half the object's mean norm


def global_count(local: torch.Tensor, dist: DistInfo) -> torch.Tensor | None:
    """G / W for a local count (G summed over ranks and clamped to ≥ 1 first: clamping G / W itself
    would be wrong for 0 < G < W); None for one process (each loss takes its own local count)."""
    if not dist.enabled:
        return None
    count = local.float()
    torch.distributed.all_reduce(count)
    return count.clamp_min(1) / dist.world


class _Hook:
    """What every objective shares: the background mask of Eq. 5, from the current model's head or a
    frozen copy of the parent (`--mask-from pretrained`), and the weight λ."""

    def __init__(self, model: torch.nn.Module, delta: float, lam: float, frozen: torch.nn.Module | None = None,
                 dist: DistInfo | None = None):
        self.model, self.delta, self.lam, self.frozen = model, delta, lam, frozen
        self.dist = dist or DistInfo()

    def mask(self, x: torch.Tensor, y: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            with torch.no_grad():
                return losses.background_mask(self.frozen.forward_features(x), self.frozen.head, y, self.delta)
        return losses.background_mask(fmap, runs.unwrap(self.model).head, y, self.delta)

    @staticmethod
    def _share(sums: dict[str, float]) -> float:
        return sums["bg"] / max(sums["loc"], 1)


class LFFHook(_Hook):
    """L_LFF (Eq. 6): returns λ·L_LFF and the running statistics shown while training."""

    def __init__(self, model: torch.nn.Module, delta: float, mu: float, lam: float,
                 frozen: torch.nn.Module | None = None, dist: DistInfo | None = None):
        super().__init__(model, delta, lam, frozen, dist)
        self.mu = mu

    def __call__(self, x, y, logits, fmap):
        mask = self.mask(x, y, fmap)
        count = global_count(mask.sum(), self.dist)
        loss, norms = losses.lff_from_mask(fmap, mask, self.mu, count)
        m = mask.float()
        stats = {"mean_lff": loss.detach(), "bg": m.sum(), "loc": torch.tensor(float(m.numel()), device=m.device),
                 "bg_norm": (norms * m).sum(), "fg_norm": (norms * (1 - m)).sum()}
        return self.lam * loss, stats

    @staticmethod
    def summarize(sums: dict[str, float], steps: int) -> dict[str, float]:
        bg, loc = sums["bg"], sums["loc"]
        return {"lff": sums["mean_lff"] / max(steps, 1), "bg_share": bg / max(loc, 1),
                "bg_norm": sums["bg_norm"] / max(bg, 1), "fg_norm": sums["fg_norm"] / max(loc - bg, 1)}


class RelLFFHook(LFFHook):
    """L_LFF with the relative margin μ_i = r · sg(mean foreground norm of image i) (losses.rel_lff_from_mask)."""

    def __call__(self, x, y, logits, fmap):
        mask = self.mask(x, y, fmap)
        count = global_count(losses.rel_mask(mask).sum(), self.dist)
        loss, norms = losses.rel_lff_from_mask(fmap, mask, self.mu, count)
        m = mask.float()
        stats = {"mean_lff": loss.detach(), "bg": m.sum(), "loc": torch.tensor(float(m.numel()), device=m.device),
                 "bg_norm": (norms * m).sum(), "fg_norm": (norms * (1 - m)).sum()}
        return self.lam * loss, stats


class BgEnergyHook(_Hook):
    """Liu et al.'s energy-bounded loss with background locations as outliers (losses.energy_bounded)."""

    def __init__(self, model: torch.nn.Module, delta: float, m_in: float, m_out: float, lam: float,
                 frozen: torch.nn.Module | None = None, dist: DistInfo | None = None):
        super().__init__(model, delta, lam, frozen, dist)
        self.m_in, self.m_out = m_in, m_out

    def __call__(self, x, y, logits, fmap):
        mask = self.mask(x, y, fmap)
        n = torch.tensor(float(len(y)), device=fmap.device)
        loc_logits = losses.location_logits(fmap, runs.unwrap(self.model).head)
        loss, e_in, e_loc = losses.energy_bounded(logits, loc_logits, mask, self.m_in, self.m_out,
                                                  global_count(n, self.dist), global_count(mask.sum(), self.dist))
        m = mask.float()
        stats = {"mean_energy_loss": loss.detach(), "bg": m.sum(), "loc": torch.tensor(float(m.numel()), device=m.device),
                 "n": n, "e_id": e_in.sum(), "e_bg": (e_loc * m).sum()}
        return self.lam * loss, stats

    @staticmethod
    def summarize(sums: dict[str, float], steps: int) -> dict[str, float]:
        return {"energy_loss": sums["mean_energy_loss"] / max(steps, 1), "bg_share": _Hook._share(sums),
                "e_id": sums["e_id"] / max(sums["n"], 1), "e_bg": sums["e_bg"] / max(sums["bg"], 1)}


class BgHeadHook(_Hook):
    """BCE of the model's `bg_head`: pooled features ID, background locations OOD (losses.bg_head_bce)."""

    def __call__(self, x, y, logits, fmap):
        mask = self.mask(x, y, fmap)
        n = torch.tensor(float(len(y)), device=fmap.device)
        loss, g_in, g_loc = losses.bg_head_bce(fmap, runs.unwrap(self.model).bg_head, mask,
                                               global_count(n, self.dist), global_count(mask.sum(), self.dist))
        m = mask.float()
        stats = {"mean_bce": loss.detach(), "bg": m.sum(), "loc": torch.tensor(float(m.numel()), device=m.device),
                 "n": n, "p_id": torch.sigmoid(g_in).sum(), "p_bg": (torch.sigmoid(g_loc) * m).sum()}
        return self.lam * loss, stats

    @staticmethod
    def summarize(sums: dict[str, float], steps: int) -> dict[str, float]:
        return {"bce": sums["mean_bce"] / max(steps, 1), "bg_share": _Hook._share(sums),
                "p_id": sums["p_id"] / max(sums["n"], 1), "p_bg": sums["p_bg"] / max(sums["bg"], 1)}


# ---- from the config and the parent ---------------------------------------------------------------


def defaults(cfg: FinetuneConfig) -> FinetuneConfig:
    """Before the preset fills the rest: lff-rel's default margin and an objective's own default λ
    (bg-energy: Liu et al.'s 0.1)."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES.names())}, got {cfg.objective!r}")
    if cfg.objective == "lff-rel" and cfg.mu is None:
        cfg = cfg.replace(mu=REL_DEFAULT)
    lam = OBJECTIVES.entry(cfg.objective).meta.get("lam")
    if cfg.lam is None and lam is not None:
        cfg = cfg.replace(lam=lam)
    return cfg


def uses_mu(objective: str) -> bool:
    return objective in ("lff", "lff-rel")


def prepare_model(cfg: FinetuneConfig, model: torch.nn.Module) -> None:
    """bg-head (λ > 0) trains a `bg_head` (kept if the parent has one, else new); every other run drops a
    parent's, so that the run's weights match its run.json (runs.build_from_meta, config.has_bg_head)."""
    from lbfood.engine import models

    if has_bg_head(cfg.to_dict()):
        if getattr(model, "bg_head", None) is None:
            models.add_bg_head(model)
    elif getattr(model, "bg_head", None) is not None:
        del model.bg_head


def energy_margins(cfg: FinetuneConfig, stats: dict[str, Any]) -> tuple[FinetuneConfig, list[Note]]:
    """bg-energy: m_in and m_out ('auto': the parent's energy quantiles from the probe), with a note."""
    e_in, e_bg = stats["e_in"], stats["e_bg"]
    if cfg.m_out == "auto" and not len(e_bg):
        raise ConfigError(f"--m-out auto: no background location at δ = {cfg.delta:g} in the probe batches, so "
                          "there is no energy to measure m_out from; try a larger --delta or a number for --m-out")
    fill = {}
    if cfg.m_in == "auto":
        fill["m_in"] = round(float(torch.quantile(e_in, M_IN_QUANTILE)), 4)
    if cfg.m_out == "auto":
        fill["m_out"] = round(float(torch.quantile(e_bg, M_OUT_QUANTILE)), 4)
    cfg = cfg.replace(**fill)
    how = {"m_in": f"the {M_IN_QUANTILE:g} quantile of the parent's ID image energies",
           "m_out": f"the {M_OUT_QUANTILE:g} quantile of its background-location energies"}
    text = ", ".join(f"{k} = {getattr(cfg, k):g}" + (f" (auto: {how[k]})" if k in fill else "") for k in how)
    notes = [Note(f"bg-energy margins: {text}", data={"m_in": cfg.m_in, "m_out": cfg.m_out})]
    if cfg.m_out <= cfg.m_in:
        notes.append(Note(f"m_out = {cfg.m_out:g} is not above m_in = {cfg.m_in:g}: the two hinges pull the same "
                          "energies both ways; pass --m-in/--m-out", "warning"))
    return cfg, notes


def make_hook(cfg: FinetuneConfig, model: torch.nn.Module, frozen: torch.nn.Module | None, dist: DistInfo):
    """The resolved config's hook (None for the λ = 0 control)."""
    if cfg.lam <= 0:
        return None
    cls = OBJECTIVES.load(cfg.objective)
    if cfg.objective == "lff":
        return cls(model, cfg.delta, float(cfg.mu), cfg.lam, frozen=frozen, dist=dist)
    if cfg.objective == "lff-rel":
        return cls(model, cfg.delta, relative_mu(cfg.mu), cfg.lam, frozen=frozen, dist=dist)
    if cfg.objective == "bg-energy":
        return cls(model, cfg.delta, float(cfg.m_in), float(cfg.m_out), cfg.lam, frozen=frozen, dist=dist)
    return cls(model, cfg.delta, cfg.lam, frozen=frozen, dist=dist)
