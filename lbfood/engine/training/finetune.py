"""Fine-tuning with L = CE + λ·L_LFF (paper §IV-B, Eq. 7), through the shared training loop.

The recipe comes from the paper's presets (§V-A, lbfood/engine/presets.py); every field can be
overridden flag by flag.

δ = 1/K for data without a paper preset generalises the paper's choices (0.1 for 10 classes, 0.01 for
100): a location is background when it gives the true class less than chance probability. μ has no
portable value (feature norms depend on depth, width and training), so it is measured: `--mu auto`
sets μ to the `mu_quantile` (default 0.5) quantile of the parent model's background-location norms.

Where the mask comes from: by default the model being fine-tuned (its current head and features, the
reading of Fig. 4 where one network both classifies and selects); `--mask-from pretrained` uses a
frozen copy of the starting model, so the set S of Eq. 5 is fixed as in the paper's "extract, then
fine-tune" wording (§IV-A). The two differ once the head moves; both are available for comparison.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from lbfood.engine import runs, weights
from lbfood.engine.config import FinetuneConfig, relative_mu
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.loaders import Augment, make_loader
from lbfood.engine.distributed import DistInfo, rank_device
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.events import Note
from lbfood.engine.presets import preset_values
from lbfood.engine.runtime import make_runtime, seed_everything
from lbfood.engine.training import losses, objectives
from lbfood.engine.training.objectives import LFFHook
from lbfood.engine.training.setup import Session, check_parallel, load_id_data, new_meta, resume_changes

__all__ = ["LFFHook", "parse_margin", "parse_mu", "prepare_finetune", "probe"]


def parse_mu(text: str | None) -> float | str | None:
    """`--mu` text: a number, 'auto', 'relX' (lff-rel), or None (preset)."""
    if text is None or text == "auto" or relative_mu(text) is not None:
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--mu takes a number >= 0, 'auto' or relX (X > 0, with --objective lff-rel), "
                          f"got {text!r}") from None


def parse_margin(flag: str, text: str) -> float | str:
    """`--m-in`/`--m-out` text: a number or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} takes a number or 'auto', got {text!r}") from None


@torch.inference_mode()
def probe(model, loader, delta: float, batches: int, rt, energies: bool = False) -> dict[str, Any]:
    """Background share and norm quantiles (10/50/90 %) of the parent model on a few ID training batches;
    with `energies`, also the free energies of the images ("e_in") and background locations ("e_bg")."""
    model.eval()
    bg_norms, fg_norms, total = [], [], 0
    e_in, e_bg = [], []
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        with rt.autocast():
            z = model.forward_features(x)
        z = z.float()
        mask = losses.background_mask(z, model.head, y, delta)
        n = z.norm(dim=1)
        bg_norms.append(n[mask])
        fg_norms.append(n[~mask])
        total += mask.numel()
        if energies:
            e_in.append(-torch.logsumexp(model.head(z.mean(dim=(2, 3))).float(), dim=1))
            e_bg.append(-torch.logsumexp(losses.location_logits(z, model.head).float(), dim=1)[mask])
    bg, fg = torch.cat(bg_norms).cpu(), torch.cat(fg_norms).cpu()
    q = torch.tensor([0.1, 0.5, 0.9])
    out = {"bg_share": len(bg) / max(total, 1), "locations": total,
           "bg_q": torch.quantile(bg, q).tolist() if len(bg) else [],
           "fg_q": torch.quantile(fg, q).tolist() if len(fg) else [],
           "bg_norms": bg}
    if energies:
        out.update(e_in=torch.cat(e_in).cpu(), e_bg=torch.cat(e_bg).cpu())
    return out


