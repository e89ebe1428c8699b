"""Measure classifier-free guidance of a class-conditional pipeline on the digits: sample `--per_class` images of
every class at each `--guidance_scales` value, classify them with the evaluation's digit classifier
(`hf_ddpm_ncsn.evaluation.feature_classifier`, trained once and cached) and print one JSON line per scale.

    OMP_NUM_THREADS=1 python scripts/guidance_eval.py --pipeline outputs/ddpm-conditional --guidance_scales 1 3

accuracy: the fraction classified as the requested class; coverage: the classes predicted at least once (of
all the samples); worst_class_accuracy: the lowest per-class accuracy; nfe: UNet evaluations per sample.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import DiffusionPipeline

import hf_ddpm_ncsn  # noqa: F401 (registers the pipelines with diffusers)
from hf_ddpm_ncsn.evaluation.feature_classifier import load_or_train_classifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="A saved class-conditional pipeline folder.")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--per_class", type=int, default=100, help="Samples per class.")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="DDPM steps (default: all).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    num_classes = pipe.unet.config.num_class_embeds - 1
    size = pipe.unet.config.sample_size
    classifier = load_or_train_classifier(resolution=size, channels=pipe.unet.config.in_channels)
    rows_evaluated = []
    pipe.unet.register_forward_hook(lambda module, inputs, output: rows_evaluated.append(len(inputs[0])))
    requested = torch.arange(num_classes).repeat_interleave(args.per_class)
    call_kwargs = {} if args.num_inference_steps is None else {"num_inference_steps": args.num_inference_steps}
    for w in args.guidance_scales:
        rows_evaluated.clear()
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        images = torch.cat([
            pipe(
                batch_size=len(labels), class_labels=labels, guidance_scale=w, generator=generator, output_type="pt",
                **call_kwargs,
            ).images
            for labels in requested.split(args.batch_size)
        ])  # fmt: skip
        wall = time.perf_counter() - start
        with torch.no_grad():
            predicted = classifier(images).argmax(dim=1)
        correct = predicted == requested
        per_class = [correct[requested == c].float().mean().item() for c in range(num_classes)]
        print(
            json.dumps({
                "guidance_scale": w,
                "num_samples": len(requested),
                "accuracy": correct.float().mean().item(),
                "worst_class_accuracy": min(per_class),
                "coverage": len(set(predicted.tolist())),
                "nfe": sum(rows_evaluated) / len(requested),
                "wall_time_s": round(wall, 1),
                "classifier_held_out_accuracy": classifier.info.get("held_out_accuracy"),
            })
        )  # fmt: skip


if __name__ == "__main__":
    main()
