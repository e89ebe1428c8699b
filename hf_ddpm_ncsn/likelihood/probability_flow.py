"""Likelihood of both families through the probability-flow ODE (Song et al. 2021, eq. 39 and App. D).

A scheduler's noise process is the SDE dx = f(t) x dt + g(t) dw in the scheduler's own time units t in [0, T - 1]
(`NoiseProcess.sde_coefficients`; NCSN is variance exploding, DDPM variance preserving). Its probability-flow ODE

    dx/dt = f(t) x - g(t)^2 / 2 * s(x, t)

carries the marginals q_t without noise, so a point x at t = 0 maps deterministically to x_T at t = T - 1, and

    log p_0(x) = log p_T(x_T) + int_0^{T-1} div(dx/dt) dt,     div(dx/dt) = D f(t) - g(t)^2 / 2 * div s(x, t),

with the prior p_T = N(0, (alpha_T^2 + sigma_T^2) I) (the marginal at T of unit-variance data; NCSN: 1 +
sigma_max^2, DDPM: 1). With the exact score this is the exact density of x_0 noised to the first level, so for
Gaussian data N(0, s^2 I) it is N(x; 0, (alpha_0^2 s^2 + sigma_0^2) I) up to the prior's mismatch at T. The
divergence is exact (the Jacobian's diagonal, from D copies of the batch) or Hutchinson's estimate with Rademacher
probes (unbiased for the log-density; each probe is held fixed along the trajectory so that the adaptive solver
sees one smooth ODE).

`dequantize=True` scores 8-bit images: x + u with u uniform over the pixel's bin of width 2/255 (the bins of the
ELBO's decoder), and -log2 P(bin) / D <= E_u[-log2 p(x + u)] / D + log2(127.5) (Jensen): each draw of u is a
single-sample estimate of that bound, in the ELBO's currency. The ODE scores the data as the first level smooths
it (sigma_0): like the ELBO's decoder term, a density that cannot concentrate within one bin has a floor there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import torch
from diffusers.utils import BaseOutput
from torchdiffeq import odeint

from ..images import BIN_HALF_WIDTH, is_on_8bit_grid
from ..schedulers.noise_process import NoiseProcess
from ..schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from ..schedulers.scheduling_ncsn import NCSNScheduler
from ..schedulers.validation import check_bool, check_choice, check_positive_float, check_positive_int
from .elbo import ModelFn

Scheduler = Union[NCSNScheduler, DDPMPosteriorScheduler]  # noqa: UP007 (a runtime alias under Python 3.10)

ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun")
FIXED_STEP_METHODS = ("rk4", "midpoint", "euler")
METHODS = ADAPTIVE_METHODS + FIXED_STEP_METHODS
# the exact trace differentiates D copies of the batch: beyond this, Hutchinson's estimate is the practical choice
MAX_EXACT_TRACE_DIMS = 4096
# numbers per network call of the exact trace (copies x images x D): bounds its memory whatever the image size
EXACT_TRACE_ELEMENTS = 2**18
MAX_PROBES = 1024
MAX_FIXED_STEPS = 100_000
FIRST_STEP = 1e-3  # of the time range: the adaptive solver grows it within a few steps
# bits/dim of the uniform density over one bin of width 2/255 in [-1, 1]: log2(255 / 2)
DEQUANTIZATION_OFFSET = math.log2(1.0 / BIN_HALF_WIDTH / 2.0)


@dataclass
class ODELikelihoodOutput(BaseOutput):
    """Negative log-likelihood per image from the probability-flow ODE, in bits/dim.

    Args:
        bits_per_dim (`torch.Tensor` of shape (B,)): mean over the probes (exact with `exact_trace=True`).
        bits_per_dim_stderr (`torch.Tensor` of shape (B,)): standard error of that mean over the probes
            (std / sqrt(num_probes)); 0 for the exact trace, NaN for a single probe.
        prior_bits_per_dim (`torch.Tensor` of shape (B,)): the prior's share, -log2 p_T(x_T) / D.
        nfe (`int`): network evaluations (ODE right-hand-side calls, each one batched forward pass), over all
            batches.
    """

    bits_per_dim: torch.Tensor
    bits_per_dim_stderr: torch.Tensor
    prior_bits_per_dim: torch.Tensor
    nfe: int


def _check_solver(method: str, num_steps: int | None, rtol: float, atol: float) -> None:
    check_choice("method", method, METHODS)
    check_positive_float("rtol", rtol)
    check_positive_float("atol", atol)
    if method in FIXED_STEP_METHODS:
        if num_steps is None:
            raise ValueError(f"method={method!r} is a fixed-step solver: pass num_steps (1 to {MAX_FIXED_STEPS})")
        check_positive_int("num_steps", num_steps, maximum=MAX_FIXED_STEPS)
    elif num_steps is not None:
        raise ValueError(
            f"num_steps={num_steps} applies to the fixed-step methods {FIXED_STEP_METHODS}, not to the adaptive "
            f"method={method!r} (it sets its own steps from rtol and atol)"
        )


def _random_inputs(
    x0: torch.Tensor, dequantize: bool, num_probes: int | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dequantized points and the Rademacher probes of every image, drawn before any batching (so the result
    does not depend on `batch_size`)."""
    device = generator.device if generator is not None else torch.device("cpu")
    x = x0
    if dequantize:
        u = torch.rand(x0.shape, generator=generator, device=device, dtype=torch.float64).to(x0.device)
        x = (x0.double() + (2 * u - 1) * BIN_HALF_WIDTH).to(x0.dtype)
    probes = None
    if num_probes is not None:
        shape = (x0.shape[0], num_probes, *x0.shape[1:])
        signs = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
        probes = (2 * signs - 1).to(device=x0.device, dtype=x0.dtype)
    return x, probes


