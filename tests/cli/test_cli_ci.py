"""lbfood in a user's CI, through the command line: `report --gate`, `score --max-ood-share`,
`demo --quick`, and `demo --out` never deleting anything but the demo's own runs."""

import json

import fakedata
import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import demo

runner = CliRunner()
OOD = ("backdrops-scenes", "backdrops-novel", "backdrops-noise")
CPU = ("--device", "cpu", "-q")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lines(r, prefix):
    return [ln for ln in r.output.splitlines() if ln.startswith(prefix)]


@pytest.fixture
def run(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path)


def test_report_gates_hold_fail_and_are_recorded(run, make_run, tmp_path):
    base = invoke("report", "--method", "energy,msp", "--output", "base.json", *CPU)
    assert base.exit_code == 0 and "gate failed" not in base.output and "gates held" not in base.output, base.output
    (res,) = json.loads((tmp_path / "base.json").read_text())["runs"]
    m, acc = res["metrics"], res["id_accuracy"]
    assert json.loads((tmp_path / "base.json").read_text())["gates"] == []
    auroc, fpr_noise = m["energy"]["average"]["auroc"], m["msp"]["backdrops-noise"]["fpr95"]
    assert min(m["energy"]["average"]["fpr95"], m["msp"]["average"]["fpr95"]) > 0

    # Bounds equal to the values (100·fraction need not be exact in floats): <= and >= hold.
    held = invoke("report", "--method", "energy,msp", "--output", "held.json", *CPU,
                  "--gate", f"energy.auroc>={100 * auroc!r}",
                  "--gate", f"msp.backdrops-noise.fpr95<={100 * fpr_noise!r}",
                  "--gate", f"id_acc>={acc!r}", "--gate", "aupr_in>=0%")
    assert held.exit_code == 0, held.output
    assert "Average" in held.output and lines(held, "gates held:") == ["gates held: 5 check(s) of 4 gate(s)"]
    records = json.loads((tmp_path / "held.json").read_text())["gates"]
    assert [(g["method"], g["dataset"], g["metric"], g["op"], g["passed"]) for g in records] == [
        ("energy", "average", "auroc", ">=", True), ("msp", "backdrops-noise", "fpr95", "<=", True),
        (None, None, "id_acc", ">=", True), ("energy", "average", "aupr_in", ">=", True),
        ("msp", "average", "aupr_in", ">=", True)]
    assert records[0]["value"] == 100 * auroc and records[0]["bound"] == 100 * auroc
    assert records[2]["value"] == acc and records[4]["value"] == 100 * m["msp"]["average"]["aupr_in"]

    # Strict bounds at the same values fail; a gate without a method checks every method. With
    # --compare, gates apply to the --model run only.
    other = make_run(tmp_path, seed=1, name="other")
    failed = invoke("report", "--model", run, "--method", "energy,msp", "--compare", other, "--output", "failed.json", *CPU,
                    "--gate", f"energy.auroc>{100 * auroc!r}", "--gate", "fpr95<=0", "--gate", f"id_acc<{acc!r}",
                    "--gate", "msp.auroc>=0")
    assert failed.exit_code == 1, failed.output
    assert "Average" in failed.output
    f_energy, f_msp = (100 * m[k]["average"]["fpr95"] for k in ("energy", "msp"))
    assert lines(failed, "gate failed:") == [
        f"gate failed: energy average auroc = {100 * auroc:.2f} %, bound > {100 * auroc:g} % "
        f"(gate energy.auroc>{100 * auroc!r})",
        f"gate failed: energy average fpr95 = {f_energy:.2f} %, bound <= 0 % (gate fpr95<=0)",
        f"gate failed: msp average fpr95 = {f_msp:.2f} %, bound <= 0 % (gate fpr95<=0)",
        f"gate failed: ID id_acc = {acc:.4f}, bound < {acc:g} (gate id_acc<{acc!r})"]
    got = json.loads((tmp_path / "failed.json").read_text())
    assert got["runs"][0]["metrics"] == m  # the --model run, unchanged by the comparison
    assert got["gates"] == [
        {"gate": f"energy.auroc>{100 * auroc!r}", "method": "energy", "dataset": "average", "metric": "auroc",
         "op": ">", "bound": 100 * auroc, "value": 100 * auroc, "passed": False},
        {"gate": "fpr95<=0", "method": "energy", "dataset": "average", "metric": "fpr95", "op": "<=",
         "bound": 0.0, "value": f_energy, "passed": False},
        {"gate": "fpr95<=0", "method": "msp", "dataset": "average", "metric": "fpr95", "op": "<=",
         "bound": 0.0, "value": f_msp, "passed": False},
        {"gate": f"id_acc<{acc!r}", "method": None, "dataset": None, "metric": "id_acc", "op": "<",
         "bound": acc, "value": acc, "passed": False},
        {"gate": "msp.auroc>=0", "method": "msp", "dataset": "average", "metric": "auroc", "op": ">=",
         "bound": 0.0, "value": 100 * m["msp"]["average"]["auroc"], "passed": True}]


