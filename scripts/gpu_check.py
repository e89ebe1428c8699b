#!/usr/bin/env python
"""The GPU path in one prepared run: the benchmark, then a short mixed-precision training of a CIFAR-sized DDPM and
NCSN (32x32 RGB, synthetic images) per precision, sampling and the likelihoods of the saved pipelines, and
`scripts/evaluate.py --device` on one of them.

    python scripts/gpu_check.py --device cuda --output_dir gpu-check        # about 6 minutes on one GPU
    python scripts/gpu_check.py --device cpu --quick --output_dir /tmp/gc  # tiny settings, bf16 only (the test)

Writes `<output_dir>/gpu_check.md` (a markdown table labelled with the device name), `gpu_check.json` and
`benchmark.json` (the benchmark's rows, on any device); stops at the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from hf_ddpm_ncsn import DDPMPosteriorPipeline, NCSNPipeline

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (CIFAR-sized run on a GPU, tiny run for the CPU test)
SETTINGS = {
    False: {"resolution": 32, "channels": [128, 256, 256, 256], "layers": 2, "batch": 64, "steps": 100,
            "images": 512, "timesteps": 1000, "levels": 10, "langevin": 5, "samples": 16, "ddpm_steps": 100,
            "likelihood_images": 8, "strata": 20, "ode_steps": 20},
    True: {"resolution": 8, "channels": [8, 16], "layers": 1, "batch": 4, "steps": 2, "images": 8, "timesteps": 20,
           "levels": 3, "langevin": 2, "samples": 2, "ddpm_steps": 5, "likelihood_images": 2, "strata": 3,
           "ode_steps": 2},
}  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn):
    """(fn(), wall seconds), synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def write_images(folder: Path, count: int, size: int) -> None:
    """`count` seeded RGB PNGs: smooth colour gradients plus noise (something to fit, unlike pure noise)."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, size)[None, :, None]
    for i in range(count):
        a, b = rng.uniform(0, 1, (2, 1, 1, 3))
        image = a * grid + b * grid.transpose(1, 0, 2) + 0.2 * rng.standard_normal((size, size, 3))
        pixels = (np.clip(image / 2, 0, 1) * 255).astype(np.uint8)
        PIL.Image.fromarray(pixels).save(folder / "train" / f"{i:04d}.png")


def run_script(command: list[str]) -> None:
    """Run one of the repository's scripts offline; its stderr's tail in the error when it fails."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")


def train(family: str, precision: str, data: Path, out: Path, s: dict) -> float:
    """Run scripts/train_<family>.py; the images/s it reports in metrics.json (its own clock, set-up excluded)."""
    common = ["--train_data_dir", str(data), "--cache_dir", str(data.parent / "cache"), "--resolution",
              str(s["resolution"]), "--block_out_channels", *map(str, s["channels"]), "--layers_per_block",
              str(s["layers"]), "--train_batch_size", str(s["batch"]), "--max_train_steps", str(s["steps"]),
              "--mixed_precision", precision, "--output_dir", str(out), "--logger", "none", "--checkpointing_steps",
              "0", "--save_images_steps", "0", "--lr_warmup_steps", "0", "--dataloader_num_workers", "0"]  # fmt: skip
    if family == "ddpm":
        extra = ["--ddpm_num_steps", str(s["timesteps"])]
    else:
        extra = ["--num_noise_levels", str(s["levels"]), "--num_langevin_steps", str(s["langevin"])]
    run_script([sys.executable, str(ROOT / "scripts" / f"train_{family}.py"), *common, *extra])
    return json.loads((out / "metrics.json").read_text())["images_per_second"]


def measure(family: str, precision: str, folder: Path, data: Path, device: str, s: dict) -> dict:
    """Train, then load the pipeline in the precision's dtype and time sampling and the likelihoods."""
    train_rate = train(family, precision, data, folder, s)
    dtype = DTYPES[precision]
    cls = DDPMPosteriorPipeline if family == "ddpm" else NCSNPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    calls = {"num_inference_steps": s["ddpm_steps"]} if family == "ddpm" else {}
    generator = torch.Generator().manual_seed(0)  # a CPU generator, as the docs use, with the GPU pipeline
    images, sample_s = timed(
        device, lambda: pipe(batch_size=s["samples"], generator=generator, output_type="np", **calls)
    )
    pixels = np.asarray(images.images)
    if pixels.shape != (s["samples"], s["resolution"], s["resolution"], 3) or not np.isfinite(pixels).all():
        raise RuntimeError(f"{family} {precision}: bad samples {pixels.shape}, finite={np.isfinite(pixels).all()}")
    held_out = torch.randint(0, 256, (s["likelihood_images"], 3, s["resolution"], s["resolution"]), dtype=torch.uint8)
    row = {"family": family, "precision": precision, "train_img_s": train_rate, "sample_img_s": len(pixels) / sample_s}
    if family == "ddpm":
        elbo, elbo_s = timed(device, lambda: pipe.stratified_elbo(held_out, s["strata"], generator=generator))
        row |= {"elbo_bpd": elbo.bits_per_dim.mean().item(), "elbo_img_s": len(held_out) / elbo_s}
    ode, ode_s = timed(
        device, lambda: pipe.ode_likelihood(held_out, generator=generator, method="euler", num_steps=s["ode_steps"])
    )
    row |= {"ode_bpd": ode.bits_per_dim.mean().item(), "ode_img_s": len(held_out) / ode_s}
    for name, value in row.items():
        if isinstance(value, float) and not np.isfinite(value):
            raise RuntimeError(f"{family} {precision}: {name} is {value}")
    return row


