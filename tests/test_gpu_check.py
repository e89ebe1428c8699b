"""scripts/gpu_check.py end to end on the CPU (--quick, bf16 only): every step but the CUDA-specific ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_writes_the_table(tmp_path):
    script = ROOT / "scripts" / "gpu_check.py"
    subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--quick", "--output_dir", str(tmp_path)], check=True
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["family"], r["precision"]) for r in report["rows"]] == [("ddpm", "bf16"), ("ncsn", "bf16")]
    for row in report["rows"]:
        assert row["train_img_s"] > 0 and row["sample_img_s"] > 0 and row["ode_img_s"] > 0
    assert report["rows"][0]["elbo_bpd"] > 0
    assert report["evaluate"]["device"] == "cpu" and report["evaluate"]["stratified_bpd"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "CPU (not a GPU measurement)" in table and "| DDPM | bf16 |" in table and "| NCSN | bf16 |" in table
    assert "`scripts/evaluate.py --device cpu` on the bf16 DDPM ran on cpu" in table
    assert json.loads((tmp_path / "benchmark.json").read_text())["rows"]
