"""PNG pictures of `lbfood report --plots` and `lbfood explain` (matplotlib, Agg backend: no display).

The engine computes the arrays (`lbfood.engine.plotdata`, `lbfood.engine.explain`); this module only
draws them: 150 dpi, titles, axis labels, legends, the Okabe–Ito colour-blind-safe palette, and
figure sizes that open well on a laptop. Files are written atomically; every drawing function returns
the `Picture` it wrote (its pixel size is figure size × dpi: no tight bounding box).
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbfood.engine import outputs

DPI = 150
# Okabe & Ito (2008), "Color Universal Design": distinguishable with any colour-vision deficiency.
ID_COLOUR = "#0072B2"  # blue
OOD_COLOURS = ("#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
HEAT_CMAP = "inferno"  # perceptually uniform, readable in grey scale
MASK_COLOUR, LABEL_MASK_COLOUR = "#56B4E9", "#009E73"  # sky blue, bluish green: neither is in inferno


@dataclass(frozen=True)
class Picture:
    path: Path
    width: int  # pixels
    height: int


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, a folder lbfood must not write pictures into (engine/outputs.py)."""
    return outputs.check_dir(path, option)


def _figure(width_in: float, height_in: float):
    # A bare Figure, not pyplot: no global state and no display; PNGs are drawn by the Agg canvas
    # whatever backend a notebook has selected.
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Picture:
    from lbfood.engine.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    w, h = fig.get_size_inches()
    return Picture(path, int(round(w * DPI)), int(round(h * DPI)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _pct(v: float) -> str:
    return f"{100.0 * v:.1f} %"


def _grid(n: int, per_row: int = 3) -> tuple[int, int]:
    cols = min(n, per_row)
    return (n + cols - 1) // cols, cols


# ---- report ---------------------------------------------------------------------------------------


def score_histograms(h: Any, path: Path) -> Picture:
    """ID vs each OOD set's scores (one panel per OOD set), the calibrated threshold as a line."""
    names = list(h.ood_counts)
    rows, cols = _grid(len(names))
    fig = _figure(4.0 * cols, 3.0 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    conv = "ID positive" if h.convention == "paper" else "OOD positive"
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        o = names[i]
        ax.stairs(h.id_counts, h.edges, fill=True, color=ID_COLOUR, alpha=0.55, label=f"ID {h.id_data}")
        ax.stairs(h.ood_counts[o], h.edges, fill=True, color=OOD_COLOURS[i % len(OOD_COLOURS)], alpha=0.55,
                  label=f"OOD {o}")
        if h.threshold is not None:
            ax.axvline(h.threshold, color="black", linestyle="--", linewidth=1.2, label=f"γ = {h.threshold:.3g}")
        m = h.summary[o]
        ax.set_title(f"{o}: FPR95 {_pct(m['fpr95'])}, AUROC {_pct(m['auroc'])}", fontsize=10)
        ax.set_xlabel(f"{h.method} score (higher = more ID)")
        ax.set_ylabel("images per bin")
        ax.legend(fontsize=8)
    fig.suptitle(f"{h.run}: {h.method} scores, ID vs OOD (FPR95 {conv}; dashed: calibrated threshold γ)"
                 if h.threshold is not None else f"{h.run}: {h.method} scores, ID vs OOD (FPR95 {conv}; "
                 "no calibrated threshold for this method)", fontsize=11)
    return _save(fig, path)


def roc_curves(curves: Sequence[Any], path: Path) -> Picture:
    """One run and method: the ROC curve of each OOD set in one axes, the 95 %-TPR point marked."""
    fig = _figure(5.2, 4.8)
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle=":", label="chance")
    for i, c in enumerate(curves):
        colour = OOD_COLOURS[i % len(OOD_COLOURS)]
        ax.plot(100 * c.fpr, 100 * c.tpr, color=colour, linewidth=1.6,
                label=f"{c.ood} (AUROC {_pct(c.auroc)}, FPR95 {_pct(c.point[0])})")
        ax.plot(100 * c.point[0], 100 * c.point[1], "o", color=colour, markersize=6, markeredgecolor="black")
    ax.axhline(95, color="black", linewidth=0.6, linestyle="--")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_xlabel("FPR: OOD images accepted as ID (%)")
    ax.set_ylabel("TPR: ID images accepted (%)")
    ax.legend(fontsize=7.5, loc="lower right")
    first = curves[0]
    ax.set_title(f"{first.run}: ROC of {first.method} (ID positive)\n● threshold keeping 95 % of ID images",
                 fontsize=10)
    return _save(fig, path)


def norm_distributions(n: Any, path: Path) -> Picture:
    """The paper's Fig. 5: ‖GAP(z)‖₂ of ID vs each OOD set (rows), runs side by side (columns), on
    shared axes; bars are shares of each set's images, so sets of different sizes compare."""
    ood = n.datasets[1:]
    rows, cols = max(len(ood), 1), len(n.runs)
    fig = _figure(max(3.4 * cols, 5.0), 2.3 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    id_name = n.datasets[0]
    for c, run in enumerate(n.runs):
        for r, o in enumerate(ood):
            ax = axes[r, c]
            for name, colour in ((id_name, ID_COLOUR), (o, OOD_COLOURS[r % len(OOD_COLOURS)])):
                k = n.counts[run][name]
                ax.stairs(100.0 * k / max(k.sum(), 1), n.edges, fill=True, color=colour, alpha=0.55,
                          label=("ID " if name == id_name else "OOD ") + name)
            if r == 0:
                ax.set_title(run, fontsize=10, fontweight="bold")
            if r == rows - 1:
                ax.set_xlabel("‖GAP(z)‖₂ (feature norm)")
            if c == 0:
                ax.set_ylabel("share of images (%)")
            if c == cols - 1:
                ax.legend(fontsize=7.5)
    fig.suptitle("L2 norm of the pooled feature vector, ID vs OOD (paper Fig. 5); shared axes", fontsize=11)
    return _save(fig, path)


def write_report_plots(data: Any, out: str | os.PathLike) -> list[Picture]:
    """Histograms and ROC curves per run and method, Fig. 5, and an index.html listing them."""
    out = outputs.claim_dir(out)
    pictures: list[Picture] = []
    pictures.append(norm_distributions(data.norms, out / "norms.png"))
    for h in data.histograms:
        stem = f"{slug(h.run)}-{slug(h.method)}"
        pictures.append(score_histograms(h, out / f"hist-{stem}.png"))
        curves = [c for c in data.rocs if c.run == h.run and c.method == h.method]
        pictures.append(roc_curves(curves, out / f"roc-{stem}.png"))
    write_index(out / "index.html", f"lbfood report: ID {data.id_data}", [(p, p.path.stem) for p in pictures])
    return pictures


# ---- sweep ----------------------------------------------------------------------------------------

FACTOR_NAMES = {"objective": "objective", "delta": "δ (Eq. 5)", "mu": "μ (Eq. 6)", "lam": "λ (Eq. 7)", "mask_from": "mask from"}


def sensitivity(doc: dict[str, Any], path: Path) -> Picture:
    """The paper's Fig. 6 from a sweep's sweep.json: the validation objective against each factor that
    varies, one panel each; hollow points are below the accuracy floor (not eligible), the control dashed."""
    rows = [r for r in doc["trials"] if r["state"] == "complete" and r["role"] == "trial"]
    control = next(r for r in doc["trials"] if r["role"] == "control")
    factors = [f for f in FACTOR_NAMES if len({r["point"][f] for r in rows}) > 1] or ["lam"]
    fig = _figure(3.2 * len(factors), 3.0)
    axes = fig.subplots(1, len(factors), squeeze=False)
    ylabel = f"validation {'AUROC' if doc['objective'] == 'auroc' else 'FPR95'} (%)"
    for ax, f in zip(axes[0], factors, strict=True):
        values = list(dict.fromkeys(r["point"][f] for r in rows))
        for ok in (True, False):
            sel = [r for r in rows if (r["val_acc"] >= doc["accuracy_floor"] - 1e-12) == ok]
            ax.scatter([values.index(r["point"][f]) for r in sel], [100 * r["value"] for r in sel], s=16,
                       color=ID_COLOUR if ok else "none", edgecolors=ID_COLOUR,
                       label="trials" if ok else "below the accuracy floor")
        if control.get("value") is not None:
            ax.axhline(100 * control["value"], color="black", linestyle="--", linewidth=1, label="control (λ = 0)")
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(FACTOR_NAMES[f])
        ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


# ---- explain --------------------------------------------------------------------------------------


def _upsample(mask: Any, size: int) -> Any:
    """Each feature-map location's cell on the S×S image (nearest neighbour)."""
    import numpy as np

    h, w = mask.shape
    rows, cols = (np.arange(size) * h) // size, (np.arange(size) * w) // size
    return mask[rows][:, cols].astype(float)


def explanation(e: Any, path: Path) -> Picture:
    """The paper's Fig. 7 for one image: the image, then ‖z_j‖ over it under each run (one colour scale),
    background locations (Eq. 5) outlined, and score, verdict and predicted class in each title."""
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    size = e.image.shape[0]
    cols = 1 + len(e.maps)
    fig = _figure(2.9 * cols + 0.9, 3.9)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    vmax = max(float(m.heat.max()) for m in e.maps) or 1.0
    axes[0].imshow(e.image, interpolation="nearest")
    axes[0].set_title(f"image ({size}×{size} px)", fontsize=9)
    for ax, m in zip(axes[1:], e.maps, strict=True):
        ax.imshow(e.image, interpolation="nearest")
        ax.imshow(m.heat, cmap=HEAT_CMAP, alpha=0.6, vmin=0.0, vmax=vmax, interpolation="bilinear")
        for mask, colour, style, marker in ((m.label_mask, LABEL_MASK_COLOUR, "dashed", "+"),
                                            (m.mask, MASK_COLOUR, "solid", "o")):
            if mask is None:
                continue
            if 0 < mask.sum() < mask.size:  # a contour needs both sides
                ax.contour(_upsample(mask, size), levels=[0.5], colors=colour, linewidths=1.8, linestyles=style)
            rows, cols = np.nonzero(mask)  # a mark at the centre of each background location
            ax.scatter((cols + 0.5) * size / mask.shape[1] - 0.5, (rows + 0.5) * size / mask.shape[0] - 0.5,
                       s=40 if marker == "+" else 12, marker=marker, color=colour, linewidths=1.5)
        bg = f"bg {int(m.mask.sum())}/{m.mask.size} at δ {m.delta:.3g}"
        far = " by the far-OOD gate" if getattr(m, "reason", None) == "far" else ""
        ax.set_title(f"{m.run}: {m.verdict}{far} ({m.method} {m.score:.3g}, γ {m.threshold:.3g})\n"
                     f"predicted {m.predicted} ({m.confidence:.0%}); {bg}", fontsize=8.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    shown = ScalarMappable(Normalize(0.0, vmax), cmap=HEAT_CMAP)  # opaque, unlike the overlays
    fig.colorbar(shown, ax=list(axes[1:]), label="‖z_j‖₂ (feature norm at each location)", shrink=0.85)
    handles = [Line2D([], [], color=MASK_COLOUR, linewidth=1.8, marker="o", markersize=3,
                      label="background for the predicted class c: p_j(c) < δ (Eq. 5)")]
    if e.label is not None:
        handles.append(Line2D([], [], color=LABEL_MASK_COLOUR, linewidth=1.8, linestyle="dashed", marker="+",
                              label=f"background for label {e.label}: p_j({e.label}) < δ"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=len(handles), frameon=False)
    fig.suptitle(Path(e.file).name, fontsize=10)
    return _save(fig, path)


def write_explanations(explanations: Sequence[Any], out: str | os.PathLike) -> tuple[list[Picture], list[str]]:
    """One PNG per readable image and an index.html; returns the pictures and one line per failed file."""
    out = outputs.claim_dir(out)
    pictures, failed, items = [], [], []
    for i, e in enumerate(explanations):
        if e.error is not None:
            failed.append(f"{e.file}: {e.error}")
            continue
        p = explanation(e, out / f"{i + 1:03d}-{slug(Path(e.file).stem)}.png")
        pictures.append(p)
        items.append((p, " · ".join(f"{m.run}: {m.verdict} ({m.predicted})" for m in e.maps) + f" — {e.file}"))
    write_index(out / "index.html", "lbfood explain", items, failed)
    return pictures, failed


def write_index(path: Path, title: str, items: Sequence[tuple[Picture, str]], failed: Sequence[str] = (),
                links: Sequence[tuple[str, str]] = ()) -> None:
    """A plain HTML page showing the pictures (relative links, so the folder can be moved)."""
    from lbfood.engine.io import atomic_write_bytes

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%}figure{margin:0 0 2em}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts.extend(f"<p><a href='{html.escape(href)}'>{html.escape(text)}</a></p>" for href, text in links)
    for pic, caption in items:
        parts.append(f"<figure><img src='{html.escape(pic.path.name)}' width='{pic.width}' alt=''>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if failed:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failed) + "</ul>")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(parts) + "\n").encode("utf-8"))


# ---- the demo -------------------------------------------------------------------------------------


def demo_pictures(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, device: str = "auto",
                  on_event: Any = None) -> list[Picture]:
    """The demo's pictures in `out`: report plots of `runs` (in that order: pretrained, CE-only, LFF) on
    backdrops (ReAct; features and scorers come from the runs' caches), and Fig. 7 of the sample images
    (`out/samples/`) under the same runs, side by side, in `out/explain/`."""
    from lbfood.engine import demo
    from lbfood.engine.config import ReportConfig
    from lbfood.engine.evaluation import explain as ex
    from lbfood.engine.evaluation import plotdata
    from lbfood.engine.evaluation import report as evaluate

    out = Path(out)
    first, *rest = (str(r) for r in runs)
    cfg = ReportConfig(model=first, compare=tuple(rest), benchmark="backdrops", methods=demo.DEMO_METHODS,
                       device=device, workers=0)
    result = evaluate.report(cfg, on_event=on_event)
    data = plotdata.collect(cfg, result, on_event=on_event)
    pictures = write_report_plots(data, out)
    samples = demo.write_samples(out / "samples")
    exps = ex.explain(ex.ExplainConfig(paths=tuple(map(str, samples)), model=first, compare=tuple(rest),
                                       device=device), on_event=on_event)
    pictures += write_explanations(exps, out / "explain")[0]
    write_index(out / "index.html", f"lbfood demo: ID {data.id_data}",
                [(p, p.path.stem) for p in pictures if p.path.parent == out],
                links=[("explain/index.html", "Fig. 7 heat maps of the sample images (samples/)")])
    return pictures