def prepare_finetune(cfg: FinetuneConfig, *, resume: bool = False, dist: DistInfo | None = None) -> Session:
    """Resolve the parent run, presets, μ and the objective's hook; raises LbfoodError before writing anything.

    `None` fields of `cfg` are filled by `cfg.resolve` (the parent's data, the dataset's preset).
    """
    dist = dist or DistInfo()
    cfg, parent_model, parent, parent_note = _resolve(cfg, resume)
    size = int(parent.input_size)
    rt = make_runtime(rank_device(cfg.device, dist), cfg.precision)
    check_parallel(cfg, rt, dist)
    seed_everything(cfg.seed)
    spec, train_set, test_set, notes = load_id_data(cfg, size, dist)
    # The parent's normalisation (an imported model's is its weights', not the dataset's default).
    spec = dataclasses.replace(spec, mean=tuple(parent.mean), std=tuple(parent.std))
    if list(train_set.classes) != list(parent.classes):
        raise ConfigError(f"{cfg.data} has classes {list(train_set.classes)[:5]}… but the parent run was trained on "
                          f"{parent.classes[:5]}…; fine-tune on the parent's data")
    if parent_note:  # a note, not a refusal: an early epoch is a fair start, and the child records its parent
        notes = [*notes, Note(f"parent {parent_note}", "warning")]

    aug = Augment(crop_pad=4, flip=True, jitter=cfg.jitter)
    objectives.prepare_model(cfg, parent_model)
    model = rt.prepare(parent_model)
    stats = measure_parent(cfg, model, train_set, spec, size, aug, rt)
    cfg, mu_auto = resolve_mu(cfg, stats)
    notes = notes + probe_notes(cfg, stats, mu_auto)
    probe_rec = {"bg_share": stats["bg_share"], "bg_quantiles": stats["bg_q"], "fg_quantiles": stats["fg_q"]}
    if cfg.objective == "bg-energy" and cfg.lam > 0:
        cfg, more = objectives.energy_margins(cfg, stats["energies"])
        notes += more
        q = torch.tensor([0.1, 0.5, 0.9])
        probe_rec.update({f"{k}_quantiles": torch.quantile(v, q).tolist() if len(v) else []
                          for k, v in stats["energies"].items()})

    frozen = None
    if cfg.mask_from == "pretrained":
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    hook = objectives.make_hook(cfg, model, frozen, dist)
    suffix = ("lff" if cfg.objective == "lff" else cfg.objective) if cfg.lam > 0 else "ce"
    out = runs.output_dir(cfg.out, resume=resume, data=cfg.data, arch=cfg.arch, suffix=suffix)
    meta = new_meta("finetune", cfg, spec, train_set.classes, size).replace(
        parent=str(parent.run_dir), probe=probe_rec, mu_auto=mu_auto)
    return Session(cfg, "finetune", rt, spec, train_set, test_set, model, out, meta, resume=resume, hook=hook,
                   aug=aug, dist=dist, notes=notes)


def _resolve(cfg: FinetuneConfig, resume: bool):
    """(the resolved and checked config, the parent's model and run.json, a note if it is unfinished): a
    resumed run's recorded settings, the objective's defaults, the parent's data and architecture and the
    dataset's preset."""
    if resume:
        old = runs.read(runs.resume_target(cfg.out))
        if old.kind != "finetune":
            raise RunError(f"{old.run_dir} is a {old.kind} run; resume it with `lbfood {old.kind} --resume`")
        cfg = FinetuneConfig.from_dict({**old.config, **resume_changes(cfg, old.config), "out": str(old.run_dir)})
    cfg = objectives.defaults(cfg)
    parent_model, parent = runs.load_run(cfg.parent)
    if cfg.init and not resume:  # the parent gives architecture, classes and data; --init the weights
        weights.init_model(parent_model, weights.for_init(cfg.init), f"--init {cfg.init}")
    parent_note = runs.unfinished(parent, uses="fine-tuning starts from")  # killed, stopped or still training
    if not hasattr(parent_model, "forward_features") or not isinstance(parent_model.head, torch.nn.Linear):
        raise RunError(f"{parent.run_dir}: architecture {parent.arch} has no feature map and linear head")
    # Data and architecture come from the parent unless given; the recipe from the dataset's preset.
    from_parent = {k: parent.config[k] for k in ("data", "data_root", "val_split", "classes_file")
                   if k in parent.config}
    from_parent.update(arch=parent.arch, width=float(parent.width))
    spec = get_dataset(cfg.data if cfg.data is not None else parent.data)
    cfg = cfg.resolve(from_parent, preset_values(spec.preset, int(parent.input_size), len(parent.classes)))
    cfg.check()
    return cfg, parent_model, parent, parent_note