def _exact_divergence(
    score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, div_x score (B, 1)) with the Jacobian's diagonal from D copies of the batch, copy i differentiated
    along pixel i: batched backward passes instead of D (the network treats batch elements independently)."""
    num_images, dimensions = len(x), x[0].numel()
    copies_per_call = max(1, EXACT_TRACE_ELEMENTS // (num_images * dimensions))
    score, trace = None, torch.zeros(num_images, dtype=x.dtype, device=x.device)
    for pixels in torch.arange(dimensions).split(copies_per_call):
        copies = x.detach().repeat(len(pixels), *([1] * (x.ndim - 1))).requires_grad_(True)
        out = score_fn(copies)
        if not out.requires_grad:  # an output that ignores x (a constant score) has no divergence
            return out[:num_images].detach(), trace[:, None]
        basis = torch.zeros(len(pixels), num_images, dimensions, dtype=x.dtype, device=x.device)
        basis[torch.arange(len(pixels)), :, pixels.to(x.device)] = 1.0
        basis = basis.reshape(out.shape)
        (vjp,) = torch.autograd.grad(out, copies, basis)
        trace += (vjp * basis).reshape(len(pixels), num_images, -1).sum(dim=(0, 2))
        score = out[:num_images].detach() if score is None else score
    return score, trace[:, None]


def _hutchinson_divergence(
    score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, probes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, v^T (d score / dx) v for each probe v (B, K)): one forward pass, one backward pass per probe."""
    x = x.detach().clone().requires_grad_(True)  # a copy: the solver's state may be an inference tensor
    score = score_fn(x)
    if not score.requires_grad:  # an output that ignores x (a constant score) has no divergence
        return score.detach(), torch.zeros(len(x), probes.shape[1], dtype=x.dtype, device=x.device)
    estimates = []
    for k in range(probes.shape[1]):
        probe = probes[:, k]
        (vjp,) = torch.autograd.grad(score, x, probe, retain_graph=k < probes.shape[1] - 1)
        estimates.append((vjp * probe).reshape(len(x), -1).sum(dim=1))
    return score.detach(), torch.stack(estimates, dim=1)