def evaluate_offline(pipeline: Path, data: Path, device: str, out: Path, s: dict) -> dict:
    """scripts/evaluate.py --device on a saved pipeline (sampling and the stratified ELBO; the data have no labels,
    so no classifier metrics): the report must say it ran on `device`."""
    command = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--pipeline", str(pipeline), "--train_data_dir",
               str(data), "--cache_dir", str(data.parent / "cache"), "--device", device, "--num_samples",
               str(s["samples"]), "--batch_size", str(s["samples"]), "--num_elbo_images", str(s["likelihood_images"]),
               "--elbo_strata", str(s["strata"]), "--num_inference_steps", str(s["ddpm_steps"]),
               "--no_ode_likelihood", "--reference_bootstraps", "0", "--output_dir", str(out)]  # fmt: skip
    run_script(command)
    report = json.loads((out / "report.json").read_text())
    if not report["device"].startswith(device):
        raise RuntimeError(f"scripts/evaluate.py --device {device} ran on {report['device']}")
    return {
        "device": report["device"],
        "stratified_bpd": report["likelihood"]["stratified"]["bits_per_dim"],
        "seconds": report["timings"]["total"],
    }


def benchmark(device: str, quick: bool, out: Path) -> None:
    """scripts/benchmark.py at settings that take 2-3 minutes on a GPU (seconds with --quick)."""
    small = ["--repeats", "1", "--resolution", "8", "--channels", "8", "16", "--batch_size", "2", "--skip_training"]
    settings = small if quick else ["--repeats", "3", "--train_steps", "20"]
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", device, "--skip_evaluation",
               "--json", str(out / "benchmark.json"), *settings]  # fmt: skip
    subprocess.run(command, check=True)


def table(rows: list[dict], label: str, s: dict) -> str:
    def cell(row, key, digits=1):
        return f"{row[key]:.{digits}f}" if key in row else "-"

    lines = [
        f"GPU check on **{label}** (torch {torch.__version__}): {s['resolution']}x{s['resolution']} RGB, UNet "
        f"{s['channels']} x {s['layers']} layers, {s['steps']} training steps of batch {s['batch']}; sampling "
        f"{s['samples']} images (DDPM {s['ddpm_steps']} steps, NCSN {s['levels']} levels x {s['langevin']} Langevin "
        f"steps); ELBO {s['strata']} strata and ODE (Euler, {s['ode_steps']} steps) on {s['likelihood_images']} "
        "random images. Throughputs in images/s.",
        "",
        "| model | precision | training | sampling | ELBO | ELBO bits/dim | ODE | ODE bits/dim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family'].upper()} | {r['precision']} | {cell(r, 'train_img_s')} | {cell(r, 'sample_img_s')} | "
            f"{cell(r, 'elbo_img_s')} | {cell(r, 'elbo_bpd', 2)} | {cell(r, 'ode_img_s')} | {cell(r, 'ode_bpd', 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--output_dir", required=True, help="Where the table, the runs and the data go.")
    parser.add_argument("--quick", action="store_true", help="Tiny settings (for the CPU test).")
    parser.add_argument("--skip_benchmark", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.device == "cpu" and torch.cuda.is_available():
        parser.error("--device cpu on a machine with CUDA: the training scripts would use the GPU")
    out, s = Path(args.output_dir), SETTINGS[args.quick]
    out.mkdir(parents=True, exist_ok=True)
    label = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (not a GPU measurement)"
    if not args.skip_benchmark:
        benchmark(args.device, args.quick, out)
    write_images(out / "data", s["images"], s["resolution"])
    precisions = ["bf16", "fp16"] if args.device == "cuda" else ["bf16"]  # fp16 training needs a GPU
    rows = []
    for precision in precisions:
        for family in ("ddpm", "ncsn"):
            rows.append(measure(family, precision, out / f"{family}-{precision}", out / "data", args.device, s))
            print(json.dumps(rows[-1]), flush=True)
    offline = evaluate_offline(out / "ddpm-bf16", out / "data", args.device, out / "eval-ddpm-bf16", s)
    summary = {"device": label, "settings": s, "rows": rows, "evaluate": offline}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    text = table(rows, label, s) + (
        f"\n`scripts/evaluate.py --device {args.device}` on the bf16 DDPM ran on {offline['device']}: stratified "
        f"ELBO {offline['stratified_bpd']:.2f} bits/dim, {offline['seconds']:.1f} s in all.\n"
    )
    (out / "gpu_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
