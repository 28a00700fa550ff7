"""Report files: JSON (everything), CSV (one row per run, method and dataset; fractions) or Markdown
(percentages with two decimals), chosen by the extension. The engine returns data; this writes it."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import metrics
from lbfood.engine.io import atomic_write_bytes, storage_error

if TYPE_CHECKING:
    from lbfood.engine.evaluation.report import ReportResult

OUTPUT_FORMATS = {".json": "json", ".csv": "csv", ".md": "md", ".markdown": "md"}


def output_format(path: str | os.PathLike) -> str:
    """"json", "csv" or "md" from the file's extension; anything else raises ConfigError."""
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise ConfigError(f"--output {path}: unknown extension {ext or '(none)'!r}; use .json, .csv or .md")
    return OUTPUT_FORMATS[ext]


def check_output(path: str | os.PathLike) -> str:
    """Refuse, before any computing, an --output that could not be written or would damage a run: a bad
    extension, a path inside a run folder (a folder with run.json), a folder that is not writable.
    Returns the format."""
    fmt = output_format(path)
    target = Path(path).expanduser().absolute()
    if (folder := runs.enclosing_run(target)) is not None:
        raise ConfigError(f"--output {path} is inside the run folder {folder}; lbfood owns that folder: "
                          "write the report elsewhere")
    if target.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name ending in .json, .csv or .md")
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), target.parent)
    if not folder.is_dir():
        raise ConfigError(f"--output {path}: {folder} is not a folder; choose another place for the report")
    probe = folder / f".lbfood-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")  # a byte, flushed: a full disk shows here, not after the report is computed
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as e:
        e.filename = str(target)  # the message names the report, and its folder as the one to fix
        raise storage_error(target, e) from None
    return fmt


def write_report(result: ReportResult, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write `result` as JSON (everything), CSV (one row per run, method and dataset; fractions) or
    Markdown (percentages with two decimals), chosen by the extension; atomically."""
    fmt = fmt or output_format(path)
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2) + "\n"
    elif fmt == "csv":
        text = _csv(result)
    else:
        text = _markdown(result)
    atomic_write_bytes(path, text.encode("utf-8"))


def _datasets(result: ReportResult) -> list[str]:
    return [*result.ood, "average"]


def _csv(result: ReportResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "kind", "method", "dataset", *metrics.SUMMARY_KEYS, "id_accuracy", "convention",
                "paper_fpr95", "paper_auroc", "paper_row"])
    for run in result.runs:
        for m in result.methods:
            for ds in _datasets(result):
                cell = run.metrics[m][ds]
                paper = result.paper_for(run, m).get(ds, {})
                w.writerow([run.name, run.kind, m, ds, *(repr(cell[k]) for k in metrics.SUMMARY_KEYS),
                            repr(run.id_accuracy), result.convention,
                            repr(paper["fpr95"]) if paper else "", repr(paper["auroc"]) if paper else "",
                            ("+Ours" if run.lff else "baseline") if paper else ""])
    return buf.getvalue()


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:.2f}"


def _markdown(result: ReportResult) -> str:
    lines = ["# lbfood report", ""]
    conv = "ID positive (paper)" if result.convention == "paper" else "OOD positive (OpenOOD)"
    lines.append(f"ID: {result.id_data} (test split) · FPR95 convention: {conv}"
                 + (f" · benchmark: {result.benchmark}" if result.benchmark else ""))
    lines.append("")
    for run in result.runs:
        lines.append(f"- {run.name} ({run.kind}, {run.arch} ×{run.width:g}): ID accuracy {_pct(run.id_accuracy)} %")
    lines.append("")
    has_paper = bool(result.paper or result.paper_ours)
    head = ["Run", "Method", "Dataset", "FPR95↓", "AUROC↑", "AUPR-In↑", "AUPR-Out↑"]
    if has_paper:
        head += ["Paper FPR95↓", "Paper AUROC↑", "Paper row"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for run in result.runs:
        for m in result.methods:
            for ds in _datasets(result):
                cell = run.metrics[m][ds]
                row = [run.name, result.labels.get(m, m), "Average" if ds == "average" else ds,
                       *(_pct(cell[k]) for k in metrics.SUMMARY_KEYS)]
                if has_paper:
                    paper = result.paper_for(run, m).get(ds)
                    row += [_pct(paper["fpr95"]) if paper else "", _pct(paper["auroc"]) if paper else "",
                            ("+Ours" if run.lff else "baseline") if paper else ""]
                lines.append("| " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
    lines.append("")
    lines.append("All values are percentages. " + "; ".join(
        f"{m}: {json.dumps(p, sort_keys=True)}" for m, p in result.params.items()))
    return "\n".join(lines) + "\n"

