"""scripts/benchmark.py on a tiny model: every row is produced, with finite ratios (speed goals are not tested)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_benchmark_runs_every_comparison_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    tiny = ["--resolution", "8", "--channels", "8", "16", "--batch_size", "4", "--repeats", "1", "--train_steps", "2"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *tiny, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("machine:") and "torch" in result.stdout.splitlines()[0]
    rows = json.loads(out.read_text())["rows"]
    names = " ".join(r["benchmark"] for r in rows)
    for expected in ("DDPMScheduler.step", "NCSNScheduler.step", "NCSNPipeline", "DDPMPosteriorPipeline vs", "elbo",
                     "Hutchinson", "exact trace", "training loop vs bare loop", "2 gloo processes",
                     "evaluation, samples", "evaluation, ELBO images", "evaluation, ODE images"):  # fmt: skip
        assert expected in names, expected
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows)
