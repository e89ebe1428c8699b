#!/usr/bin/env python
"""The main job: train an NCSN and a DDPM on the embedded digits on CPU, sample a grid from each, evaluate both
(bits/dim through the probability-flow ODE for both and the DDPM's ELBO, beside the bits/dim of reference models
fitted on the training split; classifier-feature metrics beside their real-vs-real baselines for both), and write
everything under one folder:

    <output_dir>/ncsn/     the NCSN pipeline (safetensors), samples.png, README.md (model card), eval/
    <output_dir>/ddpm/     the same for the DDPM, with eval/elbo_terms.png
    <output_dir>/loss_curves.png, <output_dir>/metrics.json

`--quick` runs a tiny version of the same job in about a minute (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hf_ddpm_ncsn.evaluation import evaluate, format_report
from hf_ddpm_ncsn.plots import line_plot
from hf_ddpm_ncsn.training import main as train
from hf_ddpm_ncsn.training import write_model_card

# the training settings of each family, measured to give recognisable digits within the time budget on 2 CPU cores
# (see README, "Results"): one complete YAML file per family, read by the training scripts' --config
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "main_job"
FAMILIES = ("ncsn", "ddpm")
# the ODE at tolerance 1e-4 rather than the evaluation's 1e-5: half the network calls, and on the main job's models
# the two differed by less than the standard error over images (see README, "Results")
EVALUATION = {"num_samples": 500, "elbo_strata": 25, "ode_rtol": 1e-4, "ode_atol": 1e-4}
# --quick: the same job with a tiny UNet and a few steps, to check the whole path in about a minute
QUICK_TRAIN = ["--max_train_steps", "30", "--block_out_channels", "8", "16", "--num_preview_images", "16",
               "--checkpointing_steps", "10"]  # fmt: skip
QUICK_FAMILY = {"ncsn": ["--num_langevin_steps", "3"], "ddpm": ["--ddpm_num_steps", "20"]}
QUICK_EVALUATION = {"num_samples": 64, "elbo_strata": 5, "num_elbo_images": 32, "kid_subset_size": 64}


def train_argv(family: str, output_dir: Path, quick: bool) -> list[str]:
    """The training arguments of `family`: its config file, the --quick overrides, the output folder."""
    quick_argv = QUICK_TRAIN + QUICK_FAMILY[family] if quick else []
    return ["--config", str(CONFIGS / f"{family}.yaml"), *quick_argv, "--output_dir", str(output_dir)]


def run(output_dir: Path, quick: bool) -> dict:
    summary: dict = {}
    for family in FAMILIES:
        out = output_dir / family
        argv = train_argv(family, out, quick)
        start = time.perf_counter()
        if train(family, argv) != 0:
            raise SystemExit(f"training the {family} failed; see the log above")
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        report = evaluate(out, output_dir=out / "eval", **(QUICK_EVALUATION if quick else EVALUATION))
        write_model_card(out)  # now with the evaluation numbers
        print(f"\n== {family} ==\n{format_report(report)}")
        training = json.loads((out / "metrics.json").read_text())
        summary[family] = {
            "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1),
            "steps": training["global_step"],
            "final_loss": training["final_loss"],
            "metrics": report["model_card_metrics"],
            "samples": str(out / "samples.png"),
        }
        summary[family]["loss_history"] = training["loss_history"]
    line_plot(
        {f: [tuple(p) for p in summary[f].pop("loss_history")] for f in FAMILIES},
        output_dir / "loss_curves.png",
        title="Training loss (per step)",
        xlabel="optimisation step",
        ylabel="loss",
        log_y=True,
    )
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/main", help="Where everything is written.")
    parser.add_argument("--quick", action="store_true", help="A tiny version of the job (about a minute).")
    args = parser.parse_args()
    start = time.perf_counter()
    summary = run(Path(args.output_dir), args.quick)
    print(f"\nmain job done in {time.perf_counter() - start:.0f} s; results in {args.output_dir}/metrics.json")
    print(json.dumps({f: s["metrics"] for f, s in summary.items()}, indent=2))
    print(likelihood_summary(summary))
    return 0


def likelihood_summary(summary: dict) -> str:
    """One line per likelihood, in bits/dim on the same held-out images: each model's ODE (NCSN first), the DDPM's
    ELBO and stratified ELBO, then the reference models."""
    lines = ["likelihood on the held-out images (bits/dim; lower is better):"]
    names = {
        "bits_per_dim_ode": "probability-flow ODE",
        "bits_per_dim": "ELBO",
        "bits_per_dim_stratified": "ELBO, stratified",
    }
    for family in FAMILIES:
        metrics = summary[family]["metrics"]
        lines += [f"  {family} {label}: {metrics[key]:.3f}" for key, label in names.items() if key in metrics]
    references = summary[FAMILIES[0]]["metrics"]
    lines += [
        f"  reference, {key.removeprefix('bits_per_dim_baseline_').replace('_', ' ')}: {value:.3f}"
        for key, value in references.items()
        if key.startswith("bits_per_dim_baseline_")
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
