"""The pipelines' `sampler=` argument and the arguments that belong to each sampler: defaults and checks, shared
by both families so that `check_inputs` and `__call__` refuse the same things, before any UNet call."""

from __future__ import annotations

from typing import Any

from ..likelihood.probability_flow import ADAPTIVE_METHODS
from ..sampling import ODE_METHODS
from ..sampling.probability_flow import ODE_TIME_SPACINGS
from ..schedulers.validation import check_choice, check_positive_float, check_positive_int

MAX_CORRECTOR_STEPS = 1000
MAX_LANGEVIN_STEPS = 100_000
#: Each sampler's own arguments and their defaults (None: the pipeline's, e.g. NCSN's scheduler config).
SAMPLER_ARGUMENTS: dict[str, dict[str, Any]] = {
    "ancestral": {},
    "langevin": {"num_langevin_steps": None, "step_size": None},
    "pc": {"snr": 0.16, "num_corrector_steps": 1},
    "ode": {"ode_method": "ddim", "ode_rtol": None, "ode_atol": None, "ode_time_spacing": "levels"},
    "ode_langevin": {"num_ode_steps": None, "num_langevin_steps": None, "step_size": None},
}
ADAPTIVE_TOLERANCE = 1e-5  # rtol and atol of an adaptive ode_method unless given


def sampler_options(sampler: str, samplers: tuple[str, ...], **given: Any) -> dict[str, Any]:
    """The checked arguments of `sampler` (one of `samplers`), defaults filled in; an argument given (not None)
    that belongs to another sampler is refused, naming it and the sampler it applies to."""
    check_choice("sampler", sampler, samplers)
    own = SAMPLER_ARGUMENTS[sampler]
    for name, value in given.items():
        if value is not None and name not in own:
            owner = next(s for s in samplers if name in SAMPLER_ARGUMENTS[s])
            raise ValueError(f"{name}={value!r} applies to sampler={owner!r}, not to sampler={sampler!r}")
    options = {name: given.get(name) if given.get(name) is not None else default for name, default in own.items()}
    if sampler == "pc":
        check_positive_float("snr", options["snr"])
        check_positive_int("num_corrector_steps", options["num_corrector_steps"], 0, MAX_CORRECTOR_STEPS)
    elif sampler == "ode":
        check_choice("ode_method", options["ode_method"], ODE_METHODS)
        check_choice("ode_time_spacing", options["ode_time_spacing"], ODE_TIME_SPACINGS)
        for name in ("ode_rtol", "ode_atol"):
            if options[name] is None:
                options[name] = ADAPTIVE_TOLERANCE
            elif options["ode_method"] not in ADAPTIVE_METHODS:
                raise ValueError(
                    f"{name}={options[name]!r} applies to the adaptive ode_method values {ADAPTIVE_METHODS}, not "
                    f"to ode_method={options['ode_method']!r} (a fixed step on the num_inference_steps levels)"
                )
            else:
                check_positive_float(name, options[name])
    return options


def fill_langevin_options(
    options: dict[str, Any], num_levels: int, default_steps: int, default_step_size: float
) -> dict[str, Any]:
    """The Langevin arguments of `sampler="langevin"` / `"ode_langevin"` run by `hf_ddpm_ncsn.sampling` (not by
    the scheduler), defaults filled in and checked; `num_ode_steps` defaults to half the `num_levels - 1`
    intervals and may be any of 0 to all of them."""
    if options["num_langevin_steps"] is None:
        options["num_langevin_steps"] = default_steps
    options["num_langevin_steps"] = check_positive_int(
        "num_langevin_steps", options["num_langevin_steps"], 1, MAX_LANGEVIN_STEPS
    )
    options["step_size"] = check_positive_float(
        "step_size", default_step_size if options["step_size"] is None else options["step_size"]
    )
    if "num_ode_steps" in options:
        if options["num_ode_steps"] is None:
            options["num_ode_steps"] = (num_levels - 1) // 2
        options["num_ode_steps"] = check_positive_int("num_ode_steps", options["num_ode_steps"], 0, num_levels - 1)
    return options


def check_callback_supported(sampler: str, default_sampler: str, callback_on_step_end: Any) -> None:
    """The step callbacks see the scheduler's chain: only the default sampler has one."""
    if callback_on_step_end is not None and sampler != default_sampler:
        raise ValueError(
            f"callback_on_step_end is called after each step of the scheduler's chain (sampler={default_sampler!r}); "
            f"sampler={sampler!r} does not accept one"
        )


def check_inpainting_sampler(image: Any, sampler: str, default_sampler: str) -> None:
    """Inpainting replaces the known pixels along the scheduler's chain: only the default sampler has one."""
    if image is not None and sampler != default_sampler:
        raise ValueError(
            f"image= (inpainting) works with sampler={default_sampler!r}, the scheduler's chain; sampler={sampler!r} "
            "does not inpaint"
        )
