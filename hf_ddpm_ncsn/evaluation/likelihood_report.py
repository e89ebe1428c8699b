"""The likelihood sections of an evaluation: for every family, test-set bits/dim through the probability-flow ODE
(`hf_ddpm_ncsn.likelihood.ode_bpd`); for a DDPM, bits/dim from every term of the bound and the unbiased stratified
estimate (`hf_ddpm_ncsn.likelihood.stratified_elbo_bpd`), which needs K instead of T network calls per image; and,
for every family, the bits/dim of the reference models of `hf_ddpm_ncsn.likelihood.histogram_baselines` on the same
held-out images, against which a bits/dim is read."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from ..likelihood import ELBOOutput, histogram_baselines
from ..pipelines import DDPMPosteriorPipeline, NCSNPipeline
from ..plots import line_plot
from .distributed import Shard, chunk_generator, map_chunks

NCSN_HAS_NO_ELBO = (
    "NCSN has no ELBO: it is a score model sampled by annealed Langevin dynamics, not a latent-variable model, so "
    "it has no variational bound; its bits/dim is the probability-flow ODE's."
)
# the ODE's draws (dequantization noise, probes) come from seed + 2: the ELBO uses seed, its stratified estimate
# seed + 1, and no two estimates share their noise
ODE_SEED_OFFSET = 2


# the additive smoothing of the histograms: a small pseudo-count (the headline), and Laplace's add-one rule beside
# it, so that the reader sees how much the reference depends on the smoothing
BASELINE_SMOOTHING = 0.01
ADD_ONE_SMOOTHING = 1.0
# the entries of the report's "likelihood_baselines" section, in the order they are printed
BASELINE_MODELS = ("per_pixel_histogram", "per_pixel_histogram_add_one", "shared_histogram", "uniform_over_levels")


def _num_chunks(images: torch.Tensor, batch_size: int) -> int:
    return math.ceil(len(images) / batch_size)


def _chunk(images: torch.Tensor, chunk: int, batch_size: int) -> torch.Tensor:
    return images[chunk * batch_size : (chunk + 1) * batch_size]


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float | None]:
    """Mean over images and its standard error (None for a single image: JSON has no NaN)."""
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else None
    return values.mean().item(), stderr


def likelihood_report(
    pipe: DDPMPosteriorPipeline,
    images: torch.Tensor,
    num_strata: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Test-set bits/dim of a DDPM: the full ELBO and, with `num_strata` > 0, the stratified estimate, on chunks of
    `batch_size` images (chunk k's noise from `chunk_generator(seed, k)`), shared between processes by `shard`.

    Args:
        pipe (`DDPMPosteriorPipeline`): the model.
        images (`torch.Tensor`): uint8 (B, C, H, W) held-out images.
        num_strata (`int`, defaults to 50): K of the stratified estimate (capped at T); 0 skips it.
        batch_size (`int`, defaults to 256): UNet inputs per call.
        seed (`int`, defaults to 0): seed of the noise.
        shard (`Shard`, *optional*): this process's share of the chunks (default: all of them).

    Returns:
        `dict`, the same on every process and for any number of them but for the timings: `bits_per_dim` and
        its standard error over images, the mean decoder and prior terms,
        `terms_mean_per_timestep` (T values), UNet evaluations, and `stratified` (the estimate, its standard error,
        its difference from the full bound with the standard error of that difference, the evaluations saved).
    """
    num_images, num_timesteps = len(images), pipe.scheduler.config.num_train_timesteps
    shard = shard or Shard()
    start = time.perf_counter()

    def chunk_bound(chunk: int) -> ELBOOutput:
        generator = chunk_generator(seed, chunk)
        out = pipe.elbo(_chunk(images, chunk, batch_size), generator=generator, batch_size=batch_size)
        return ELBOOutput(terms=out.terms.cpu(), prior=out.prior.cpu(), bits_per_dim=out.bits_per_dim.cpu())

    parts = map_chunks(shard, _num_chunks(images, batch_size), chunk_bound)
    full = ELBOOutput(
        **{name: torch.cat([part[name] for part in parts]) for name in ("terms", "prior", "bits_per_dim")}
    )
    bits_per_dim, stderr = _mean_and_stderr(full.bits_per_dim)
    report: dict[str, Any] = {
        "num_images": num_images,
        "num_timesteps": num_timesteps,
        "bits_per_dim": bits_per_dim,
        "bits_per_dim_stderr": stderr,
        "decoder_bpd": full.terms[:, 0].mean().item(),
        "prior_bpd": full.prior.mean().item(),
        "terms_mean_per_timestep": full.terms.double().mean(dim=0).cpu().tolist(),
        "unet_evaluations": num_images * num_timesteps,
        "seconds": time.perf_counter() - start,
    }
    if num_strata > 0:
        report["stratified"] = stratified_likelihood(
            pipe, images, min(num_strata, num_timesteps), full.bits_per_dim, batch_size, seed, shard
        )
    return report


