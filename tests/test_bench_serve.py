"""The serving benchmark's smoke run: two `easel serve` subprocesses on the demo model, driven under load."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py"


def test_bench_serve_smoke_runs_both_modes_and_their_answers_agree():
    # One torch thread per server, as the other server tests pin it: two on a busy 2-core machine stall each other.
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--threads", "1"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    table = run.stdout[run.stdout.index("| clients | requests | one-at-a-time img/s | batched img/s |") :]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"]
    assert "max pixel difference" in table and "(ok)" in table
