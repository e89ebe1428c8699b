"""Deterministic sampling and encoding through the probability-flow ODE dx/dt = f x - g^2 / 2 s (Song et al.
2021), the drift the likelihood integrates (`likelihood.probability_flow.probability_flow_drift`), in the
scheduler's time units.

`solve_probability_flow` carries x from times[0] to times[-1] (down to sample, up to encode) with

- `"ddim"`: the exact solution over each step of the ODE with the noise prediction eps = -sigma s held at its
  value at the step's start. In x / alpha against sigma / alpha the ODE is d(x / alpha) = eps d(sigma / alpha),
  so the step is x' = alpha' x0 + sigma' eps with x0 = (x - sigma eps) / alpha: DDIM with eta = 0 (Song, Meng &
  Ermon 2021) for VP, Euler in sigma (Karras et al. 2022) for VE. One evaluation per step;
- `"heun"`: Heun's second-order step in the same variables (Karras et al. 2022, Alg. 1), the DDIM step corrected
  by the average of eps at both ends of the step: two evaluations per step, both on the grid;
- `"dpmpp_2m"`: DPM-Solver++(2M) (Lu et al. 2022b), exact in log-SNR lambda = log(alpha / sigma) for a data
  prediction x0 held constant over the step, x' = (sigma' / sigma) x - alpha' expm1(-h) x0 with h = lambda' - lambda,
  and second order through the previous step's x0 (a linear extrapolation in lambda). One evaluation per step;
  the first step is first order (there is no previous x0), which makes it DDIM's step in other variables;
- torchdiffeq's fixed-step `"euler"`, `"midpoint"`, `"rk4"` on the grid `times` (1, 2, 4 evaluations per step);
- torchdiffeq's adaptive `"dopri5"`, `"bosh3"`, `"adaptive_heun"` from times[0] to times[-1] within rtol / atol.

`ode_sample` then applies Tweedie's denoise at the last time (the step of DDIM to alpha = 1, one more
evaluation), `ode_encode` does not: encoding and then decoding without it returns the input, to the solver's
accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchdiffeq import odeint

from ..likelihood.probability_flow import ADAPTIVE_METHODS, FIRST_STEP, FIXED_STEP_METHODS, probability_flow_drift
from ..schedulers.noise_process import NoiseProcess
from .predictor_corrector import ScoreFn, tweedie_denoise

#: the steps written here, exact for a constant eps; then torchdiffeq's
ODE_METHODS = ("ddim", "heun", "dpmpp_2m", *FIXED_STEP_METHODS, *ADAPTIVE_METHODS)


class _Drift:
    """The ODE's right-hand side, counting its evaluations and reporting the time reached."""

    def __init__(self, score_fn: ScoreFn, process: NoiseProcess, on_time: Callable[[float], None] | None):
        self.score_fn, self.process, self.on_time = score_fn, process, on_time
        self.t_max = float(process.num_levels - 1)
        self.nfe = 0

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        if self.on_time is not None:
            self.on_time(t)
        return self.score_fn(x, t)

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = min(max(float(t), 0.0), self.t_max)  # the solver's time is in x's dtype: float32 may round past the end
        return probability_flow_drift(self.process, t, x, self.score(x, t))


