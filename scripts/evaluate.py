"""Evaluate a trained NCSN or DDPM pipeline offline; see `hf_ddpm_ncsn.evaluation` for what each number means.

    python scripts/evaluate.py --pipeline out/ddpm-digits --num_samples 1000

writes report.json, samples.png and (DDPM) elbo_terms.png to --output_dir and prints a table of the metrics, each
beside its real-vs-real baseline.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

# owner/name or name, as the Hub spells repo ids
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def _pipeline(text: str) -> str:
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "model_index.json")):
            raise argparse.ArgumentTypeError(f"{text} has no model_index.json: it is not a saved diffusers pipeline")
        return text
    if os.path.exists(text) or text.startswith((".", "/", "~")) or not _REPO_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text} is neither an existing pipeline folder nor a Hub repo id")
    return text


def _existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not an existing directory")
    return text


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist (expected a TorchScript feature-extractor file)")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pipeline",
        type=_pipeline,
        required=True,
        help="A saved NCSNPipeline / DDPMPosteriorPipeline folder, a diffusers DDPMPipeline folder, or a Hub repo id.",
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset_name",
        default=None,
        help="The training dataset (a datasets name); default: the embedded scikit-learn digits.",
    )
    data.add_argument(
        "--train_data_dir",
        type=_existing_dir,
        default=None,
        help="A local image folder instead (one sub-folder per class gives the labels the classifier metrics need).",
    )
    parser.add_argument("--image_column", default=None, help="The image column (default: the first image feature).")
    parser.add_argument("--num_samples", type=_count(2), default=1000, help="Images to generate (default: 1000).")
    parser.add_argument(
        "--num_elbo_images",
        type=_count(1),
        default=None,
        help="Held-out images whose bits/dim are computed (DDPM; default: all of them, 180 for the digits).",
    )
    parser.add_argument(
        "--elbo_strata",
        type=_count(0),
        default=50,
        help="K of the stratified ELBO estimate, one timestep per stratum and image (default: 50; 0 skips it).",
    )
    parser.add_argument(
        "--batch_size",
        type=_count(1),
        default=256,
        help="Images per sampling call, UNet inputs per ELBO call (default: 256).",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of sampling, ELBO noise and the baseline images (default: 0)."
    )
    parser.add_argument(
        "--inception_weights",
        type=_existing_file,
        default=None,
        help="A local TorchScript Inception feature extractor (float images in [0, 255], (N, 3, 299, 299) -> "
        "(N, 2048)) to also compute FID and KID; without it they are skipped, with a note in the report.",
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Where report.json, samples.png and elbo_terms.png go (default: <pipeline>/eval for a folder, "
        "eval-<name> for a Hub repo id).",
    )
    parser.add_argument(
        "--num_inference_steps",
        type=_count(1),
        default=None,
        help="Sampling steps (DDPM: a respaced chain; NCSN: noise levels visited); default: all trained ones.",
    )
    parser.add_argument(
        "--num_langevin_steps",
        type=_count(1),
        default=None,
        help="NCSN only: Langevin updates per noise level (default: the scheduler's).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print the table; returns the exit code (2: bad arguments, 1: the evaluation failed)."""
    args = parse_args(argv)
    # imported after parsing so that --help and argument errors answer at once
    from hf_ddpm_ncsn.evaluation import default_output_dir, evaluate, format_report

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sampling = {"num_inference_steps": args.num_inference_steps, "num_langevin_steps": args.num_langevin_steps}
    sample_kwargs = {name: value for name, value in sampling.items() if value is not None}
    try:
        report = evaluate(
            args.pipeline,
            dataset_name=args.dataset_name,
            train_data_dir=args.train_data_dir,
            image_column=args.image_column,
            num_samples=args.num_samples,
            num_elbo_images=args.num_elbo_images,
            elbo_strata=args.elbo_strata,
            batch_size=args.batch_size,
            seed=args.seed,
            inception_weights=args.inception_weights,
            output_dir=args.output_dir or default_output_dir(args.pipeline),
            sample_kwargs=sample_kwargs,
        )
    except (ValueError, OSError) as err:  # a bad folder, a refused argument, an unreachable Hub: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    print("wrote " + ", ".join(report["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