def ode_likelihood_report(
    pipe: DDPMPosteriorPipeline | NCSNPipeline,
    images: torch.Tensor,
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    batch_size: int = 256,
    seed: int = 0,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Test-set bits/dim through the probability-flow ODE (dopri5, Hutchinson's estimate, uniform dequantization),
    on chunks of `batch_size` images (chunk k's draws from `chunk_generator(seed + 2, k)`), shared by `shard`.

    Args:
        pipe (`DDPMPosteriorPipeline` or `NCSNPipeline`): the model.
        images (`torch.Tensor`): uint8 (B, C, H, W) held-out images.
        num_probes (`int`, defaults to 1): Rademacher probes per image.
        rtol (`float`, defaults to 1e-5), atol (`float`, defaults to 1e-5): the solver's tolerances.
        batch_size (`int`, defaults to 256): images per ODE solve.
        seed (`int`, defaults to 0): the evaluation's seed (the ODE draws from `seed + 2`).
        shard (`Shard`, *optional*): this process's share of the chunks (default: all of them).

    Returns:
        `dict`: `bits_per_dim` and its standard error over images (the probes' noise included), the prior's share,
        the network evaluations (`nfe`, each a batched forward pass), the settings and the wall time.
    """
    start = time.perf_counter()

    def chunk_ode(chunk: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        out = pipe.ode_likelihood(
            _chunk(images, chunk, batch_size),
            generator=chunk_generator(seed + ODE_SEED_OFFSET, chunk),
            batch_size=batch_size,
            num_probes=num_probes,
            rtol=rtol,
            atol=atol,
        )
        return out.bits_per_dim.cpu(), out.prior_bits_per_dim.cpu(), out.nfe

    parts = map_chunks(shard or Shard(), _num_chunks(images, batch_size), chunk_ode)
    bits_per_dim, stderr = _mean_and_stderr(torch.cat([part[0] for part in parts]))
    return {
        "num_images": len(images),
        "bits_per_dim": bits_per_dim,
        "bits_per_dim_stderr": stderr,
        "prior_bpd": torch.cat([part[1] for part in parts]).double().mean().item(),
        "nfe": sum(part[2] for part in parts),
        "method": "dopri5",
        "rtol": rtol,
        "atol": atol,
        "num_probes": num_probes,
        "dequantized": True,
        "seconds": time.perf_counter() - start,
    }


def stratified_likelihood(
    pipe: DDPMPosteriorPipeline,
    images: torch.Tensor,
    num_strata: int,
    full_bits_per_dim: torch.Tensor | None,
    batch_size: int,
    seed: int,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """The stratified estimate on the same images and chunks as the full bound, and how the two agree.

    Args:
        pipe (`DDPMPosteriorPipeline`): the model.
        images (`torch.Tensor`): uint8 (B, C, H, W) held-out images, the full bound's.
        num_strata (`int`): K, at most T.
        full_bits_per_dim (`torch.Tensor`, *optional*): (B,) bits/dim of the full bound, per image; without it the
            difference from the full bound is not reported.
        batch_size (`int`): UNet inputs per call.
        seed (`int`): the full bound's seed (the estimate draws its noise from `seed + 1`).
        shard (`Shard`, *optional*): this process's share of the chunks (default: all of them).

    Returns:
        `dict`: `bits_per_dim` and its standard error, the mean term L_t of each stratum (`terms_per_stratum`, in
        bits/dim per timestep) at the mean timestep drawn in it (`mean_timestep_per_stratum`), the UNet evaluations.
    """
    start = time.perf_counter()

    def chunk_estimate(chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # a different seed from the full bound's: the two estimates must not share their noise
        generator = chunk_generator(seed + 1, chunk)
        estimate = pipe.stratified_elbo(
            _chunk(images, chunk, batch_size), num_strata, generator=generator, batch_size=batch_size
        )
        return estimate.bits_per_dim.cpu(), estimate.terms.cpu(), estimate.timesteps.cpu()

    parts = map_chunks(shard or Shard(), _num_chunks(images, batch_size), chunk_estimate)
    estimate = torch.cat([part[0] for part in parts])
    bits_per_dim, stderr = _mean_and_stderr(estimate)
    num_images, num_timesteps = len(images), pipe.scheduler.config.num_train_timesteps
    report = {
        "num_strata": num_strata,
        "spacing": "log",
        "bits_per_dim": bits_per_dim,
        "bits_per_dim_stderr": stderr,
        "terms_per_stratum": torch.cat([part[1] for part in parts]).double().mean(dim=0).tolist(),
        "mean_timestep_per_stratum": torch.cat([part[2] for part in parts]).double().mean(dim=0).tolist(),
        "unet_evaluations": num_images * num_strata,
        "unet_evaluations_saved": num_images * (num_timesteps - num_strata),
    }
    if full_bits_per_dim is not None:
        difference, difference_stderr = _mean_and_stderr(estimate - full_bits_per_dim.double())
        report.update(difference_from_full=difference, difference_stderr=difference_stderr)
    return {**report, "seconds": time.perf_counter() - start}


def plot_elbo_terms(terms: list[float], path: str | os.PathLike) -> None:
    """Save a line plot of the mean ELBO term per timestep index (log-scale y axis, bits/dim).

    Args:
        terms (`list[float]`): the mean term of each timestep index, `terms_mean_per_timestep` of the report.
        path (`str` or `os.PathLike`): the PNG to write.
    """
    line_plot(
        {"ELBO term": list(enumerate(terms))},
        path,
        title="Mean ELBO term per timestep (bits/dim, log scale)",
        xlabel="timestep index t (0 = decoder term L_0)",
        ylabel="bits/dim",
        log_y=True,
    )


def smoothing_label(smoothing: float) -> str:
    """How the printed output names an additive smoothing: "add-one" for 1, else "add-<alpha>"."""
    return "add-one" if smoothing == 1 else f"add-{smoothing:g}"


def likelihood_baselines_report(train: torch.Tensor, images: torch.Tensor) -> dict[str, Any]:
    """Bits/dim of the reference models fitted on the training images, on the held-out images a bits/dim is
    measured on: per-pixel histogram (add-`BASELINE_SMOOTHING` and add-one), shared histogram
    (add-`BASELINE_SMOOTHING`), uniform over the grey levels used.

    Args:
        train (`torch.Tensor`): uint8 (N, C, H, W), the training split.
        images (`torch.Tensor`): uint8 (B, C, H, W), the held-out images of the likelihood.

    Returns:
        `dict`: for each model (`per_pixel_histogram`, `per_pixel_histogram_add_one`, `shared_histogram`,
        `uniform_over_levels`) its mean bits/dim, the standard error over images and its smoothing or number of
        levels; the image counts, and `description`, one sentence saying what the models are.
    """
    start = time.perf_counter()
    fitted = histogram_baselines(train, images, smoothing=BASELINE_SMOOTHING)
    add_one = histogram_baselines(train, images, smoothing=ADD_ONE_SMOOTHING)

    def entry(bits_per_dim: torch.Tensor, **details: Any) -> dict[str, Any]:
        mean, stderr = _mean_and_stderr(bits_per_dim.cpu())
        return {**details, "bits_per_dim": mean, "bits_per_dim_stderr": stderr}

    description = (
        f"bits/dim reference models, fitted on the {len(train)} training images and measured on the same "
        f"{len(images)} held-out images: per-pixel histogram = a categorical distribution over the 256 values at "
        "each pixel position and channel; shared histogram = one distribution of the values for all pixels "
        "(pixels i.i.d.); additive smoothing: each histogram adds alpha to the count of each of the 256 values, "
        f"alpha = {BASELINE_SMOOTHING:g} (add-one: alpha = 1); uniform = uniform over the {fitted.num_levels} grey "
        "levels that occur in the training split or the held-out images"
    )
    return {
        "num_train_images": len(train),
        "num_images": len(images),
        "per_pixel_histogram": entry(fitted.per_pixel, smoothing=fitted.smoothing),
        "per_pixel_histogram_add_one": entry(add_one.per_pixel, smoothing=add_one.smoothing),
        "shared_histogram": entry(fitted.shared, smoothing=fitted.smoothing),
        "uniform_over_levels": entry(fitted.uniform, num_levels=fitted.num_levels),
        "description": description,
        "seconds": time.perf_counter() - start,
    }