def _ddim_step(drift: _Drift, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    alpha, sigma = drift.process.marginal(t)
    alpha_next, sigma_next = drift.process.marginal(t_next)
    eps = drift.score(x, t) * (-sigma)
    x0 = (x - sigma * eps) / alpha
    return alpha_next * x0 + sigma_next * eps


def _heun_step(drift: _Drift, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun's step in y = x / alpha against sigma / alpha (Karras et al. 2022, Alg. 1): the DDIM step, then the
    average of eps at both ends. Both evaluations are on the grid, where a network trained on those levels is."""
    alpha, sigma = drift.process.marginal(t)
    alpha_next, sigma_next = drift.process.marginal(t_next)
    h = sigma_next / alpha_next - sigma / alpha
    eps = drift.score(x, t) * (-sigma)
    y = x / alpha
    eps_next = drift.score(alpha_next * (y + h * eps), t_next) * (-sigma_next)
    return alpha_next * (y + h * 0.5 * (eps + eps_next))


_OWN_STEPS = {"ddim": _ddim_step, "heun": _heun_step}


def _dpm_solver_pp_2m(drift: _Drift, x: torch.Tensor, times: Sequence[float]) -> torch.Tensor:
    """DPM-Solver++(2M) along `times`: the exponential integrator of the ODE written for x0 in lambda, with x0
    extrapolated linearly in lambda from the last two evaluations (Lu et al. 2022b, Alg. 2). It keeps the DDIM
    step's exactness for a constant x0, and the history costs no evaluation."""
    previous = None  # (x0, lambda) at the step before
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        alpha, sigma = drift.process.marginal(t)
        alpha_next, sigma_next = drift.process.marginal(t_next)
        lam, lam_next = math.log(alpha / sigma), math.log(alpha_next / sigma_next)
        x0 = (x + sigma**2 * drift.score(x, t)) / alpha
        data_estimate = x0  # D of Lu et al.: x0 extrapolated over the step
        if previous is not None:
            x0_previous, lam_previous = previous
            ratio = (lam - lam_previous) / (lam_next - lam)
            data_estimate = x0 + (x0 - x0_previous) / (2 * ratio)
        x = (sigma_next / sigma) * x - alpha_next * math.expm1(lam - lam_next) * data_estimate
        previous = (x0, lam)
    return x


def solve_probability_flow(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    times: Sequence[float],
    *,
    method: str = "ddim",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    on_time: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """(x at times[-1], score evaluations) for x at times[0], along the strictly monotone `times` in [0, T - 1]
    (the fixed-step grid; an adaptive method uses only the two ends).

    Args:
        score_fn (`ScoreFn`): the model's score at real times.
        process (`NoiseProcess`): the scheduler's noise process (its continuous extension between the levels).
        x (`torch.Tensor`): the state at times[0].
        times (`Sequence[float]`): the grid, descending to sample, ascending to encode.
        method (`str`, defaults to `"ddim"`): one of `ODE_METHODS`.
        rtol (`float`), atol (`float`): the adaptive methods' tolerances.
        on_time (`Callable`, *optional*): called with the time of each evaluation.
    """
    drift = _Drift(score_fn, process, on_time)
    times = [float(t) for t in times]
    if len(times) < 2:  # a single level: nothing to integrate
        return x, 0
    if method == "dpmpp_2m":
        return _dpm_solver_pp_2m(drift, x, times), drift.nfe
    if method in _OWN_STEPS:
        for t, t_next in zip(times[:-1], times[1:], strict=True):
            x = _OWN_STEPS[method](drift, x, t, t_next)
        return x, drift.nfe
    if method in ADAPTIVE_METHODS:
        grid = torch.tensor([times[0], times[-1]], dtype=torch.float64, device=x.device)
        # land on the end instead of stepping past the process's time range, from a small first step
        options = {"step_t": grid[1:], "first_step": FIRST_STEP * abs(times[-1] - times[0])}
    else:
        grid, options = torch.tensor(times, dtype=torch.float64, device=x.device), None
    path = odeint(drift, x, grid, rtol=rtol, atol=atol, method=method, options=options)
    return path[-1], drift.nfe


def ode_sample(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    times: Sequence[float],
    *,
    method: str = "ddim",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    on_time: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """(denoised samples, score evaluations): x at the noisiest time times[0] carried down to times[-1], then
    Tweedie's denoise there (see `solve_probability_flow` for the arguments)."""
    x, nfe = solve_probability_flow(score_fn, process, x, times, method=method, rtol=rtol, atol=atol, on_time=on_time)
    t_last = times[-1]
    return tweedie_denoise(process, x, t_last, score_fn(x, t_last)), nfe + 1


def ode_encode(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    times: Sequence[float],
    *,
    method: str = "ddim",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    on_time: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """(x_T, score evaluations): images x taken as the state at the least noisy time, times[-1], carried up to
    times[0] along the same grid `ode_sample` comes down (the inverse of its solve, before the denoise)."""
    return solve_probability_flow(
        score_fn, process, x, list(times)[::-1], method=method, rtol=rtol, atol=atol, on_time=on_time
    )


#: how `sampler="ode"` places its steps: on the levels laid out, or uniformly in log-SNR between their ends
ODE_TIME_SPACINGS = ("levels", "logsnr")


def log_snr(process: NoiseProcess, t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) of the continuous extension, decreasing in t."""
    alpha, sigma = process.marginal(float(t))
    return math.log(alpha / sigma)


def logsnr_times(process: NoiseProcess, times: Sequence[float]) -> list[float]:
    """As many times as `times`, from its first to its last, uniformly spaced in log-SNR (DPM-Solver's grid, Lu et
    al. 2022): the ends are kept exactly, the others found by bisection on the monotone continuous extension (to
    1e-9 of a time unit). For all of NCSN's geometric levels these are the levels themselves (a subset of them is
    not log-uniform, so it gives fractional levels)."""
    times = [float(t) for t in times]
    if len(times) < 2:  # one level: no grid to lay out
        return times
    start, end = times[0], times[-1]
    low, high = sorted((start, end))
    targets = torch.linspace(log_snr(process, start), log_snr(process, end), len(times), dtype=torch.float64)
    inner = []
    for target in targets[1:-1].tolist():
        a, b = low, high  # lambda(a) > target > lambda(b)
        while b - a > 1e-9:
            middle = 0.5 * (a + b)
            a, b = (middle, b) if log_snr(process, middle) > target else (a, middle)
        inner.append(0.5 * (a + b))
    return [start, *inner, end]


def time_progress(bar, start: float, end: float) -> Callable[[float], None]:
    """An `on_time` that advances `bar` by the whole time units passed from `start` towards `end` (an adaptive
    solver may step back; whole units keep the bar readable)."""
    reached = [0]

    def on_time(t: float) -> None:
        passed = math.floor(abs(t - start) + 1e-9)
        if passed > reached[0]:
            bar.update(passed - reached[0])
            reached[0] = passed

    return on_time
