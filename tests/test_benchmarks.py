"""The benchmark scripts still run (at tiny sizes, on the CPU): their figures are not checked here (speed
belongs in benchmarks/, not in timed tests), only that each script runs to its last line. A change to the
engine's API once broke `report_scaling.py` unnoticed until a GPU check needed it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "export_speed.py": ["--images", "16", "--fit-images", "40", "--repeats", "1", "--width", "0.125"],
    "export_agreement.py": ["--images", "8", "--fit-images", "40"],
    "far_gate.py": ["--tiny", "--images", "8"],
    "walk_speed.py": ["--files", "50", "--folders", "5", "--repeats", "1"],
    "sweep_overhead.py": ["--limit", "100", "--epochs", "1", "--repeats", "1", "--width", "0.125"],
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_script_runs(script, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY[script]], cwd=tmp_path,
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip(), "printed nothing"


def test_gpu_check_runs_every_step_in_its_cpu_smoke_mode(tmp_path):
    """The one-shot GPU script (issue 13) with the CPU's tiny sizes: every step (the other benchmark
    scripts and `lbfood pretrain`) must end with status 0; its exit code says so."""
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                       capture_output=True, text=True, env={**_env(), "PY": sys.executable}, timeout=900)
    summary = p.stdout[p.stdout.rfind("== summary"):]
    assert p.returncode == 0, summary + p.stderr[-2000:]
    assert summary.count("rc 0,") == summary.count("\n-- ") >= 8, summary
