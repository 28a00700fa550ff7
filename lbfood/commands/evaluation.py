"""Evaluation commands: `lbfood report`, `lbfood score` and `lbfood datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import (
    SCORER_NAMES,
    DataRoot,
    Device,
    Download,
    EvalLimit,
    EvalPrecision,
    Params,
    RunOpt,
    Workers,
    join,
    split_names,
)
from lbfood.commands.options import (
    params as parse_params,
)


def report(
    model: RunOpt = "runs/latest",
    id_data: Annotated[str | None, typer.Option(
        "--id", help="ID dataset (its test split).", show_default="the benchmark's, else the run's dataset")] = None,
    ood: Annotated[list[str] | None, typer.Option(
        help="OOD dataset, repeatable (e.g. svhn, folder:PATH); NAME=folder:PATH names it in the tables.",
        show_default="the benchmark's, else the built-in benchmark of the ID set")] = None,
    method: Annotated[list[str] | None, typer.Option(
        help=f"Scorer, repeatable or comma-separated: {SCORER_NAMES}, or auto (the run's scorer chosen on "
             "held-out images; --holdout runs).", show_default="react")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        help="Another run shown side by side (repeatable), e.g. the pretrained parent of a fine-tuned run.")] = None,
    benchmark: Annotated[str | None, typer.Option(
        help="backdrops, cifar10, cifar100, imagenet100 or a TOML file: sets --id/--ood and shows the "
             "paper's numbers beside yours.")] = None,
    fpr_convention: Annotated[str, typer.Option(
        help="paper: ID positive (share of OOD kept at 95 % of ID kept); openood: OOD positive.")] = "paper",
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Also show AUPR-In and AUPR-Out.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the result to FILE (.json, .csv or .md).")] = None,
    plots: Annotated[Path | None, typer.Option(
        help="Also draw PNGs into DIR: score histograms and ROC curves per method and run, and the "
             "feature-norm distributions of the paper's Fig. 5 (runs side by side); DIR/index.html shows them.")] = None,
    gate: Annotated[list[str] | None, typer.Option(
        help="CI gate [METHOD.][DATASET.]METRIC OP BOUND (repeatable), e.g. fpr95<=30, react.auroc>=90, "
             "id_acc>=0.9: exit 1 if any fails. Metrics in % as shown (id_acc a fraction); no DATASET = the "
             "average; no METHOD = every method; applies to --model.")] = None,
    param: Params = None,
    data_root: DataRoot = None,
    download: Download = False,
    allow_skips: Annotated[bool, typer.Option("--allow-skips", help=(
        "Report an OOD set even when fewer than half of its image files could be decoded (refused "
        "otherwise; skipped files are counted in a note either way)."))] = False,
    limit: EvalLimit = None,
    device: Device = "auto",
    precision: EvalPrecision = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Workers = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    """OOD detection metrics (FPR95, AUROC) of a run per OOD dataset and method, and its ID accuracy."""
    from lbfood.engine import distributed
    from lbfood.engine.config import ReportConfig
    from lbfood.engine.evaluation import report as evaluate
    from lbfood.output import render_ci, render_eval, writers

    methods = split_names(method) or ("react",)
    cfg = ReportConfig(model=model, id_data=id_data, ood=tuple(ood or ()), methods=methods,
                       compare=tuple(compare or ()), benchmark=benchmark,
                       data_root=str(data_root) if data_root else None, fpr_convention=fpr_convention,
                       batch_size=batch_size, device=device, precision=precision,
                       params=parse_params(param, methods), workers=workers, gates=tuple(gate or ()),
                       download=download, limit=limit, allow_skips=allow_skips)
    fmt = writers.check_output(output) if output else None  # refused before any work
    if plots is not None:
        from lbfood.output import plots as pictures

        pictures.check_out_dir(plots, "--plots")  # refused before any work
    dist = join(device)  # under torchrun: each rank extracts a shard; rank 0 prints and writes
    with distributed.lost_peer(dist), render_eval.progress(quiet or not dist.is_main) as on_event:
        result = evaluate.report(cfg, on_event=on_event, dist=dist)
        if plots is not None and dist.is_main:
            from lbfood.engine.evaluation import plotdata

            drawn = pictures.write_report_plots(plotdata.collect(cfg, result, on_event=on_event), plots)
    if dist.is_main:
        render_eval.report(result, all_metrics=all_metrics)
        if output:
            writers.write_report(result, output, fmt)
            render_eval.wrote(output)
        if plots is not None:
            render_eval.pictures_line(drawn, plots)
        render_ci.gates(result.gates)
    distributed.destroy()
    if any(not c.passed for c in result.gates):
        raise typer.Exit(1)


def score(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    model: RunOpt = "runs/latest",
    method: Annotated[str, typer.Option(help=f"Scorer: {SCORER_NAMES}, or auto (the scorer chosen on held-out "
                                             "images when the run was trained with --holdout).")] = "react",
    threshold: Annotated[float | None, typer.Option(
        help="γ: score ≥ γ ⇒ ID (paper Eq. 3).",
        show_default="the run's threshold for --method keeping 95 % of its ID test images, computed and "
                     "stored on first use")] = None,
    no_far_gate: Annotated[bool, typer.Option(
        "--no-far-gate", help="The paper's verdict alone (score ≥ γ ⇒ ID). By default an image is ID only if "
                              "the far-OOD gate passes too: a Mahalanobis distance to the run's training "
                              "features that rejects noise, blank frames, text and other modalities, keeping "
                              "99.7 % of the training images.")] = False,
    param: Params = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    max_ood_share: Annotated[float | None, typer.Option(
        help="CI drift check: exit 3 when more than this share (0.05 = 5 %) of the scored images is OOD "
             "(3 wins over 1 for unreadable files).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    out: Annotated[Path | None, typer.Option(help="Stream to this JSONL file (one line per image, written as it "
                                                  "goes); the same command again continues it.")] = None,
    shard: Annotated[str | None, typer.Option(help="With --out: score part I of N (0-based, e.g. 0/4) of the sorted "
                                                   "images; the N files concatenated equal the unsharded one.")] = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: EvalPrecision = "auto",
) -> None:
    """Classify images and say whether each is in-distribution: ID when the paper's score passes and the
    far-OOD gate passes (reason: score / far). Exit code 1 if any file failed, 3 if --max-ood-share is
    exceeded."""
    from lbfood.engine.config import ScoreConfig
    from lbfood.engine.errors import ConfigError
    from lbfood.engine.evaluation import gates
    from lbfood.engine.evaluation import score as evaluate
    from lbfood.output import render_ci, render_eval

    if max_ood_share is not None:
        gates.check_share(max_ood_share)

    cfg = ScoreConfig(paths=tuple(paths), model=model, method=method, threshold=threshold,
                      params=parse_params(param, (method,)).get(method, {}), batch_size=batch_size,
                      data_root=str(data_root) if data_root else None, device=device, precision=precision,
                      far_gate=not no_far_gate)
    notes: list[str] = []
    if out is not None or shard is not None:
        from lbfood.engine.evaluation import score_stream

        if out is None:
            raise ConfigError("--shard writes its part to a file: pass --out FILE.jsonl as well")
        if max_ood_share is not None:
            raise ConfigError("--max-ood-share reads every row: score without --out, or count the OOD lines of --out")
        with render_eval.progress(json_out) as on_event:
            done = score_stream.score_to_file(cfg, out, score_stream.parse_shard(shard), on_event, notes)
        render_eval.notes(notes)
        render_eval.streamed(done)
        if done.errors:
            raise typer.Exit(1)
        return
    with render_eval.progress(json_out) as on_event:
        rows = evaluate.score_images(cfg, on_event=on_event, notes=notes)
    if json_out:
        typer.echo(render_eval.score_json(rows))
    else:
        render_eval.score_table(rows)
    render_eval.notes(notes)
    share = None if max_ood_share is None else gates.ood_share(
        [None if r.error is not None else r.verdict for r in rows], max_ood_share)
    if share is not None:
        render_ci.ood_share(share)
    if share is not None and share.exceeded:
        raise typer.Exit(3)
    if any(r.error is not None for r in rows):
        raise typer.Exit(1)


def datasets(
    data_root: DataRoot = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list (name, role, found, count, path).")] = False,
) -> None:
    """Which datasets are on disk, where each is expected, and how to obtain it."""
    import json

    from lbfood.engine.data import catalog, default_root
    from lbfood.engine.data.base import root_problem
    from lbfood.engine.errors import DataError
    from lbfood.output import render_eval

    root = data_root if data_root is not None else default_root()
    if problem := root_problem(root):  # else every dataset would show as missing, for no reason given
        raise DataError(problem)
    rows = catalog.describe(root)
    if json_out:
        keys = ("name", "role", "found", "count", "path")
        typer.echo(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
    else:
        render_eval.datasets(rows, root)