def measure_parent(cfg: FinetuneConfig, model, train_set, spec, size: int, aug: Augment, rt) -> dict:
    """The parent before the first step, on `cfg.probe_batches` training batches: its background share at δ,
    the norm quantiles of background and foreground locations ("bg_q", "fg_q"), the background norms
    themselves and, for bg-energy, the image and background-location energies ("energies")."""
    loader = make_loader(train_set, batch_size=cfg.batch_size, mean=spec.mean, std=spec.std, image_size=size,
                         train=True, aug=aug, device=rt.device, seed=cfg.seed + 1, channels_last=rt.channels_last,
                         workers=0)
    stats = probe(model, loader, cfg.delta, cfg.probe_batches, rt, energies=cfg.objective == "bg-energy")
    stats["energies"] = {k: stats.pop(k) for k in ("e_in", "e_bg") if k in stats}
    return stats


def resolve_mu(cfg: FinetuneConfig, stats: dict) -> tuple[FinetuneConfig, bool]:
    """`--mu auto`: μ (Eq. 6) is the `mu_quantile` quantile of the parent's background norms; (config, auto?).
    At λ = 0 (the CE-only control) μ plays no part: with no background location it stays "auto"."""
    mu_auto = cfg.mu == "auto" and objectives.uses_mu(cfg.objective)
    if mu_auto and len(stats["bg_norms"]):
        cfg = cfg.replace(mu=round(float(torch.quantile(stats["bg_norms"], cfg.mu_quantile)), 4))
    elif mu_auto and cfg.lam > 0:
        raise ConfigError(f"--mu auto: no background location at δ = {cfg.delta:g}: 0 of {stats['locations']} "
                          f"locations in {cfg.probe_batches} training batch(es) have p_j(true class) < δ, so "
                          "there is no norm to measure μ from; try a larger --delta (e.g. "
                          f"{min(max(2 * cfg.delta, 0.01), 0.5):g}), more --probe-batches, or a number for --mu")
    return cfg, mu_auto


def probe_notes(cfg: FinetuneConfig, stats: dict, mu_auto: bool) -> list[Note]:
    """What the user reads before the first step: the parent's background share and norms, μ, and warnings."""
    bgq, fgq = stats["bg_q"], stats["fg_q"]
    fmt = lambda q: "/".join(f"{v:.2f}" for v in q) if q else "n/a"  # noqa: E731
    if cfg.lam == 0:
        mu_text = "μ unused (λ = 0)"
    elif not objectives.uses_mu(cfg.objective):
        mu_text = f"objective {cfg.objective} (μ unused)"
    elif isinstance(cfg.mu, str):
        mu_text = f"μ = {relative_mu(cfg.mu):g} × the image's mean foreground norm ({cfg.objective})"
    else:
        mu_text = f"μ = {cfg.mu:g}" + (f" (auto: the {cfg.mu_quantile:g} quantile of background norms)"
                                        if mu_auto else "")
    notes = [Note(
        f"parent at δ = {cfg.delta:g}: {stats['bg_share']:.1%} of {stats['locations']} locations are background; "
        f"‖z_j‖ 10/50/90 %: background {fmt(bgq)}, foreground {fmt(fgq)}; " + mu_text,
        data={"bg_share": stats["bg_share"], "bg_quantiles": bgq, "fg_quantiles": fgq, "mu": cfg.mu})]
    if bgq and cfg.lam > 0 and cfg.objective == "lff" and cfg.mu < bgq[0]:
        notes.append(Note(
            f"μ = {cfg.mu:g} is below 90 % of the parent's background norms (10 % quantile {bgq[0]:.2f}): L_LFF "
            "will dominate the first steps and can collapse accuracy; the paper's μ belongs to its backbones. "
            "Consider --mu auto.", "warning"))
    if stats["bg_share"] == 0:
        notes.append(Note(f"no background location at δ = {cfg.delta:g}: the {cfg.objective} background term is "
                          "0 until some appear; consider a larger --delta", "warning"))
    return notes
