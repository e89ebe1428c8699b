#!/usr/bin/env python
"""Speed ratios of hf_ddpm_ncsn against references measured side by side in one run.

    python scripts/benchmark.py [--device cuda] [--repeats 7] [--json benchmark.json]

Every figure is a ratio (ours / reference) of medians over interleaved repeats on the same inputs, so machine
noise hits both sides alike; absolute times are printed too, labelled as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler, NCSNPipeline, NCSNScheduler
from hf_ddpm_ncsn.likelihood import ode_bpd
from hf_ddpm_ncsn.losses import ddpm_loss
from hf_ddpm_ncsn.unets import build_unet, default_unet_config

ROOT = Path(__file__).resolve().parent.parent
# `accelerate launch` of two gloo processes on the CPU (the scripts build a CPU state without CUDA)
TWO_GLOO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def paired_medians(ours: Callable, reference: Callable, repeats: int, device: str) -> tuple[float, float]:
    """Median wall times of two callables, run alternately so that load changes affect both."""
    times: tuple[list[float], list[float]] = ([], [])
    ours(), reference()  # warm-up
    for _ in range(repeats):
        for fn, bucket in ((ours, times[0]), (reference, times[1])):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def make_unet(resolution: int, channels: tuple[int, ...], device: str) -> UNet2DModel:
    """The training scripts' default UNet at these widths, one channel, seeded."""
    torch.manual_seed(0)
    return build_unet(default_unet_config(channels, layers_per_block=1), resolution, 1, 1).to(device)


def _ddpm_step_pair(args, respaced: int | None) -> tuple[float, float]:
    device, n = args.device, 200
    x = torch.randn(16, 3, 32, 32, device=device)
    out = torch.randn(16, 3, 32, 32, device=device)
    ours, theirs = DDPMPosteriorScheduler(), DDPMScheduler()
    if respaced:
        ours.set_timesteps(respaced)
        theirs.set_timesteps(respaced)
    g = torch.Generator(device).manual_seed(0)
    a, b = paired_medians(
        lambda: [ours.step(out, 500, x, generator=g) for _ in range(n)],
        lambda: [theirs.step(out, 500, x, generator=g) for _ in range(n)],
        args.repeats,
        device,
    )
    return a / n, b / n


def bench_scheduler_steps(args) -> list[dict]:
    device, n = args.device, 200
    rows = [
        row("DDPMPosteriorScheduler.step vs diffusers DDPMScheduler.step", *_ddpm_step_pair(args, None), "<= 1.0"),
        row("  the same, respaced to 50 steps", *_ddpm_step_pair(args, 50), "<= 1.0"),
    ]
    x = torch.randn(16, 3, 32, 32, device=device)
    out = torch.randn(16, 3, 32, 32, device=device)
    ncsn = NCSNScheduler(num_train_timesteps=10, denoise_final=False)
    sigma, sigma_min, step_size = float(ncsn.sigmas[5]), ncsn.config.sigma_min, ncsn.config.step_size
    g = torch.Generator(device).manual_seed(0)

    def plain_torch_update():
        eta = step_size * sigma**2 / sigma_min**2
        z = torch.randn(x.shape, generator=g, device=device)
        score = -out / sigma
        return x + eta / 2 * score + eta**0.5 * z, x + sigma**2 * score  # the update and the Tweedie x0

    a, b = paired_medians(
        lambda: [ncsn.step(out, 5, x, generator=g) for _ in range(n)],
        lambda: [plain_torch_update() for _ in range(n)],
        args.repeats,
        device,
    )
    rows.append(row("NCSNScheduler.step vs the same update and x0 in plain torch", a / n, b / n, goal="<= 1.0"))
    return rows


def _pipeline_pair(args, name: str) -> dict:
    device, batch = args.device, args.batch_size
    unet = make_unet(args.resolution, args.channels, device)
    if name == "ncsn":
        pipe = NCSNPipeline(unet, NCSNScheduler(num_train_timesteps=10, num_langevin_steps=5))
        calls: dict = {}
    else:
        pipe = DDPMPosteriorPipeline(unet, DDPMPosteriorScheduler())
        calls = {"num_inference_steps": 50}
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    num_forwards = len(pipe.scheduler.timesteps) if name == "ncsn" else 50
    x = torch.randn(batch, 1, args.resolution, args.resolution, device=device)
    t = torch.tensor(3, device=device)

    @torch.no_grad()
    def bare():
        for _ in range(num_forwards):
            unet(x, t)

    def sample():
        pipe(batch_size=batch, generator=torch.Generator(device).manual_seed(0), output_type="pt", **calls)

    a, b = paired_medians(sample, bare, args.repeats, device)
    return row(f"{type(pipe).__name__} vs {num_forwards} bare UNet forwards (batch {batch})", a, b, goal="<= 1.05")


def bench_pipelines(args) -> list[dict]:
    return [_pipeline_pair(args, "ncsn"), _pipeline_pair(args, "ddpm")]


