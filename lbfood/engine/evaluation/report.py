"""`lbfood report`: ID accuracy and, per method and OOD dataset, FPR95/AUROC/AUPR of a run and the runs
compared with it, with the paper's numbers beside them (`--benchmark`). Returns data; the renderers
print tables and write files (lbfood/output/render_eval.py, lbfood/output/writers.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lbfood.engine import distributed, runs
from lbfood.engine.config import ReportConfig
from lbfood.engine.data import DatasetSpec
from lbfood.engine.data import get as get_dataset
from lbfood.engine.distributed import DistInfo
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import gates as ci_gates
from lbfood.engine.evaluation import metrics, scorers
from lbfood.engine.evaluation.auto import resolve_report
from lbfood.engine.evaluation.benchmarks import BUILTIN, is_lff_run, load_benchmark, paper_numbers
from lbfood.engine.evaluation.ood_labels import labels_for, split_labels
from lbfood.engine.evaluation.store import RunEval, data_root, jsonable
from lbfood.engine.events import Step
from lbfood.engine.runtime import make_runtime

# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One run's numbers. `metrics[method][dataset]` = {fpr95, auroc, aupr_in, aupr_out} as fractions;
    dataset "average" is the mean over the OOD datasets."""

    name: str
    path: str
    kind: str
    arch: str
    width: float
    data: str
    id_accuracy: float
    metrics: dict[str, dict[str, dict[str, float]]]
    lff: bool = False  # fine-tuned with L_LFF (λ > 0): compared with the paper's "+Ours" rows


@dataclass(frozen=True)
class ReportResult:
    """What `report` measured, and everything needed to read it later (convention, params, data root)."""

    id_data: str
    ood: tuple[str, ...]
    methods: tuple[str, ...]
    params: dict[str, dict[str, Any]]  # method -> the hyper-parameters it ran with
    convention: str  # FPR95 convention, see metrics.py
    runs: tuple[RunResult, ...]
    data_root: str
    num_images: dict[str, int]  # dataset -> images scored (the ID test split included)
    benchmark: str | None = None
    paper: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # fractions, like `metrics`
    labels: dict[str, str] = field(default_factory=dict)  # method -> name as printed in the paper
    paper_ours: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # Table IV "+Ours" rows
    ood_labels: dict[str, str] = field(default_factory=dict)  # OOD set -> short label for tables
    extractions: int = 0  # forward passes over a dataset split (feature-cache misses)
    odin_passes: int = 0  # ODIN's own passes (gradient + perturbed forward) over a split
    fits: int = 0  # scorers fitted now (the others were loaded from <run>/scorers/)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    gates: tuple[ci_gates.GateCheck, ...] = ()  # `--gate` checks on the first run (evaluation/gates.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ood"], d["methods"], d["notes"] = list(self.ood), list(self.methods), list(self.notes)
        return d

    def paper_for(self, run: RunResult, method: str) -> dict[str, dict[str, float]]:
        """The paper's row shown beside `run`: "+Ours" for an LFF run (none if the paper has none),
        else the baseline row."""
        return (self.paper_ours if run.lff else self.paper).get(method, {})


def default_ood(id_data: str) -> tuple[str, ...]:
    """The test OOD sets of the built-in benchmark whose ID set is `id_data` (what `--ood` defaults to)."""
    for name in BUILTIN:
        bench = load_benchmark(name)
        if bench.id == id_data:
            return bench.ood
    raise ConfigError(f"no OOD datasets for {id_data}: pass --ood NAME (repeatable; e.g. folder:PATH) or "
                      "--benchmark; `lbfood datasets` lists the datasets")


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass
class _Plan:
    """A report validated before the first forward pass: what to compute, on which runs and sets."""

    methods: tuple[str, ...]
    protos: dict[str, Any]  # method -> an unfitted scorer with its parameters (their validation)
    checks: list  # parsed --gate checks
    bench: Any  # the Benchmark, or None
    metas: list[runs.RunMeta]
    id_data: str
    ood: tuple[str, ...]
    ood_given: dict[str, str]
    notes: list[str]


