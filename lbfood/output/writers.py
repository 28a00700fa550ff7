"""Report files: JSON (everything), CSV (one row per run, method and dataset; fractions) or Markdown
(percentages with two decimals), chosen by the extension. The engine returns data; this writes it."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lbfood.engine import outputs
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import metrics
from lbfood.engine.io import atomic_write_bytes

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
    """Refuse, before any computing, an --output lbfood must not write (engine/outputs.py: a bad extension,
    a path inside a run folder, a link, a file lbfood did not write, a folder that is not writable).
    Returns the format."""
    fmt = output_format(path)
    outputs.check_file(path, "--output", ours=lambda p: is_report(p, fmt), what="the report")
    return fmt


_CSV_HEAD = ["run", "kind", "method", "dataset", *metrics.SUMMARY_KEYS, "id_accuracy", "convention",
             "paper_fpr95", "paper_auroc", "paper_row"]
_MD_HEAD = "# lbfood report"
_JSON_KEYS = {"id_data", "ood", "methods", "convention", "runs"}


def is_report(path: str | os.PathLike, fmt: str) -> bool:
    """Is `path` a report lbfood wrote in `fmt` (its CSV header, its Markdown title, its JSON keys)?"""
    try:
        with open(path, encoding="utf-8") as f:
            if fmt == "json":
                doc = json.load(f)
                return isinstance(doc, dict) and _JSON_KEYS <= set(doc)
            first = f.readline().rstrip("\n")
    except (OSError, ValueError, RecursionError):
        return False
    return first == (",".join(_CSV_HEAD) if fmt == "csv" else _MD_HEAD)


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
    w.writerow(_CSV_HEAD)
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
    lines = [_MD_HEAD, ""]
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

