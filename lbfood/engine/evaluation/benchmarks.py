"""Benchmark files: which ID and OOD sets a paper setting uses, and the numbers the paper reports.

A benchmark is a TOML file (see examples/*.toml): a `[benchmark]` table (name, id, ood, image_size, arch),
optional `[labels]` (method id -> display name) and `[paper.<method>]` tables mapping each OOD set and
"average" to `{fpr95, auroc}` in percent: the method on a model trained with cross-entropy only.
`[paper_ours.<method>]` tables, in the same form, hold the paper's "+Ours" rows (Table IV: the method
on the model fine-tuned with L_LFF); `report --benchmark` shows them beside a fine-tuned LFF run and
the `[paper.*]` rows beside any other run. The four built-in ones ship as package data in
`lbfood/engine/evaluation/benchmark_files/` (copies of examples/*.toml).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lbfood.engine.errors import ConfigError
from lbfood.engine.runs import RunMeta

BUILTIN = ("backdrops", "cifar10", "cifar100", "imagenet100")
METRICS = ("fpr95", "auroc")
_FILES = "benchmark_files"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark setting; `paper[method][dataset] = {"fpr95": %, "auroc": %}` ("average" included)."""

    name: str
    id: str
    ood: tuple[str, ...]
    image_size: int
    arch: str
    paper: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # method id -> name as printed in the paper
    paper_ours: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # "+Ours" rows
    source: str = ""  # where it was read from


def names() -> list[str]:
    return list(BUILTIN)


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """A built-in benchmark by name (backdrops|cifar10|cifar100|imagenet100) or a TOML file by path."""
    key = str(name_or_path)
    if key in BUILTIN:
        text = resources.files("lbfood.engine.evaluation").joinpath(_FILES, f"{key}.toml").read_text(encoding="utf-8")
        return parse_benchmark(text, source=f"built-in benchmark {key}")
    path = Path(key).expanduser()
    if not path.is_file():
        raise ConfigError(f"unknown benchmark {key!r}: not one of {', '.join(BUILTIN)} and no file {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"benchmark file {path}: cannot read it ({e})") from None
    return parse_benchmark(text, source=str(path))


def parse_benchmark(text: str, source: str = "<text>") -> Benchmark:
    """Parse and validate benchmark TOML text; any problem raises ConfigError naming `source`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {msg}")

    unknown = sorted(set(doc) - {"benchmark", "paper", "paper_ours", "labels"})
    if unknown:
        raise bad(f"unknown top-level table(s) {', '.join(unknown)}; expected [benchmark], [labels], [paper.*], "
                  "[paper_ours.*]")
    b = doc.get("benchmark")
    if not isinstance(b, dict):
        raise bad("missing the [benchmark] table (name, id, ood, image_size, arch)")
    missing = [k for k in ("name", "id", "ood", "image_size", "arch") if k not in b]
    if missing:
        raise bad(f"[benchmark] lacks {', '.join(missing)}")
    for k in ("name", "id", "arch"):
        if not isinstance(b[k], str) or not b[k]:
            raise bad(f"[benchmark] {k} must be a non-empty string")
    ood = b["ood"]
    if not isinstance(ood, list) or not ood or not all(isinstance(o, str) and o for o in ood):
        raise bad("[benchmark] ood must be a non-empty list of dataset names")
    if len(set(ood)) != len(ood):
        raise bad("[benchmark] ood lists a dataset twice")
    size = b["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise bad(f"[benchmark] image_size must be a positive integer, got {size!r}")

    labels = doc.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise bad("[labels] must map method ids to strings")

    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    allowed = set(ood) | {"average"}
    for top in ("paper", "paper_ours"):
        paper = tables[top] = {}
        raw = doc.get(top, {})
        if not isinstance(raw, dict):
            raise bad(f"[{top}] must hold one [{top}.<method>] table per method")
        for method, rows in raw.items():
            if not isinstance(rows, dict):
                raise bad(f"[{top}.{method}] must be a table of dataset = {{fpr95, auroc}}")
            extra = sorted(set(rows) - allowed)
            if extra:
                raise bad(f"[{top}.{method}] names {', '.join(extra)}, which is not in ood (or 'average')")
            paper[method] = {}
            for ds, cell in rows.items():
                if not isinstance(cell, dict) or set(cell) != set(METRICS):
                    raise bad(f"[{top}.{method}] {ds} must be {{fpr95 = ..., auroc = ...}}")
                for m in METRICS:
                    v = cell[m]
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                            or not 0 <= v <= 100:
                        raise bad(f"[{top}.{method}] {ds}.{m} = {v!r}: expected a percentage in [0, 100]")
                paper[method][ds] = {m: float(cell[m]) for m in METRICS}
    stray = sorted(set(labels) - set(tables["paper"]) - set(tables["paper_ours"]))
    if stray and (tables["paper"] or tables["paper_ours"]):
        raise bad(f"[labels] names methods with no [paper.*] table: {', '.join(stray)}")
    return Benchmark(name=b["name"], id=b["id"], ood=tuple(ood), image_size=size, arch=b["arch"],
                     paper=tables["paper"], labels=dict(labels), paper_ours=tables["paper_ours"], source=source)


def is_lff_run(meta: RunMeta) -> bool:
    """True for a run fine-tuned with L_LFF (run.json kind "finetune", config λ > 0): the paper's "+Ours"
    rows are its reference. A pretrained run or the CE-only control (λ = 0) compares with the baseline."""
    lam = meta.config.get("lam")
    return meta.kind == "finetune" and isinstance(lam, int | float) and lam > 0


def paper_numbers(bench: Benchmark, methods: Sequence[str], ood: Sequence[str], *,
                  ours: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """The paper's rows (baseline, or "+Ours" with `ours`) for `methods` as fractions, for the OOD sets
    evaluated; "average" only when exactly the benchmark's OOD sets are (else it averages others)."""
    comparable = set(ood) == set(bench.ood)
    out = {}
    for m in methods:
        rows = (bench.paper_ours if ours else bench.paper).get(m, {})
        kept = {ds: {k: v / 100.0 for k, v in cell.items()} for ds, cell in rows.items()
                if ds in ood or (ds == "average" and comparable)}
        if kept:
            out[m] = kept
    return out
