"""Inpaint the bottom half of the held-out digits with trained pipelines and report how often the evaluation's digit
classifier recognises the completed digit as the original's class, beside the floor (the bottom half filled with the
training mean) and the ceiling (the unmasked originals).

    OMP_NUM_THREADS=1 python scripts/inpainting_eval.py --ncsn /tmp/runs/main-ncsn --ddpm /tmp/runs/main-ddpm

The logic lives in `hf_ddpm_ncsn.evaluation.inpainting`; this prints its Markdown table.
"""

from __future__ import annotations

import argparse

import torch

from hf_ddpm_ncsn.evaluation import load_images, load_or_train_classifier
from hf_ddpm_ncsn.evaluation.feature_classifier import accuracy
from hf_ddpm_ncsn.evaluation.inpainting import (
    InpaintingScore,
    bottom_half_mask,
    format_inpainting_table,
    mean_fill,
    nearest_neighbour_fill,
    score_inpainting,
)
from hf_ddpm_ncsn.evaluation.loading import load_pipeline


def _guidance_name(scale: float) -> str:
    return "" if scale == 0 else f", reconstruction guidance w={scale:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ncsn", help="a saved NCSNPipeline folder")
    parser.add_argument("--ddpm", help="a saved DDPMPosteriorPipeline folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ncsn_num_langevin_steps", type=int, nargs="*", default=[None], help="Langevin steps per level to run"
    )
    parser.add_argument("--ddpm_jump_n_sample", type=int, nargs="*", default=[1], help="RePaint settings to run")
    parser.add_argument("--ddpm_jump_length", type=int, default=10)
    parser.add_argument(
        "--reconstruction_guidance_scales",
        type=float,
        nargs="*",
        default=[0.0],
        help="reconstruction guidance weights to run with every setting above (0 = plain replacement)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    classifier = load_or_train_classifier()
    images, labels = load_images(split="test")
    train_images, _ = load_images(split="train")
    mask = bottom_half_mask(*images.shape[-2:])
    rows = [
        InpaintingScore("originals (ceiling)", accuracy(classifier, images, labels), 0, 0.0),
        InpaintingScore(
            "bottom half = training mean (floor)",
            accuracy(classifier, mean_fill(images, mask, train_images), labels),
            0,
            0.0,
        ),
        InpaintingScore(
            "bottom half from the training digit with the nearest top half (no model)",
            accuracy(classifier, nearest_neighbour_fill(images, mask, train_images), labels),
            0,
            0.0,
        ),
    ]
    # (folder, [(row name, sampling arguments)]): every setting once with each guidance weight
    runs = [
        (
            args.ncsn,
            [
                (
                    "NCSN, replacement" + ("" if n is None else f", {n} Langevin steps per level"),
                    {"num_langevin_steps": n},
                )
                for n in args.ncsn_num_langevin_steps
            ],
        ),
        (
            args.ddpm,
            [
                (
                    "DDPM, replacement"
                    if n == 1
                    else f"DDPM, RePaint jump_length={args.ddpm_jump_length} jump_n_sample={n}",
                    {"jump_length": args.ddpm_jump_length, "jump_n_sample": n},
                )
                for n in args.ddpm_jump_n_sample
            ],
        ),
    ]
    for folder, settings in runs:
        if not folder:
            continue
        pipe = load_pipeline(folder)
        pipe.set_progress_bar_config(disable=True)
        for name, kwargs in settings:
            for w in args.reconstruction_guidance_scales:
                rows.append(
                    score_inpainting(
                        name + _guidance_name(w),
                        pipe,
                        classifier,
                        images,
                        labels,
                        mask,
                        args.seed,
                        reconstruction_guidance_scale=w,
                        **kwargs,
                    )
                )
    print(
        f"{len(images)} held-out digits, bottom half masked; classifier held-out accuracy "
        f"{classifier.info.get('held_out_accuracy', float('nan')):.1%}"
    )
    print(format_inpainting_table(rows))


if __name__ == "__main__":
    main()
