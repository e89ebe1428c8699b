"""Samplers of both families written once against the noise process (`schedulers.noise_process`).

- `predictor_corrector`: Song et al. 2021's predictor-corrector sampler (reverse-diffusion predictor, Langevin
  corrector whose step follows a signal-to-noise ratio) and annealed Langevin dynamics (Song & Ermon 2019), for the
  variance-exploding (NCSN) and variance-preserving (DDPM) processes alike.
- `probability_flow`: deterministic sampling and encoding through the probability-flow ODE (a DDIM-equivalent
  step, Heun's step, torchdiffeq's fixed-step and adaptive solvers).
- `hybrid`: the ODE over the noisiest levels, then annealed Langevin dynamics over the rest.

Every sampler takes a `ScoreFn`, (x, t) -> grad log q_t(x) at a scheduler time t, so the same code serves an NCSN
score network and a DDPM eps network (s = -eps / sigma_t).
"""

from .hybrid import ode_langevin_sample
from .predictor_corrector import ScoreFn, annealed_langevin_sample, langevin_corrector_step, predictor_corrector_sample
from .probability_flow import ODE_METHODS, ode_encode, ode_sample, solve_probability_flow

__all__ = [
    "ODE_METHODS",
    "ScoreFn",
    "annealed_langevin_sample",
    "langevin_corrector_step",
    "ode_encode",
    "ode_langevin_sample",
    "ode_sample",
    "predictor_corrector_sample",
    "solve_probability_flow",
]