def bench_elbo(args) -> list[dict]:
    device, num_timesteps, images = args.device, 100, args.batch_size
    unet = make_unet(args.resolution, args.channels, device)
    pipe = DDPMPosteriorPipeline(unet, DDPMPosteriorScheduler(num_train_timesteps=num_timesteps)).to(device)
    pipe.set_progress_bar_config(disable=True)
    data = torch.randint(0, 256, (images, 1, args.resolution, args.resolution), dtype=torch.uint8, device=device)
    x = torch.randn(images, 1, args.resolution, args.resolution, device=device)

    @torch.no_grad()
    def bare():
        for t in range(num_timesteps):
            unet(x, torch.tensor(t, device=device))

    a, b = paired_medians(lambda: pipe.elbo(data, batch_size=images), bare, args.repeats, device)
    return [row(f"DDPMPosteriorPipeline.elbo per image vs T={num_timesteps} UNet forwards", a / images, b / images)]


def bench_ode_likelihood(args) -> list[dict]:
    """The probability-flow ODE's cost per network evaluation: Hutchinson's divergence against the bare forward
    pass and vector-Jacobian product it needs, and the exact trace (D copies of the batch, one backward pass)
    against D backward passes through one forward."""
    device, images, steps = args.device, args.batch_size, 4
    unet = make_unet(args.resolution, args.channels, device)
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=100)
    x = torch.rand(images, 1, args.resolution, args.resolution, device=device) * 2 - 1
    dimensions = x[0].numel()

    def model_fn(inputs, timestep):
        return unet(inputs, timestep).sample

    def solve(exact_trace: bool):
        ode_bpd(model_fn, scheduler, x, dequantize=False, exact_trace=exact_trace, method="euler", num_steps=steps)

    def forward_and_vjps(num_vjps: int):
        def run():
            for step in range(steps):
                inputs = x.detach().requires_grad_(True)
                out = model_fn(inputs, torch.full((images,), 99.0 * step / steps, device=device))
                for i in range(num_vjps):
                    torch.autograd.grad(out, inputs, torch.ones_like(out), retain_graph=i < num_vjps - 1)

        return run

    hutchinson = paired_medians(lambda: solve(False), forward_and_vjps(1), args.repeats, device)
    exact = paired_medians(lambda: solve(True), forward_and_vjps(dimensions), max(1, args.repeats // 3), device)
    return [
        row(f"ode_bpd step, Hutchinson (batch {images}) vs bare UNet forward + VJP", *(v / steps for v in hutchinson),
            goal="<= 1.1"),
        row(f"ode_bpd step, exact trace (D = {dimensions}) vs forward + D backward passes",
            *(v / steps for v in exact), goal="< 1"),
    ]  # fmt: skip


def bench_training(args) -> list[dict]:
    """Images/s of the training loop (accelerate, EMA, data loading, logging off) vs a bare loop on the same
    model and batch; with in-training evaluations (their time excluded, as metrics.json's images_per_second
    excludes it) vs without; and one process vs two (gloo on CPU)."""
    device, steps, batch = args.device, args.train_steps, args.batch_size
    common = [
        "--resolution", str(args.resolution), "--center_crop", "true", "--block_out_channels",
        *map(str, args.channels), "--layers_per_block", "1", "--train_batch_size", str(batch),
        "--max_train_steps", str(steps), "--logger", "none", "--checkpointing_steps", "0",
        "--num_preview_images", "1", "--ddpm_num_steps", "100", "--lr_warmup_steps", "0",
    ]  # fmt: skip

    # two evaluations in the run: the loss and a 5-stratum ELBO on 32 held-out images
    evaluating = ["--eval_steps", str(max(1, steps // 2)), "--eval_num_images", "32", "--eval_num_samples", "0",
                  "--eval_elbo_strata", "5"]  # fmt: skip

    def loop_images_per_second(launcher: list[str], env: dict, extra: tuple[str, ...] = ()) -> float:
        with tempfile.TemporaryDirectory() as out:
            command = [*launcher, str(ROOT / "scripts" / "train_ddpm.py"), "--output_dir", out, *common, *extra]
            subprocess.run(command, check=True, capture_output=True, env={**os.environ, **env})
            return json.loads(Path(out, "metrics.json").read_text())["images_per_second"]

    def bare_images_per_second() -> float:
        unet = make_unet(args.resolution, args.channels, device)
        scheduler = DDPMPosteriorScheduler(num_train_timesteps=100)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        x0 = torch.rand(batch, 1, args.resolution, args.resolution, device=device) * 2 - 1
        for step in range(steps + 2):
            if step == 2:  # after warm-up, as the training loop's clock starts after its set-up
                sync(device)
                start = time.perf_counter()
            loss = ddpm_loss(unet, scheduler, x0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        sync(device)
        return steps * batch / (time.perf_counter() - start)

    python = [sys.executable]
    loop, bare, evaluated = [], [], []
    for _ in range(max(1, args.repeats // 3)):
        loop.append(loop_images_per_second(python, {}))
        bare.append(bare_images_per_second())
        evaluated.append(loop_images_per_second(python, {}, tuple(evaluating)))
    rows = [row("training loop vs bare loop (images/s, higher is better)", statistics.median(loop),
                statistics.median(bare), goal=">= 0.95", unit="img/s"),
            row("training between evaluations: --eval_steps vs none (images/s)", statistics.median(evaluated),
                statistics.median(loop), goal=">= 0.95", unit="img/s")]  # fmt: skip
    if device == "cpu":
        threads = max(1, (os.cpu_count() or 2) // 2)
        two_proc = loop_images_per_second(TWO_GLOO_PROCESSES, {"OMP_NUM_THREADS": str(threads)})
        rows.append(row("training: 2 gloo processes vs 1 process (images/s)", two_proc, statistics.median(loop),
                        unit="img/s"))  # fmt: skip
    return rows


def bench_evaluation(args: argparse.Namespace) -> list[dict]:
    """Throughput of scripts/evaluate.py's sharded stages (sampling, the ELBO with its stratified estimate, the ODE
    likelihood) with two gloo processes against one, on a saved DDPM: the stage timings of the main process."""
    batch = min(args.batch_size, 90)  # two batches of the digits' 180 held-out images at most: one per process
    held_out = 2 * batch
    stages = {"sampling": ("samples", 4 * batch), "likelihood": ("ELBO images", held_out),
              "ode_likelihood": ("ODE images", held_out)}  # fmt: skip
    evaluation = [
        "--num_samples", str(4 * batch), "--batch_size", str(batch), "--num_inference_steps", "50",
        "--num_elbo_images", str(held_out), "--elbo_strata", "10", "--ode_rtol", "1e-3", "--ode_atol", "1e-3",
    ]  # fmt: skip

    def stage_rates(launcher: list[str], env: dict, folder: str, name: str) -> dict[str, float]:
        out = Path(folder, name)
        command = [*launcher, str(ROOT / "scripts" / "evaluate.py"), "--pipeline", str(Path(folder, "ddpm")),
                   "--output_dir", str(out), *evaluation]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, **env})
        report = json.loads((out / "report.json").read_text())
        return {stage: count / report["timings"][stage] for stage, (_, count) in stages.items()}

    with tempfile.TemporaryDirectory() as folder:
        unet = make_unet(args.resolution, args.channels, "cpu")
        DDPMPosteriorPipeline(unet, DDPMPosteriorScheduler(num_train_timesteps=100)).save_pretrained(
            Path(folder, "ddpm")
        )
        threads = max(1, (os.cpu_count() or 2) // 2)
        one = stage_rates([sys.executable], {}, folder, "one-process")
        two = stage_rates(TWO_GLOO_PROCESSES, {"OMP_NUM_THREADS": str(threads)}, folder, "two-processes")
    return [row(f"evaluation, {name}: 2 gloo processes vs 1 process ({name}/s)", two[stage], one[stage],
                unit="img/s") for stage, (name, _) in stages.items()]  # fmt: skip


def row(label: str, ours: float, reference: float, goal: str = "", unit: str = "s") -> dict:
    return {
        "benchmark": label,
        "ours": ours,
        "reference": reference,
        "ratio": ours / reference,
        "goal": goal,
        "unit": unit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Device to run on.")
    parser.add_argument("--repeats", type=int, default=7, help="Interleaved repeats per figure (median taken).")
    parser.add_argument("--resolution", type=int, default=16, help="UNet sample size.")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet block_out_channels.")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per batch.")
    parser.add_argument("--train_steps", type=int, default=40, help="Optimisation steps per training measurement.")
    parser.add_argument("--skip_training", action="store_true", help="Skip the (slowest) training benchmarks.")
    parser.add_argument("--skip_evaluation", action="store_true", help="Skip the evaluation throughput benchmarks.")
    parser.add_argument("--json", help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    if args.repeats < 1 or args.batch_size < 1 or args.train_steps < 1:
        parser.error("--repeats, --batch_size and --train_steps must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    header = (
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; Python {platform.python_version()}"
    )
    print(header)
    rows = bench_scheduler_steps(args) + bench_pipelines(args) + bench_elbo(args) + bench_ode_likelihood(args)
    if not args.skip_training:
        rows += bench_training(args)
    if not args.skip_evaluation and args.device == "cpu":
        rows += bench_evaluation(args)
    print("\n| benchmark | ours (absolute) | reference (absolute) | ratio | goal |\n|---|---|---|---|---|")
    for r in rows:
        fmt = (lambda v: f"{v:.1f} img/s") if r["unit"] == "img/s" else (lambda v: f"{v * 1e3:.3f} ms")
        print(f"| {r['benchmark']} | {fmt(r['ours'])} | {fmt(r['reference'])} | {r['ratio']:.2f} | {r['goal']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
