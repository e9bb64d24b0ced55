"""The block-causal benchmark's smoke run: two blocks of a small causal Wan, with and without the KV cache."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_causal.py"


def test_bench_causal_smoke_reports_every_block():
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1"]
    assert "whole video: no cache" in run.stdout
