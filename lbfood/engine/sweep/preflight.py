"""What a new sweep checks before its first trial trains, so that a refusal costs no training and leaves
no folder behind (the control would otherwise train first, and only the next trial would find the fault):

- the parent (`--from`) is finished: every trial must start from the same, final weights;
- `--val-ood` is not one of the test OOD sets the sweep evaluates after the selection (`--ood`, else
  `--benchmark`'s, else the ID set's default benchmark): selecting on a test set is what the sweep avoids;
- `--val-ood` has images;
- every δ whose μ is measured from the parent (`--mu auto|qX`, Eq. 6) finds background locations in it
  (Eq. 5: p_j(y) < δ): each such trial is prepared — parent probed, nothing trained or written.
"""

from __future__ import annotations

from pathlib import Path

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.sweep import space
from lbfood.engine.sweep.space import SweepConfig

FINISHED = ("done", "trained")  # trained: its weights are final, only its threshold is not calibrated


def run(sc: SweepConfig) -> None:
    """Every check above, in order of cost; raises LbfoodError, writes nothing."""
    from lbfood.engine.sweep.validate import load_val_ood
    from lbfood.engine.training.finetune import prepare_finetune

    parent = check_parent(sc.recipe.parent)
    check_val_ood(sc, sc.recipe.data or parent.data)
    trials = Path(sc.out) / "trials"
    if sc.val_ood:
        control = space.control_point(sc)
        load_val_ood(sc, prepare_finetune(space.trial_config(sc, control, str(trials / space.key(control)))))
    for p in measured_points(sc):
        prepare_finetune(space.trial_config(sc, p, str(trials / space.key(p))))


def check_parent(parent: str | None) -> runs.RunMeta:
    meta = runs.read(parent or runs.RUNS_DIR / "latest")
    if meta.status not in FINISHED:
        total = meta.config.get("epochs", "?")
        state = "still training, or killed" if meta.status == "running" else meta.status
        raise RunError(f"--from {meta.run_dir} is not finished (status {state}, {meta.epochs_done} of {total} epochs): "
                       f"every trial would start from its epoch-{meta.epochs_done} weights; finish it with "
                       f"`lbfood {meta.kind} --resume --out {meta.run_dir}`, or pass a finished run")
    return meta


def measured_points(sc: SweepConfig) -> list[dict[str, str]]:
    """One L_LFF point per δ whose μ is measured from the parent (the points TPE may pick, for `search`)."""
    points = space.grid_points(sc) if sc.mode == "search" else space.planned_points(sc)
    out: dict[str, dict[str, str]] = {}
    for p in points:
        if p["lam"] != "0" and (p["mu"] == "auto" or p["mu"].startswith("q")):
            out.setdefault(p["delta"], p)
    return list(out.values())


def test_sets(sc: SweepConfig, id_data: str) -> tuple[tuple[str, ...], str]:
    """(the test OOD sets `results.finalize` evaluates, where they come from)."""
    from lbfood.engine.evaluation.benchmarks import load_benchmark
    from lbfood.engine.evaluation.ood_labels import split_labels
    from lbfood.engine.evaluation.report import default_ood

    if sc.ood:
        return split_labels(sc.ood)[0], "--ood"
    if sc.benchmark:
        return load_benchmark(sc.benchmark).ood, f"--benchmark {sc.benchmark}"
    try:
        return default_ood(id_data), f"the default test benchmark of {id_data}"
    except ConfigError:
        return (), "none"  # no test set: the sweep notes it after the selection


def _identity(name: str) -> str:
    """A dataset's identity: its name, or for folder:PATH the resolved folder."""
    if name.startswith("folder:"):
        return "folder:" + str(Path(name[len("folder:"):]).expanduser().resolve())
    return name


def check_val_ood(sc: SweepConfig, id_data: str) -> None:
    if sc.val_ood is None:
        return
    tests, where = test_sets(sc, id_data)
    if _identity(sc.val_ood) in {_identity(t) for t in tests}:
        raise ConfigError(f"--val-ood {sc.val_ood} is also a test set ({where}: {', '.join(tests)}): selecting on it "
                          "would be selecting on the test data; validate on another set, or drop --val-ood to use "
                          "pseudo-OOD made from the held-out images")
