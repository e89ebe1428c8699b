"""README's first command runs scripts/main_job.py; its --quick mode exercises the same path end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_main_job_trains_samples_and_evaluates_both_families(tmp_path):
    out = tmp_path / "main"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "main_job.py"), "--quick", "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DDPM_NCSN_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary) == {"ncsn", "ddpm"}
    assert "bits_per_dim" in summary["ddpm"]["metrics"] and "bits_per_dim" not in summary["ncsn"]["metrics"]
    for family in ("ncsn", "ddpm"):
        metrics = summary[family]["metrics"]
        assert "classifier_frechet_distance_real_baseline" in metrics
        folder = out / family
        for name in ("model_index.json", "samples.png", "README.md", "eval/report.json", "eval/samples.png"):
            assert (folder / name).is_file(), (family, name)
        assert "classifier_frechet_distance" in (folder / "README.md").read_text()  # the card got the numbers
    assert (out / "ddpm" / "eval" / "elbo_terms.png").is_file() and (out / "loss_curves.png").is_file()
    assert "real-vs-real baseline" in result.stdout