def report(cfg: ReportConfig, on_event: Callable[[Step], None] | None = None,
           dist: DistInfo | None = None) -> ReportResult:
    """ID accuracy and, per method and OOD set, FPR95/AUROC/AUPR-In/AUPR-Out (fractions) of a run and
    its `compare` runs; everything is validated before the first forward pass.

    Under torchrun (`dist`), each rank extracts a shard of every split; all ranks get the same result
    and only rank 0 writes (feature cache, fitted scorers)."""
    t0 = time.time()
    dist = dist or DistInfo()
    cfg = resolve_report(cfg)  # --method auto: the first run's validated scorer
    plan = validate(cfg)
    rt = make_runtime(distributed.rank_device(cfg.device, dist), cfg.precision, training=False)
    root = data_root(plan.metas[0], cfg.data_root)
    results, num_images, counts = measure(plan, cfg, rt, root, on_event, dist)
    return assemble(plan, cfg, results, root, num_images, counts, seconds=round(time.time() - t0, 3))


def validate(cfg: ReportConfig) -> _Plan:
    """Check every option, name, run and dataset of a report (no forward pass); raises ConfigError."""
    cfg.check()
    if cfg.fpr_convention not in metrics.CONVENTIONS:
        raise ConfigError(f"unknown --fpr-convention {cfg.fpr_convention!r}; valid: {', '.join(metrics.CONVENTIONS)}")
    methods = _dedupe(cfg.methods)
    if not methods:
        raise ConfigError(f"no --method given; valid: {', '.join(scorers.names())}")
    stray = sorted(set(cfg.params) - set(methods))
    if stray:
        raise ConfigError(f"parameters given for {', '.join(stray)}, which is not a requested --method")
    protos = {m: scorers.get(m, **cfg.params.get(m, {})) for m in methods}  # unknown names/params raise
    checks = ci_gates.parse_all(cfg.gates)
    bench = load_benchmark(cfg.benchmark) if cfg.benchmark else None

    metas = [runs.read(p) for p in (cfg.model, *cfg.compare)]
    seen: set[Path] = set()
    for m in metas:
        if m.run_dir in seen:
            raise ConfigError(f"run {m.run_dir} is given twice (--model/--compare)")
        seen.add(m.run_dir)
    first = metas[0]
    id_data = cfg.id_data or (bench.id if bench else first.data)
    id_spec = get_dataset(id_data)
    if id_spec.role != "id":
        raise ConfigError(f"--id {id_data} is an OOD set (no class labels); pass the ID dataset the run "
                          f"was trained on ({first.data})")
    ood_names, ood_given = split_labels(cfg.ood)  # NAME=DATASET labels a set in the printed tables
    ood = _dedupe(ood_names) if ood_names else (bench.ood if bench else default_ood(id_data))
    for name in ood:
        spec = get_dataset(name)  # unknown names raise with the valid ones
        if name == id_data:
            raise ConfigError(f"--ood {name} is the ID dataset; pass OOD sets")
        if spec.role == "id":
            raise ConfigError(f"--ood {name} is an ID dataset (it has class labels); OOD sets are "
                              f"{', '.join(s.name for s in _ood_specs())} or folder:PATH")
    ci_gates.check_names(checks, methods, ood)  # unknown names are usage errors, before any computing
    notes: list[str] = [n for m in metas if (n := runs.unfinished(m))]  # killed or still training
    if bench is not None:
        sizes = {int(m.input_size) for m in metas}
        if sizes != {bench.image_size}:
            notes.append(f"benchmark {bench.name} is evaluated at {bench.image_size} px; the run takes "
                         f"{', '.join(map(str, sorted(sizes)))} px")
        archs = sorted({m.arch for m in metas} - {bench.arch})
        if archs and bench.paper:
            notes.append(f"the paper's numbers are for {bench.arch}; this run is {', '.join(archs)}")
    return _Plan(methods, protos, checks, bench, metas, id_data, tuple(ood), ood_given, notes)


