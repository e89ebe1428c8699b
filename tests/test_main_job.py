"""README's first command runs scripts/main_job.py; its --quick mode exercises the same path end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_ddpm_ncsn.evaluation import BASELINE_MODELS

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
    # both families have a likelihood through the ODE; the printed summary lists NCSN's first, then the DDPM's
    # ODE, ELBO and stratified ELBO, then the references
    assert all("bits_per_dim_ode" in summary[family]["metrics"] for family in ("ncsn", "ddpm"))
    summary_lines = result.stdout[result.stdout.index("likelihood on the held-out images") :].splitlines()[1:]
    labels = [line.split(":")[0].strip() for line in summary_lines if line.startswith("  ")]
    assert labels[:4] == [
        "ncsn probability-flow ODE",
        "ddpm probability-flow ODE",
        "ddpm ELBO",
        "ddpm ELBO, stratified",
    ]
    value = float(summary_lines[0].split(":")[1])
    assert value == pytest.approx(summary["ncsn"]["metrics"]["bits_per_dim_ode"], abs=5e-4)
    assert [label.removeprefix("reference, ") for label in labels[4:]] == [
        m.replace("_", " ") for m in BASELINE_MODELS
    ]
    # both families stand beside the same reference models: fitted on the same training split, measured on the
    # same held-out images
    references = [f"bits_per_dim_baseline_{model}" for model in BASELINE_MODELS]
    assert [summary["ncsn"]["metrics"][name] for name in references] == [
        summary["ddpm"]["metrics"][name] for name in references
    ]
    for family in ("ncsn", "ddpm"):
        metrics = summary[family]["metrics"]
        assert "classifier_frechet_distance_real_baseline" in metrics
        folder = out / family
        for name in ("model_index.json", "samples.png", "README.md", "eval/report.json", "eval/samples.png"):
            assert (folder / name).is_file(), (family, name)
        card = (folder / "README.md").read_text()
        assert "classifier_frechet_distance" in card and "bits_per_dim_baseline_shared_histogram" in card
    assert (out / "ddpm" / "eval" / "elbo_terms.png").is_file() and (out / "loss_curves.png").is_file()
    assert "real-vs-real baseline" in result.stdout
    for row in ("per-pixel histogram, add-0.01", "per-pixel histogram, add-one", "shared histogram, add-0.01"):
        assert result.stdout.count(f"bits_per_dim reference: {row}") == 2, row  # in each family's table
    assert result.stdout.count("bits_per_dim reference: uniform over the 17 levels") == 2
