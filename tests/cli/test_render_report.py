"""lbfood.output.render_report: the paper row shown beside each run, and tables that fit 120 columns."""

from rich.console import Console

from lbfood.engine.evaluation.report import ReportResult, RunResult
from lbfood.output import render, render_eval, render_report

BASELINE = {"react": {"svhn": {"fpr95": 0.4310, "auroc": 0.9222}, "average": {"fpr95": 0.5056, "auroc": 0.8830}}}
OURS = {"react": {"svhn": {"fpr95": 0.1047, "auroc": 0.9775}, "average": {"fpr95": 0.3482, "auroc": 0.9231}}}


def _run(name, kind, lff, ood, methods, shift=0.0):
    cell = {"fpr95": 0.25 + shift, "auroc": 0.75 - shift, "aupr_in": 0.5, "aupr_out": 0.5}
    return RunResult(name=name, path=f"/home/someone/experiments/lbfood/runs/{name}", kind=kind, arch="resnet34",
                     width=1.0, data="cifar100", id_accuracy=0.75,
                     metrics={m: {ds: dict(cell) for ds in (*ood, "average")} for m in methods}, lff=lff)


def _result(runs, ood=("svhn",), methods=("react",), **kw):
    return ReportResult(id_data="cifar100", ood=tuple(ood), methods=tuple(methods), params={}, convention="paper",
                        runs=tuple(runs), data_root="/data", num_images={}, benchmark="cifar100",
                        paper=BASELINE, paper_ours=OURS, labels={"react": "ReAct"}, **kw)


def _text(result, all_metrics=False):
    """What `lbfood report` prints on a 120-column terminal."""
    import pytest

    console = Console(width=120, record=True, color_system=None, force_terminal=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(render, "console", console)
        render_eval.report(result, all_metrics=all_metrics)
    return console.export_text()


def test_lff_run_is_shown_beside_the_plus_ours_row_and_the_control_beside_the_baseline():
    lff = _result([_run("lff", "finetune", True, ["svhn"], ["react"])])
    control = _result([_run("ce", "finetune", False, ["svhn"], ["react"])])
    assert lff.paper_for(lff.runs[0], "react") == OURS["react"]
    assert control.paper_for(control.runs[0], "react") == BASELINE["react"]
    text = _text(lff)
    assert "paper +Ours" in text and "34.82" in text and "10.47" in text
    assert "50.56" not in text and "43.10" not in text
    text = _text(control)
    assert "paper" in text and "+Ours" not in text and "50.56" in text and "43.10" in text
    assert "34.82" not in text
    # No "+Ours" row for a method (here energy): nothing is shown beside an LFF run, not the baseline.
    no_row = _result([_run("lff", "finetune", True, ["svhn"], ["energy"])], methods=("energy",))
    assert "paper" not in _text(no_row).split("ID cifar100")[0]


def test_compared_runs_get_both_rows_each_named():
    runs = [_run("pre", "pretrain", False, ["svhn"], ["react"]), _run("lff", "finetune", True, ["svhn"], ["react"])]
    text = _text(_result(runs))
    assert "paper +Ours" in text and "50.56" in text and "34.82" in text
    assert render_report.run_labels(_result(runs)) == ["pretrained", "LFF"]


def test_three_runs_and_long_folder_paths_fit_120_columns():
    folders = [f"folder:/mnt/shared/datasets/ood-evaluation/very-long-directory-name-{i}/images/test/{name}"
               for i, name in enumerate(("scenes", "textures", "objects", "faces"))]
    ood = [*folders, "svhn"]
    methods = ("react", "energy", "msp")
    runs = [_run("20261128-101010-cifar100-resnet34", "pretrain", False, ood, methods),
            _run("20261128-121212-cifar100-resnet34-lff", "finetune", True, ood, methods, 0.1),
            _run("20261128-131313-cifar100-resnet34-ce", "finetune", False, ood, methods, 0.05)]
    labels = {f: f.rsplit("/", 1)[1] for f in folders} | {"svhn": "svhn"}
    labels[folders[3]] = "people"  # as given by --ood people=folder:PATH
    for all_metrics in (False, True):
        result = _result(runs, ood=ood, methods=methods, ood_labels=labels)
        text = _text(result, all_metrics)
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 120
        assert "…" not in text  # nothing was cut to make it fit
        tables = render_report.tables(result, Console(width=120), all_metrics)
        assert len(tables) >= 3  # one per method at least
        for name in ("scenes", "textures", "objects", "people"):
            assert any(line.startswith(f"│ {name} ") for line in lines), name
        for f in folders:  # the full paths are in the legend below the tables
            assert f in text.replace("\n", "")
        assert "35.00" in text and "65.00" in text  # the LFF run's FPR95 / AUROC cells, whole