def probability_flow_drift(process: NoiseProcess, t: float, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """dx/dt = f(t) x - g(t)^2 / 2 * s(x, t), the probability-flow ODE of `process` at real time t given the score
    there: the one drift both the likelihood and the deterministic sampler (`hf_ddpm_ncsn.sampling`) integrate."""
    f, g2 = process.sde_coefficients(t)
    return f * x - 0.5 * g2 * score


class _ProbabilityFlow:
    """The right-hand side of the ODE on the state (x, int div dt), counting its evaluations."""

    def __init__(
        self,
        model_fn: ModelFn,
        scheduler: Scheduler,
        time_embedding_type: str,
        probes: torch.Tensor | None,
        on_time: Callable[[float], None] | None,
    ):
        self.model_fn, self.scheduler, self.probes, self.on_time = model_fn, scheduler, probes, on_time
        self.time_embedding_type = time_embedding_type
        self.t_end = float(scheduler.noise_process.num_levels - 1)
        self.nfe = 0

    def __call__(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        x, _ = state
        t = min(max(float(t), 0.0), self.t_end)  # the solver's time is in the state's dtype: float32 may round past
        self.nfe += 1
        if self.on_time is not None:
            self.on_time(t)
        f, g2 = self.scheduler.noise_process.sde_coefficients(t)
        timestep = self.scheduler.model_timestep(t, self.time_embedding_type).to(x.device)

        def score_fn(inputs: torch.Tensor) -> torch.Tensor:
            output = self.model_fn(inputs, timestep.expand(len(inputs)))
            return self.scheduler.score_from_model_output(output, t, inputs)

        # the divergence needs autograd even when the caller runs under no_grad or inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            if self.probes is None:
                score, divergence = _exact_divergence(score_fn, x)
            else:
                score, divergence = _hutchinson_divergence(score_fn, x, self.probes)
        drift = probability_flow_drift(self.scheduler.noise_process, t, x, score)
        return drift, (x[0].numel() * f - 0.5 * g2 * divergence.detach()).to(x.dtype)


def _solve(
    flow: _ProbabilityFlow, x: torch.Tensor, method: str, num_steps: int | None, rtol: float, atol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, int_0^T div dt) of one batch."""
    t_end = flow.t_end
    num_columns = 1 if flow.probes is None else flow.probes.shape[1]
    integral = torch.zeros(len(x), num_columns, dtype=x.dtype, device=x.device)
    if method in FIXED_STEP_METHODS:
        times, options = torch.linspace(0.0, t_end, num_steps + 1, dtype=torch.float64, device=x.device), None
    else:
        # the process (and the network) is defined on [0, T - 1] only: land on the end instead of stepping past it
        # and interpolating back, and start from a small step instead of probing one from the derivatives
        times = torch.tensor([0.0, t_end], dtype=torch.float64, device=x.device)
        options = {"step_t": times[1:], "first_step": FIRST_STEP * t_end}
    x_path, integral_path = odeint(flow, (x, integral), times, rtol=rtol, atol=atol, method=method, options=options)
    if flow.on_time is not None:
        flow.on_time(t_end)  # a fixed-step method's last evaluation is before the end
    return x_path[-1], integral_path[-1]


def _prior_log_density(x_t: torch.Tensor, variance: float) -> torch.Tensor:
    """log N(x; 0, variance I) per image, (B,)."""
    flat = x_t.reshape(len(x_t), -1).double()
    return -0.5 * (flat.shape[1] * math.log(2 * math.pi * variance) + flat.pow(2).sum(dim=1) / variance)


def _check_arguments(
    scheduler: Scheduler,
    x0: torch.Tensor,
    time_embedding_type: str,
    dequantize: bool,
    exact_trace: bool,
    num_probes: int,
    solver: tuple[str, int | None, float, float],
) -> None:
    """Every refusal of `ode_bpd`, before any network call."""
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch of images (B, C, H, W), got shape {tuple(x0.shape)}")
    check_bool("dequantize", dequantize)
    check_bool("exact_trace", exact_trace)
    check_positive_int("num_probes", num_probes, maximum=MAX_PROBES)
    _check_solver(*solver)
    dimensions = x0[0].numel()
    if exact_trace and dimensions > MAX_EXACT_TRACE_DIMS:
        raise ValueError(
            f"exact_trace=True differentiates {dimensions} copies of each image per network evaluation; it is "
            f"offered up to {MAX_EXACT_TRACE_DIMS} dimensions: use Hutchinson's estimate (exact_trace=False)"
        )
    scheduler.model_timestep(0, time_embedding_type)  # an unknown embedding type is refused here
    if time_embedding_type == "learned":
        raise ValueError(
            "time_embedding_type='learned' is a table of the trained timesteps, with no value between them: the "
            "probability-flow ODE needs 'positional' or 'fourier'"
        )
    if not scheduler.noise_process.alphas.min() > 0:
        raise ValueError(
            "the probability-flow ODE needs alpha_t > 0 at every level; this schedule ends at alpha_T = 0 (zero "
            "terminal SNR, rescale_betas_zero_snr=True), where the prior and the drift are undefined"
        )
    if dequantize and not is_on_8bit_grid(x0):
        raise ValueError(
            "dequantize=True scores 8-bit images: x0 must lie on the 256 bin centres v / 127.5 - 1 of [-1, 1] "
            "(hf_ddpm_ncsn.images.uint8_to_model); pass dequantize=False for the density at arbitrary points"
        )


def ode_bpd(
    model_fn: ModelFn,
    scheduler: Scheduler,
    x0: torch.Tensor,
    *,
    time_embedding_type: str = "positional",
    dequantize: bool = True,
    exact_trace: bool = False,
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    method: str = "dopri5",
    num_steps: int | None = None,
    progress: Callable | None = None,
) -> ODELikelihoodOutput:
    """Negative log-likelihood of each image under the probability-flow ODE of the model, in bits/dim.

    Args:
        model_fn (`Callable`): (x, timestep) -> network output, given what the UNet gets as its timestep, a (B,)
            tensor: `scheduler.model_timestep(t, time_embedding_type)` (for NCSN the level index, or sigma_t for
            a `"fourier"` UNet; for DDPM the float timestep). The output is read as the scheduler's
            `prediction_type` (`score_from_model_output`), so learned-variance DDPM outputs work. Batch elements
            must not interact (no batch norm in training mode).
        scheduler (`NCSNScheduler` or `DDPMPosteriorScheduler`): its `noise_process` defines the ODE.
        x0 (`torch.Tensor`): (B, C, H, W) points in [-1, 1]; on the 8-bit grid for `dequantize=True`. The ODE
            runs in x0's dtype (use float32 or float64).
        time_embedding_type (`str`, defaults to `"positional"`): the UNet2DModel's `time_embedding_type`,
            `"positional"` or `"fourier"` (a `"learned"` table has no value between the trained timesteps).
        dequantize (`bool`, defaults to `True`): score the 8-bit bins (uniform dequantization, a bound in the
            ELBO's currency); `False`: the continuous density at the points x0.
        exact_trace (`bool`, defaults to `False`): the exact divergence (D copies of the batch differentiated
            per evaluation, for D <= 4096) instead of Hutchinson's estimate; `num_probes` is then unused.
        num_probes (`int`, defaults to 1): Rademacher probes per image for Hutchinson's estimate (their mean is
            reported, with its standard error for two or more).
        rtol (`float`, defaults to 1e-5), atol (`float`, defaults to 1e-5): the adaptive solver's tolerances
            (unused by the fixed-step methods).
        generator (`torch.Generator`, *optional*): draws the dequantization noise and the probes (all images'
            before any batching).
        batch_size (`int`, *optional*): images per ODE solve (default: all at once). Fixed-step results do not
            depend on it; an adaptive solver chooses its steps per batch, within its tolerance.
        method (`str`, defaults to `"dopri5"`): torchdiffeq solver; adaptive `"dopri5"`, `"bosh3"`,
            `"adaptive_heun"`, or fixed-step `"rk4"`, `"midpoint"`, `"euler"` with `num_steps`.
        num_steps (`int`, *optional*): steps of a fixed-step method, evenly spaced in t.
        progress (`Callable`, *optional*): `progress(total=...)` returns a bar (e.g. a pipeline's `progress_bar`),
            advanced along the ODE's time.

    Returns:
        `ODELikelihoodOutput`; `nfe` counts the right-hand-side evaluations (each one batched forward pass, the
        exact trace's split over copies when D * B is large).
    """
    _check_arguments(
        scheduler, x0, time_embedding_type, dequantize, exact_trace, num_probes, (method, num_steps, rtol, atol)
    )
    batch_size = len(x0) if batch_size is None else check_positive_int("batch_size", batch_size)
    x0 = x0.detach()  # the result is not differentiable (the divergence is detached): keep no graph
    x, probes = _random_inputs(x0, dequantize, None if exact_trace else num_probes, generator)
    process = scheduler.noise_process
    alpha_end, sigma_end = process.marginal(process.num_levels - 1)

    rows = list(torch.arange(len(x0)).split(batch_size))
    bar = progress(total=len(rows) * (process.num_levels - 1)) if progress is not None else None
    log_density, prior, nfe = [], [], 0
    try:
        for chunk in rows:
            on_time = _advance(bar) if bar is not None else None
            flow = _ProbabilityFlow(
                model_fn, scheduler, time_embedding_type, None if probes is None else probes[chunk], on_time
            )
            x_end, integral = _solve(flow, x[chunk], method, num_steps, rtol, atol)
            prior.append(_prior_log_density(x_end, alpha_end**2 + sigma_end**2))
            log_density.append(prior[-1][:, None] + integral.double())
            nfe += flow.nfe
    finally:
        if bar is not None:
            bar.close()
    return _output(torch.cat(log_density), torch.cat(prior), x0[0].numel(), dequantize, exact_trace, nfe)


def _output(
    log_density: torch.Tensor, prior: torch.Tensor, dimensions: int, dequantize: bool, exact_trace: bool, nfe: int
) -> ODELikelihoodOutput:
    """Bits/dim from log p (B, K) (one column per probe), their mean and its standard error over the probes."""
    bits = -log_density / (dimensions * math.log(2.0)) + (DEQUANTIZATION_OFFSET if dequantize else 0.0)
    if bits.shape[1] > 1:
        stderr = bits.std(dim=1) / math.sqrt(bits.shape[1])
    else:
        stderr = torch.full_like(bits[:, 0], 0.0 if exact_trace else math.nan)
    return ODELikelihoodOutput(
        bits_per_dim=bits.mean(dim=1).float(),
        bits_per_dim_stderr=stderr.float(),
        prior_bits_per_dim=(-prior / (dimensions * math.log(2.0))).float(),
        nfe=nfe,
    )


def _advance(bar: Any) -> Callable[[float], None]:
    """Advance `bar` by the whole time units this solve has passed (an adaptive solver may step back; whole units
    keep the bar's counts readable)."""
    reached = [0]

    def on_time(t: float) -> None:
        passed = math.floor(t)
        if passed > reached[0]:
            bar.update(passed - reached[0])
            reached[0] = passed

    return on_time