def measure(plan: _Plan, cfg: ReportConfig, rt, root: Path, on_event, dist: DistInfo):
    """Every run's ID accuracy and per-method, per-set metrics: (results, images per set, pass counters).
    The notes of each run's store are added to `plan.notes`."""
    data: dict = {}  # loaded splits, shared by the runs
    counts = {"extractions": 0, "odin_passes": 0, "fits": 0}
    num_images: dict[str, int] = {}
    results = []
    for run in plan.metas:
        model, meta = runs.load_run(run.run_dir, rt.device)
        ev = RunEval(run.run_dir, rt.prepare(model), meta, rt, id_data=plan.id_data, data_root=root,
                     batch_size=cfg.batch_size, workers=cfg.workers, data=data, on_event=on_event, dist=dist,
                     limit=cfg.limit, download=cfg.download, allow_skips=cfg.allow_skips)
        try:
            results.append(_measure_run(plan, cfg, ev, num_images))
        finally:
            for k in counts:
                counts[k] += getattr(ev, k)
            plan.notes.extend(n for n in ev.notes if n not in plan.notes)
        del model, ev
    return results, num_images, counts


def _measure_run(plan: _Plan, cfg: ReportConfig, ev: RunEval, num_images: dict[str, int]) -> RunResult:
    test = ev.features(plan.id_data, "test")
    num_images[plan.id_data] = len(test)
    per_method: dict[str, dict[str, dict[str, float]]] = {}
    for m in plan.methods:
        params = cfg.params.get(m, {})
        s = ev.scorer(m, params)
        user_std = "std" in params
        id_scores = ev.scores(s, plan.id_data, "test", user_std=user_std)
        rows: dict[str, dict[str, float]] = {}
        for name in plan.ood:
            ood_scores = ev.scores(s, name, "test", user_std=user_std)
            num_images[name] = len(ood_scores)
            rows[name] = metrics.summarize(id_scores, ood_scores, cfg.fpr_convention)
        rows["average"] = {k: float(np.mean([rows[n][k] for n in plan.ood])) for k in metrics.SUMMARY_KEYS}
        per_method[m] = rows
    meta = ev.meta
    return RunResult(name=ev.run_dir.name, path=str(ev.run_dir), kind=meta.kind, arch=meta.arch,
                     width=float(meta.width), data=meta.data, id_accuracy=metrics.accuracy(test.logits, test.labels),
                     metrics=per_method, lff=is_lff_run(meta))


def assemble(plan: _Plan, cfg: ReportConfig, results: list[RunResult], root: Path, num_images: dict[str, int],
             counts: dict[str, int], seconds: float) -> ReportResult:
    """The ReportResult: the measured runs with the paper's numbers, labels, parameters, notes and gates."""
    bench, methods, ood, first = plan.bench, plan.methods, plan.ood, plan.metas[0]
    paper = paper_numbers(bench, methods, ood) if bench is not None else {}
    paper_ours = paper_numbers(bench, methods, ood, ours=True) if bench is not None else {}
    params = {m: jsonable(plan.protos[m].params) for m in methods}
    for m in methods:
        if plan.protos[m].needs_images and "std" in params[m] and "std" not in cfg.params.get(m, {}):
            params[m]["std"] = list(first.std)  # ODIN divides its step by the run's std (see odin.py)
    notes = list(plan.notes)
    if bench is not None and bench.paper and plan.id_data != bench.id:
        notes.append(f"the paper's numbers are for ID {bench.id}, not {plan.id_data}")
    return ReportResult(
        id_data=plan.id_data, ood=tuple(ood), methods=methods, params=params, convention=cfg.fpr_convention,
        runs=tuple(results), data_root=str(root), num_images=num_images,
        benchmark=bench.name if bench else None, paper=paper, paper_ours=paper_ours,
        labels={m: bench.labels[m] for m in methods if bench and m in bench.labels},
        ood_labels=labels_for(ood, plan.ood_given),
        notes=tuple(notes), seconds=seconds, **counts,
        gates=ci_gates.evaluate(plan.checks, results[0].metrics, results[0].id_accuracy))


def _ood_specs() -> list[DatasetSpec]:
    from lbfood.engine.data import specs

    return [s for s in specs() if s.role == "ood"]

