"""The GPU benchmark's one call, in its CPU smoke mode: it must still run whole when a GPU is lent."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_smoke_runs_every_column_it_can_here():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--cases", "flux"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = run.stdout[run.stdout.index("| column |") :]
    # Easel and Diffusers time the same computation: their outputs agree.
    easel = next(line for line in table.splitlines() if line.startswith("| Easel eager |"))
    assert float(easel.split("|")[7]) < 1e-5
    assert "| Diffusers + regional compile |" in table and "CUDA graphs" in table