@pytest.mark.parametrize("gate,needle", [
    ("fpr95=30", "--gate 'fpr95=30': expected [METHOD.][DATASET.]METRIC OP BOUND"),
    ("fpr90<=30", "unknown metric 'fpr90'"),
    ("id_acc>=90", "id_acc is a fraction from 0 to 1"),
    ("react.auroc>=90", "method react is not reported; add --method react"),
    ("svhn.fpr95<=20", "svhn is neither a scorer nor an OOD dataset of this report; OOD datasets: "
                       "backdrops-scenes, backdrops-novel, backdrops-noise; methods: energy"),
    ("energy.svhn.fpr95<=20", "svhn is not an OOD dataset of this report"),
])
def test_report_gate_usage_errors_come_before_any_computing(run, gate, needle):
    r = invoke("report", "--method", "energy", "--gate", "fpr95<=30", "--gate", gate, *CPU)
    one_error_line(r, needle)
    assert not (run / "cache").exists() and not (run / "scorers").exists()


def test_score_max_ood_share(run, tmp_path):
    folder = tmp_path / "incoming"
    fakedata.write_flat_folder(folder, n=4)
    args = ("score", folder, "--method", "energy", "--device", "cpu", "--no-far-gate")  # verdicts of the score alone
    everything = invoke(*args, "--threshold", "-1e9", "--json")
    assert everything.exit_code == 0, everything.output
    scores = sorted(json.loads(ln)["score"] for ln in everything.stdout.splitlines())
    assert len(set(scores)) == 4
    thr = (scores[1] + scores[2]) / 2  # the two lowest scores are OOD
    at_max = invoke(*args, "--threshold", thr, "--max-ood-share", "0.5")
    assert at_max.exit_code == 0, at_max.output
    assert lines(at_max, "OOD share") == ["OOD share: 2 of 4 scored image(s) called OOD = 50.00 % <= max 50.00 %"]
    over = invoke(*args, "--threshold", thr, "--max-ood-share", "0.25", "--json")
    assert over.exit_code == 3, over.output
    assert lines(over, "OOD share") == ["OOD share exceeded: 2 of 4 scored image(s) called OOD = 50.00 % > max "
                                        "25.00 %"]
    assert [json.loads(ln)["verdict"] for ln in over.stdout.splitlines() if ln.startswith("{")].count("OOD") == 2
    # An unreadable file is not counted; exceeding the share (3) wins over a failed file (1).
    (folder / "notes.txt").write_text("not an image")
    both = invoke(*args, "--threshold", thr, "--max-ood-share", "0.25")
    assert both.exit_code == 3 and "1 of 5 file(s) could not be scored" in both.output
    assert lines(both, "OOD share") == ["OOD share exceeded: 2 of 4 scored image(s) called OOD = 50.00 % > max "
                                        "25.00 %"]
    within = invoke(*args, "--threshold", thr, "--max-ood-share", "0.5")
    assert within.exit_code == 1 and lines(within, "OOD share: 2 of 4")
    one_error_line(invoke(*args, "--max-ood-share", "5"), "--max-ood-share is a fraction from 0 to 1 (0.05 = 5 %)")


