"""The probability-flow ODE over the noisiest levels, then annealed Langevin dynamics over the rest.

At large noise the score is smooth and an ODE step covers a level in two evaluations (Heun's, on the grid), where
Langevin dynamics needs many updates to mix; at small noise the network's errors matter most, and Langevin updates
correct them (the stochasticity that Karras et al. 2022, sec. 4, find helps in the middle and low noise range,
and that their churn adds between levels; an NCSN trained on a fixed set of levels is not accurate between them,
so here the noise enters through Langevin updates on the levels themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..schedulers.noise_process import NoiseProcess
from .predictor_corrector import Generator, ScoreFn, annealed_langevin_sample
from .probability_flow import solve_probability_flow


def ode_langevin_sample(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: torch.Tensor,
    levels: Sequence[int],
    *,
    num_ode_steps: int,
    num_steps: int,
    step_size: float,
    generator: Generator = None,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Heun's ODE step (`solve_probability_flow(method="heun")`) down the first `num_ode_steps` intervals of the
    descending `levels`, then annealed Langevin dynamics (`annealed_langevin_sample`, its eta relative to the last
    level's sigma) on the remaining levels, from the one the ODE reached, and Tweedie's denoise:
    2 num_ode_steps + (len(levels) - num_ode_steps) num_steps + 1 score evaluations.

    Args:
        score_fn, process, x, levels, generator, progress: as for `annealed_langevin_sample` (the progress bar
            covers the Langevin levels).
        num_ode_steps (`int`): ODE steps, from 0 (annealed Langevin alone) to len(levels) - 1.
        num_steps (`int`), step_size (`float`): the Langevin updates per level and eps of eta_t = eps sigma_t^2 /
            sigma_min^2.
    """
    levels = [int(t) for t in levels]
    if not 0 <= num_ode_steps < len(levels):
        raise ValueError(
            f"num_ode_steps must be between 0 and {len(levels) - 1} (the levels' intervals), got {num_ode_steps}"
        )
    x, _ = solve_probability_flow(score_fn, process, x, levels[: num_ode_steps + 1], method="heun")
    return annealed_langevin_sample(
        score_fn,
        process,
        x,
        levels[num_ode_steps:],
        num_steps=num_steps,
        step_size=step_size,
        generator=generator,
        progress=progress,
    )
