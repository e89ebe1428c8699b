"""Compare samplers of one saved pipeline side by side, in one run, on the evaluation's classifier Fréchet distance
(`hf_ddpm_ncsn.evaluation`): the same held-out images, real-vs-real baseline, classifier and seed for every row.

    python scripts/compare_samplers.py --pipeline DIR --num_samples 1000 \\
        --setting '{}' --setting '{"sampler": "ode", "num_inference_steps": 10}'

Each --setting is a JSON object of the pipeline's sampling arguments; a row prints the network evaluations (UNet
calls, counted), the wall time, the Fréchet distance and its ratio to the baseline. --output writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hf_ddpm_ncsn.data import DIGITS
from hf_ddpm_ncsn.evaluation.feature_classifier import load_images, load_or_train_classifier
from hf_ddpm_ncsn.evaluation.loading import load_pipeline
from hf_ddpm_ncsn.evaluation.report import CLASSIFIER_SEED
from hf_ddpm_ncsn.evaluation.sample_quality import generate_samples, sample_quality


def _count_unet_calls(pipe) -> list[int]:
    """A counter of the UNet's forward calls (each one batched call), by a forward hook."""
    calls = [0]
    pipe.unet.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", action="append", type=json.loads, required=True)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    held_out, _ = load_images(dataset_name=DIGITS, split="test", resolution=size, channels=channels)
    train, _ = load_images(dataset_name=DIGITS, split="train", resolution=size, channels=channels)
    # the evaluation's baseline: as many training images as samples, drawn with the seed
    baseline = train[np.sort(np.random.default_rng(args.seed).permutation(len(train))[: args.num_samples])]
    classifier = load_or_train_classifier(
        dataset_name=DIGITS, resolution=8, channels=channels, seed=CLASSIFIER_SEED, train_data_dir=None
    )
    calls = _count_unet_calls(pipe)
    rows = []
    for setting in args.setting:
        calls[0] = 0
        tick = time.perf_counter()
        samples = generate_samples(pipe, args.num_samples, args.batch_size, args.seed, **setting)
        seconds = time.perf_counter() - tick
        batches = -(-args.num_samples // args.batch_size)
        quality = sample_quality(samples, held_out, baseline, classifier)
        fd, fd_real = quality["classifier_frechet_distance"], quality["classifier_frechet_distance_real_baseline"]
        row = {
            "setting": setting,
            "nfe": calls[0] // batches,
            "seconds": seconds,
            "frechet": fd,
            "ratio": fd / fd_real,
        }
        rows.append({**row, "frechet_real_baseline": fd_real})
        print(
            f"{json.dumps(setting):70s} NFE {row['nfe']:4d}  {seconds:7.1f} s  Fréchet {fd:.3f}  "
            f"ratio {row['ratio']:.2f} (baseline {fd_real:.3f})",
            flush=True,
        )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