def _fake_demo_run(path):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"format": 1, "lbfood": "0.1.0", "kind": "pretrain"}))
    (path / "model.safetensors").write_bytes(b"weights")


def test_prepare_out_removes_only_the_demo_runs(tmp_path):
    out = tmp_path / "demo"
    assert demo.prepare_out(out) == [] and not out.exists()
    for name in demo.RUN_NAMES:
        _fake_demo_run(out / name)
    assert [p.name for p in demo.prepare_out(out)] == sorted(demo.RUN_NAMES)
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize("layout", ["plain files", "a run among plain files", "a run under another name",
                                    "a demo name without run.json", "a link to a run", "a file"])
def test_demo_out_refuses_anything_but_demo_runs(tmp_path, monkeypatch, layout):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "docs"
    if layout == "a file":
        out.write_text("my notes")
    else:
        out.mkdir()
    if layout in ("plain files", "a run among plain files"):
        (out / "thesis.txt").write_text("four years of work")
        (out / "results.csv").write_text("a,b\n1,2\n")
    if layout == "a run among plain files":
        _fake_demo_run(out / "pretrained")
    if layout == "a run under another name":
        _fake_demo_run(out / "my-run")
    if layout == "a demo name without run.json":
        (out / "lff").mkdir()
        (out / "lff" / "draft.md").write_text("draft")
    if layout == "a link to a run":
        _fake_demo_run(tmp_path / "elsewhere")
        (out / "pretrained").symlink_to(tmp_path / "elsewhere")
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = invoke("demo", "--out", out, "--quick", *CPU)
    if layout == "a file":
        one_error_line(r, f"--out {out} is a file")
    else:
        one_error_line(r, f"--out {out} holds ", "which is not an lbfood demo run; nothing was deleted")
    assert {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "runs").exists()


def test_demo_quick_runs_the_four_steps(tmp_path, monkeypatch):
    """The whole smoke run, as a user's CI runs it (about 20-50 s on the shared 2-core machine)."""
    monkeypatch.chdir(tmp_path)
    r = invoke("demo", "--quick", "--out", "demo", *CPU)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(demo.RUN_NAMES)
    for name, kind in (("pretrained", "pretrain"), ("lff", "finetune"), ("ce-only", "finetune")):
        meta = json.loads((tmp_path / "demo" / name / "run.json").read_text())
        assert (meta["status"], meta["kind"], meta["width"]) == ("done", kind, demo.QUICK_WIDTH)
        assert meta["config"]["limit"] == demo.QUICK_LIMIT == 256
        assert (meta["far_gate"]["method"], meta["far_gate"]["keep"]) == ("fargate", 0.997)  # calibrated with it
    assert json.loads((tmp_path / "demo" / "lff" / "run.json").read_text())["config"]["lam"] == 1.0
    assert json.loads((tmp_path / "demo" / "ce-only" / "run.json").read_text())["config"]["lam"] == 0.0
    for step in ("1/4 pretrain", "2/4 fine-tune with CE + λ·L_LFF", "3/4 fine-tune with CE only", "4/4 report"):
        assert step in r.output
    assert "256 train / 256" in r.output
    for row in (*OOD, "Average"):
        assert row in r.output
    assert "the numbers are not meaningful at that size" in r.output
    for case in ("uniform noise", "blank frames"):  # the closing table shows the far-OOD gate's cases
        assert case in r.output


def test_quick_threads_uses_one_thread_unless_the_user_chose(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    try:
        with demo.quick_threads():
            assert torch.get_num_threads() == 1 and demo.os.environ["OMP_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 2 and "OMP_NUM_THREADS" not in demo.os.environ
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with demo.quick_threads():
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_score_max_ood_share_with_no_readable_image_says_so(run, tmp_path):
    """Was: "0 of 0 scored image(s) called OOD = 0.00 % <= max", as if the check had passed."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    r = invoke("score", folder, "--method", "energy", "--threshold", "0", "--max-ood-share", "0.5", "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert lines(r, "OOD share") == ["OOD share not checked: none of the 2 file(s) could be read (see the errors "
                                     "above), so no image was scored"]
    assert "within" not in r.output and "<= max" not in r.output
