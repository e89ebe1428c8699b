"""Evaluate a trained NCSN or DDPM pipeline offline; see `hf_ddpm_ncsn.evaluation` for what each number means.

    python scripts/evaluate.py --pipeline out/ddpm-digits --num_samples 1000

writes report.json, samples.png and (DDPM) elbo_terms.png to --output_dir and prints a table of the metrics, each
beside its real-vs-real baseline: the classifier Fréchet distance also as a ratio to the baseline's mean over
--baseline_draws draws of training images, with the draws' spread and the bootstrap spread from the held-out
images (--reference_bootstraps).
"""

from __future__ import annotations

import logging
import sys

from hf_ddpm_ncsn.evaluation import evaluate, format_report
from hf_ddpm_ncsn.evaluation.arguments import EvaluationArguments, parse_evaluation_arguments
from hf_ddpm_ncsn.evaluation.distributed import ProcessFailedError, current_shard


def parse_args(argv: list[str] | None = None) -> EvaluationArguments:
    """The script's arguments (`hf_ddpm_ncsn.evaluation.arguments`); a bad one exits with code 2."""
    return parse_evaluation_arguments(argv, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print the table; returns the exit code (2: bad arguments, 1: the evaluation failed)."""
    args = parse_args(argv)
    shard = current_shard()  # under `accelerate launch`, the main process alone logs its progress and prints
    logging.basicConfig(
        level=logging.INFO if shard.is_main else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    try:
        report = evaluate(args.pipeline, **args.evaluate_kwargs())
    # a bad folder, a refused argument, an unreachable Hub, another process's failure: one line, no traceback
    except (ValueError, OSError, ProcessFailedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if shard.is_main:
        print(format_report(report))
        print("wrote " + ", ".join(report["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
