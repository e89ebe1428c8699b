"""The samplers of `hf_ddpm_ncsn.sampling` and the pipelines' `sampler=` argument.

The mathematical checks use Gaussian data N(0, s^2 I), whose noised marginal q_t = N(0, v_t I) with
v_t = alpha_t^2 s^2 + sigma_t^2 has the exact score -x / v_t (eps = sigma_t x / v_t). There

- the probability-flow ODE is linear, dx/dt = (v_t' / 2 v_t) x, so it maps x at t to x sqrt(v_t' / v_t) at t';
- Tweedie's denoise multiplies by alpha_t s^2 / v_t;
- the reverse-diffusion predictor is linear, so the predictor-only sampler's output variance follows an exact
  recursion;
- a Langevin chain with the snr rule e = 2 a (r ||z|| / ||s||)^2 (norms averaged over a large batch) has the
  stationary variance v (1 + a r^2): e is then 2 a r^2 v^2 / Var, and Var = (1 - e / v)^2 Var + 2 e solves to it;
  with a fixed step eta (annealed Langevin) it is v / (1 - eta / (4 v)).

Moment checks compare mean(x^2) over N samples of D pixels with such a target: for Gaussian samples its relative
standard error is sqrt(2 / (N D)), and each test allows 4 of them (a 6e-5 two-sided chance of a false failure,
fixed by the seed).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from support.tiny_models import tiny_ddpm, tiny_ncsn

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.evaluation.arguments import parse_evaluation_arguments
from hf_ddpm_ncsn.sampling import (
    annealed_langevin_sample,
    ode_encode,
    ode_langevin_sample,
    ode_sample,
    predictor_corrector_sample,
    solve_probability_flow,
)
from hf_ddpm_ncsn.sampling.probability_flow import logsnr_times

S2 = 0.25  # data variance s^2
N, SHAPE = 2000, (1, 8, 8)  # samples and image shape of the moment checks: N D = 128,000
REL_TOLERANCE = 4 * math.sqrt(2 / (N * math.prod(SHAPE)))  # 1.6%


def _ve():
    return NCSNScheduler(num_train_timesteps=20, sigma_min=0.01, sigma_max=2.0).noise_process


def _vp():
    return DDPMPosteriorScheduler(num_train_timesteps=100).noise_process


def _variance(process, t) -> float:
    alpha, sigma = process.marginal(t)
    return alpha**2 * S2 + sigma**2


def _exact_score(process):
    """The exact score of the noised Gaussian, through an eps prediction (as a DDPM eps model gives it)."""

    def score(x, t):
        eps = x * (process.marginal(t)[1] / _variance(process, t))
        return process.to_score(eps, "epsilon", x, t)

    return score


def _prior(process, t, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, *SHAPE, generator=generator, dtype=torch.float64) * math.sqrt(_variance(process, t))
    return x, generator


def _denoise_gain(process, t) -> float:
    return process.marginal(t)[0] * S2 / _variance(process, t)


def _assert_second_moment(x: torch.Tensor, target: float, slack: float = 0.0) -> None:
    error = x.pow(2).mean().item() / target - 1
    assert abs(error) < REL_TOLERANCE + slack, f"mean(x^2) off by {error:.4f} of {target:.5f}"


# ----------------------------------------------------------------------------------------------------------------
# Probability-flow ODE: a known linear map (a wrong drift sign, g vs g^2, or a wrong time grid breaks it)
@pytest.mark.parametrize("family", ["ve", "vp"])
@pytest.mark.parametrize(("method", "tolerance"), [("rk4", 2e-4), ("dopri5", 1e-5)])
def test_ode_maps_the_prior_by_the_exact_linear_scaling(family, method, tolerance):
    process = _ve() if family == "ve" else _vp()
    t_end = process.num_levels - 1
    times = np.linspace(t_end, 0, 20 if family == "ve" else 26)  # integer levels (VE), fractional times (VP)
    x_T = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"rtol": 1e-8, "atol": 1e-8} if method == "dopri5" else {}
    x_0, nfe = solve_probability_flow(_exact_score(process), process, x_T, times, method=method, **options)
    scale = math.sqrt(_variance(process, 0) / _variance(process, t_end))
    torch.testing.assert_close(x_0, x_T * scale, rtol=tolerance, atol=tolerance * scale)
    assert nfe == 4 * (len(times) - 1) if method == "rk4" else nfe > 0

    sample, sample_nfe = ode_sample(_exact_score(process), process, x_T, times, method=method, **options)
    gain = _denoise_gain(process, 0)
    torch.testing.assert_close(sample, x_T * scale * gain, rtol=tolerance, atol=tolerance * scale)
    assert sample_nfe == nfe + 1  # the denoise


@pytest.mark.parametrize("method", ["euler", "ddim"])
def test_first_order_steps_converge_at_first_order(method):
    """The Euler step and the DDIM step (exact for a constant eps) are first order: doubling the steps halves the
    error of the map (measured ratio 0.5-0.6 on this VE grid); a step that used the wrong time would not converge."""
    process = _ve()
    x_T = torch.ones(1, *SHAPE, dtype=torch.float64)
    scale = math.sqrt(_variance(process, 0) / _variance(process, 19))
    errors = []
    for steps in (38, 76, 152):
        x_0, _ = solve_probability_flow(
            _exact_score(process), process, x_T, np.linspace(19, 0, steps + 1), method=method
        )
        errors.append(abs(x_0.mean().item() / scale - 1))
    assert 0.4 < errors[1] / errors[0] < 0.65 and 0.4 < errors[2] / errors[1] < 0.65, errors


@pytest.mark.parametrize("family", ["ve", "vp"])
@pytest.mark.parametrize(("method", "calls_per_step"), [("heun", 2), ("dpmpp_2m", 1)])
def test_second_order_steps_converge_at_second_order(family, method, calls_per_step):
    """Heun in sigma / alpha and DPM-Solver++(2M) in lambda, down (sampling) and up (encoding): doubling the steps
    divides the error of the exact map by about 4 (measured 0.23-0.32); a corrector evaluated at the wrong end,
    averaged with the wrong weights, or an extrapolation with the wrong step ratio is first order (ratio 0.5) or
    does not converge."""
    process = _ve() if family == "ve" else _vp()
    t_end = process.num_levels - 1
    x = torch.ones(1, *SHAPE, dtype=torch.float64)
    scale = math.sqrt(_variance(process, 0) / _variance(process, t_end))
    for direction, exact in (("decode", scale), ("encode", 1 / scale)):  # encoding: the times ascend, h < 0
        errors = []
        for steps in (19, 38, 76):
            times = np.linspace(t_end, 0, steps + 1)
            x_end, nfe = solve_probability_flow(
                _exact_score(process), process, x, times if direction == "decode" else times[::-1], method=method
            )
            assert nfe == calls_per_step * steps
            errors.append(abs(x_end.mean().item() / exact - 1))
        assert 0.18 < errors[1] / errors[0] < 0.33 and 0.18 < errors[2] / errors[1] < 0.33, (direction, errors)


def test_logsnr_times_are_uniform_in_log_snr():
    """VP: lambda = log(alpha / sigma) of the continuous extension at the times is an arithmetic sequence (to the
    bisection's 1e-9 of a time unit); VE: lambda = -log sigma, so the times are the geometric levels themselves."""
    vp = _vp()
    times = logsnr_times(vp, [99.0, 50.0, 20.0, 0.0])
    assert times[0] == 99.0 and times[-1] == 0.0 and times == sorted(times, reverse=True)
    lambdas = [math.log(a / s) for a, s in (vp.marginal(t) for t in times)]
    np.testing.assert_allclose(np.diff(lambdas), (lambdas[-1] - lambdas[0]) / 3, rtol=1e-6)
    assert abs(times[1] - 50.0) > 1  # not the levels given
    ve = _ve()  # 20 geometric levels: uniform in log sigma is every level
    np.testing.assert_allclose(logsnr_times(ve, np.linspace(19, 0, 20)), np.arange(19, -1, -1), atol=1e-8)
    ascending = logsnr_times(vp, [0.0, 50.0, 99.0])  # encoding goes up
    assert ascending[0] == 0.0 and ascending[-1] == 99.0 and 0 < ascending[1] < 99
    assert logsnr_times(vp, [5.0]) == [5.0]  # one level: nothing to lay out
    pipe = _ddpm()  # nor in the pipeline: one timestep stays where the chain puts it
    one = pipe(batch_size=1, sampler="ode", num_inference_steps=1, ode_time_spacing="logsnr", output_type="pt")
    plain = pipe(batch_size=1, sampler="ode", num_inference_steps=1, output_type="pt")
    assert one.images.shape == plain.images.shape


def test_the_ode_samplers_refuse_a_zero_terminal_snr_schedule():
    """alpha_T = 0: the ODE's steps in x / alpha are undefined there; refused before any UNet call."""
    pipe = _ddpm(rescale_betas_zero_snr=True)
    pipe.unet.forward = lambda *a, **k: pytest.fail("the UNet was called")
    for sampler in ("ode", "ode_langevin"):
        with pytest.raises(ValueError, match=f"sampler='{sampler}' steps in x / alpha_t, which needs alpha_t > 0"):
            pipe(batch_size=1, sampler=sampler)
    with pytest.raises(ValueError, match="which needs alpha_t > 0"):
        pipe.encode(torch.zeros(1, 1, 8, 8))


def test_the_ode_sampler_on_the_logsnr_grid_calls_the_unet_there():
    pipe = _ddpm()
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, *a, **k: seen.append(float(t.reshape(-1)[0])) or forward(x, t, *a, **k)
    pipe(batch_size=1, output_type="pt", sampler="ode", num_inference_steps=4, ode_time_spacing="logsnr")
    # the leading timesteps are 15, 10, 5, 0; the grid starts where the prior holds, at T - 1 = 19
    expected = logsnr_times(pipe.scheduler.noise_process, [19.0, 10.0, 5.0, 0.0])
    np.testing.assert_allclose(seen, expected, rtol=1e-6)  # 3 DDIM steps then the denoise at the last time
    with pytest.raises(ValueError, match="ode_time_spacing='karras' is not supported; accepted values"):
        pipe(batch_size=1, sampler="ode", ode_time_spacing="karras")
    with pytest.raises(ValueError, match="ode_time_spacing='logsnr' applies to sampler='ode'"):
        pipe(batch_size=1, sampler="pc", ode_time_spacing="logsnr")


@pytest.mark.parametrize("family", ["ve", "vp"])
def test_ode_encode_is_the_inverse_of_the_solve(family):
    process = _ve() if family == "ve" else _vp()
    times = np.linspace(process.num_levels - 1, 0, 10)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T, _ = ode_encode(_exact_score(process), process, x, times, method="rk4")
    scale = math.sqrt(_variance(process, process.num_levels - 1) / _variance(process, 0))
    torch.testing.assert_close(x_T, x * scale, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------------------------------------------
# Predictor-corrector: exact recursions of the Gaussian case
def test_predictor_alone_follows_the_exact_variance_recursion():
    """Reverse diffusion x' = (2 - k) x + b^2 s + b z with s = -x / v_t: Var' = c^2 Var + b^2, c = 2 - k - b^2 / v_t.
    A coarse VE grid (20 levels up to sigma = 2) keeps its own bias large (about +30% at the end), so a predictor
    reading the wrong level, b instead of b^2, or no noise fails here."""
    for process in (_ve(), _vp()):
        levels = list(range(process.num_levels - 1, -1, -1))
        x, generator = _prior(process, levels[0])
        out = predictor_corrector_sample(
            _exact_score(process), process, x, levels, snr=0.16, num_corrector_steps=0, generator=generator
        )
        var = _variance(process, levels[0])
        for t, t_next in zip(levels[:-1], levels[1:], strict=True):
            (alpha, sigma), (alpha_next, sigma_next) = process.marginal(t), process.marginal(t_next)
            k = alpha / alpha_next
            b2 = sigma**2 - k**2 * sigma_next**2
            var = (2 - k - b2 / _variance(process, t)) ** 2 * var + b2
        _assert_second_moment(out, _denoise_gain(process, 0) ** 2 * var)


@pytest.mark.parametrize("family", ["ve", "vp"])
def test_corrector_reaches_the_snr_rules_stationary_variance(family):
    """At one level, from twice the right variance, 300 corrector steps settle at v (1 + a r^2) (see the module
    docstring; a = 1 - beta_t; measured 0.5% off, the batch's norms fluctuating). Catches the step's norm ratio
    unsquared, sqrt(e) for sqrt(2 e), per-sample norms (7% off at D = 64) and a wrong sign of the score."""
    process = _ve() if family == "ve" else _vp()
    level, snr = 5, 0.3
    v = _variance(process, level)
    x = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * math.sqrt(2 * v)
    out = predictor_corrector_sample(
        _exact_score(process), process, x, [level], snr=snr, num_corrector_steps=300, generator=torch.Generator()
    )
    one_minus_beta = (process.alphas[level] / process.alphas[level - 1]) ** 2
    _assert_second_moment(out, _denoise_gain(process, level) ** 2 * v * (1 + one_minus_beta * snr**2), slack=1e-3)


def test_pc_samples_match_the_data_variance():
    """The whole sampler on the main job's VP grid (T = 250, "DDPM + Langevin corrector"): the output variance is
    s^2 up to the corrector's own bias a r^2 = 0.25% and the grid's, inside the slack of 1%."""
    process = DDPMPosteriorScheduler(num_train_timesteps=250, beta_start=4e-4, beta_end=0.08).noise_process
    levels = list(range(249, -1, -1))
    x, generator = _prior(process, 249)
    out = predictor_corrector_sample(
        _exact_score(process), process, x, levels, snr=0.05, num_corrector_steps=1, generator=generator
    )
    _assert_second_moment(out, S2, slack=0.01)
    assert abs(out.mean().item()) < 4 * math.sqrt(S2 / out.numel())


def test_annealed_langevin_of_an_eps_model_reaches_the_fixed_step_stationary_variance():
    """Annealed Langevin of a VP (DDPM) eps model, s = -eps / sigma_t: after an anneal over three levels, 300
    steps at the last (eta = step_size there, contraction 0.98 a step) settle at v / (1 - eta / (4 v)); a chain
    reading sigma for sigma^2 in eta, or the score without its 1 / sigma_t, misses it (or diverges)."""
    process = _vp()
    levels = [99, 50, 20]
    x, generator = _prior(process, 99)
    step_size = 0.01  # stable at every level: eta_t / (2 v_t) < 2
    out = annealed_langevin_sample(
        _exact_score(process), process, x, levels, num_steps=300, step_size=step_size, generator=generator
    )
    v = _variance(process, 20)
    _assert_second_moment(out, _denoise_gain(process, 20) ** 2 * v / (1 - step_size / (4 * v)))


def test_annealed_langevin_follows_the_exact_variance_recursion():
    """Three updates per level, far from equilibrium: each is linear, Var' = (1 - eta_t / (2 v_t))^2 Var + eta_t,
    with eta_t = step_size sigma_t^2 / sigma_min^2, so the output variance is known exactly; eta growing as sigma_t
    instead of sigma_t^2, or a level read off by one, misses it."""
    process = _vp()
    levels, num_steps, step_size = [99, 50, 20], 3, 0.01
    x, generator = _prior(process, 99)
    out = annealed_langevin_sample(
        _exact_score(process), process, x, levels, num_steps=num_steps, step_size=step_size, generator=generator
    )
    var, sigma_min = _variance(process, 99), process.marginal(20)[1]
    for t in levels:
        eta = step_size * (process.marginal(t)[1] / sigma_min) ** 2
        for _ in range(num_steps):
            var = (1 - eta / (2 * _variance(process, t))) ** 2 * var + eta
    _assert_second_moment(out, _denoise_gain(process, 20) ** 2 * var)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
def _ddpm(**kwargs):
    return tiny_ddpm(clip_sample=False, **kwargs)


def test_ode_ddim_equals_diffusers_ddim_with_eta_zero():
    pipe = _ddpm()
    generator = torch.Generator().manual_seed(0)
    ours = pipe(batch_size=3, generator=generator, num_inference_steps=5, sampler="ode", output_type="pt").images

    ddim = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(5)
    x = randn_tensor((3, *SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(pipe.unet(x, t).sample, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_ode_dpmpp_2m_equals_diffusers_dpm_solver_multistep():
    """`ode_method="dpmpp_2m"` then the Tweedie denoise is diffusers' `DPMSolverMultistepScheduler` (dpmsolver++,
    order 2, a last first-order step to sigma = 0) on the same timesteps: the same arithmetic, so the difference
    is float32 rounding (measured 7e-7; 2e-2 without the second-order term, 1e-2 with the step ratio set to 1)."""
    pipe = _ddpm()
    options = {"num_inference_steps": 5, "sampler": "ode", "ode_method": "dpmpp_2m", "output_type": "pt"}
    ours = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), **options).images

    pipe.scheduler.set_timesteps(5)
    reference = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )
    reference.set_timesteps(timesteps=pipe.scheduler.timesteps.tolist())
    x = randn_tensor((3, *SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in reference.timesteps:
            x = reference.step(pipe.unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("make", "tolerance"), [(lambda: tiny_ncsn(), 1e-6), (_ddpm, 1e-6), (lambda: tiny_ncsn(fourier=True), 2e-3)]
)
def test_encoding_and_decoding_with_the_ode_returns_the_image(make, tolerance):
    """In float64 with rk4 on 50 steps each way: measured 1e-8 to 3e-8 for the positional UNets (the error falls
    ~30x for twice the steps, fourth order), 5e-4 for the fourier one (whose score grows as 1 / sigma; 1e-4 at
    100 steps). A drift that differed between the two directions would leave O(1) errors."""
    pipe = make()
    pipe.unet.double()
    process = pipe.scheduler.noise_process
    times = np.linspace(process.num_levels - 1, 0, 51)
    image = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        x_T, _ = ode_encode(pipe.model_score, process, image, times, method="rk4")
        decoded, _ = solve_probability_flow(pipe.model_score, process, x_T, times, method="rk4")
    assert (x_T - image).abs().max() > 0.1  # the encoding moved it
    torch.testing.assert_close(decoded, image, rtol=0, atol=tolerance)


def _ncsn_sigma_max_2():
    pipe = tiny_ncsn()
    config = {**pipe.scheduler.config, "sigma_max": 2.0}
    pipe.scheduler = NCSNScheduler.from_config(config)
    return pipe


@pytest.mark.parametrize("make", [_ncsn_sigma_max_2, _ddpm])
def test_pipeline_encode_and_decode_with_latents_returns_the_image(make):
    """`pipe.encode` and `pipe(latents=..., sampler="ode")` with the same arguments: in float64 with dopri5 at
    1e-9 the decode returns the image up to the final Tweedie denoise the sampler applies at the last level, which
    this test adds by its formula x + sigma^2 s / alpha (measured error 1e-7). An encode on other levels than the
    decode's, latents not divided by init_noise_sigma (the NCSN's sigma_max = 2), or an encode
    that ran the solve downwards would leave errors of order 0.1."""
    pipe = make()
    pipe.unet.double()
    options = {"num_inference_steps": 3, "ode_method": "dopri5", "ode_rtol": 1e-9, "ode_atol": 1e-9}
    image = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5
    latents = pipe.encode(image, **options)
    assert latents.shape == image.shape and (latents - image).abs().max() > 0.1
    decoded = pipe(batch_size=2, latents=latents, sampler="ode", output_type="pt", **options).images
    t_last = pipe._sampler_levels(options["num_inference_steps"])[-1]
    with torch.no_grad():
        denoised = image + pipe.scheduler.noise_process.sigma(t_last) ** 2 * pipe.model_score(image, t_last)
    denoised = denoised / pipe.scheduler.noise_process.alpha(t_last)
    torch.testing.assert_close(decoded, (denoised / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def test_encode_solves_upwards_on_the_samplers_times():
    """`encode` is `sampling.ode_encode` on the times `sampler="ode"` uses (here the log-SNR grid), bit for bit."""
    pipe = _ddpm()
    image = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    latents = pipe.encode(image, num_inference_steps=5, ode_method="rk4", ode_time_spacing="logsnr")
    times = logsnr_times(pipe.scheduler.noise_process, [19.0, *map(float, pipe._sampler_levels(5)[1:])])
    with torch.no_grad():
        expected, _ = ode_encode(pipe.model_score, pipe.scheduler.noise_process, image, times, method="rk4")
    assert torch.equal(latents, expected / pipe.scheduler.init_noise_sigma)


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_latents_are_the_initial_noise_in_units_of_init_noise_sigma(family):
    """diffusers' convention: `latents=` z starts the chain at init_noise_sigma z, so the draw a generator would
    make, passed as latents, gives the same images bit for bit (default sampler and ODE)."""
    pipe = _pipe(family)
    for kwargs in ({}, {"sampler": "ode"}):
        seeded = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
        noise = randn_tensor((2, *SHAPE), generator=torch.Generator().manual_seed(0))
        # a chain with noise left to draw (Langevin, ancestral) draws it after the initial noise: same generator state
        generator = torch.Generator().manual_seed(0)
        randn_tensor((2, *SHAPE), generator=generator)
        given = pipe(batch_size=2, latents=noise, generator=generator, output_type="pt", **kwargs).images
        torch.testing.assert_close(given, seeded, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
@pytest.mark.parametrize(
    ("latents", "message"),
    [
        (torch.zeros(3, 1, 8, 8), r"latents must have shape \(2, 1, 8, 8\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), "latents must be a float torch.Tensor"),
        (np.zeros((2, 1, 8, 8)), "latents must be a float torch.Tensor"),
        (torch.full((2, 1, 8, 8), math.inf), "latents must be finite"),
    ],
)
def test_bad_latents_are_named_before_any_unet_call(family, latents, message):
    pipe = _pipe(family)
    pipe.unet.forward = lambda *a, **k: pytest.fail("the UNet was called")
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(batch_size=2, latents=latents)
    with pytest.raises(ValueError, match=message):
        pipe(batch_size=2, latents=latents)


def test_encode_refuses_bad_arguments():
    pipe = _ddpm()
    with pytest.raises(ValueError, match="image has shape"):
        pipe.encode(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="ode_method='rk45' is not supported"):
        pipe.encode(torch.zeros(2, 1, 8, 8), ode_method="rk45")


SAMPLER_CALLS = [
    ("ncsn", {"sampler": "pc", "snr": 0.1, "num_corrector_steps": 2}),
    ("ncsn", {"sampler": "ode", "ode_method": "rk4"}),
    ("ncsn", {"sampler": "ode", "ode_method": "heun"}),
    ("ncsn", {"sampler": "ode", "ode_method": "dopri5", "ode_rtol": 1e-3, "ode_atol": 1e-3}),
    ("ddpm", {"sampler": "pc", "num_inference_steps": 5}),
    ("ddpm", {"sampler": "langevin", "num_langevin_steps": 2, "num_inference_steps": 5}),
    ("ddpm", {"sampler": "ode", "num_inference_steps": 5}),
    ("ddpm", {"sampler": "ode", "ode_method": "dpmpp_2m", "num_inference_steps": 5}),
    ("ncsn", {"sampler": "ode_langevin", "num_ode_steps": 2}),
    ("ddpm", {"sampler": "ode_langevin", "num_inference_steps": 5, "num_ode_steps": 2}),
]


def _pipe(family: str):
    return tiny_ncsn() if family == "ncsn" else _ddpm()


@pytest.mark.parametrize(("family", "kwargs"), SAMPLER_CALLS)
def test_same_generator_same_images(family, kwargs):
    pipe = _pipe(family)

    def draw(seed):
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs).images

    first = draw(0)
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_the_default_sampler_is_the_schedulers_chain_bit_for_bit(family):
    pipe = _pipe(family)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    scheduler, generator = pipe.scheduler, torch.Generator().manual_seed(0)
    if family == "ncsn":
        scheduler.set_timesteps()
    else:
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    x = randn_tensor((2, *SHAPE), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(pipe.model_output(x, t), t, x, generator=generator).prev_sample
    assert torch.equal(images, (x / 2 + 0.5).clamp(0, 1))


def test_ode_then_langevin_follows_the_exact_variance_recursion():
    """Heun's step is linear for Gaussian data, x' = c x with c = 1 + h/2 (sigma / v + sigma' / v' (1 + h sigma / v))
    (h = sigma' - sigma, v = s^2 + sigma^2 under VE), and each Langevin update then follows the recursion above: a
    Heun step with the wrong end evaluated, the Langevin part restarting at the top level or eta relative to another
    sigma misses it."""
    process = _ve()
    levels, num_ode_steps, num_steps, step_size = [19, 15, 11, 6, 3, 0], 3, 3, 0.02
    x, generator = _prior(process, 19)
    out = ode_langevin_sample(
        _exact_score(process),
        process,
        x,
        levels,
        num_ode_steps=num_ode_steps,
        num_steps=num_steps,
        step_size=step_size,
        generator=generator,
    )
    var = _variance(process, 19)
    for t, t_next in zip(levels[:num_ode_steps], levels[1 : num_ode_steps + 1], strict=True):
        sigma, sigma_next = process.marginal(t)[1], process.marginal(t_next)[1]
        h, v, v_next = sigma_next - sigma, _variance(process, t), _variance(process, t_next)
        var *= (1 + h / 2 * (sigma / v + sigma_next / v_next * (1 + h * sigma / v))) ** 2
    sigma_min = process.marginal(0)[1]
    for t in levels[num_ode_steps:]:
        eta = step_size * (process.marginal(t)[1] / sigma_min) ** 2
        for _ in range(num_steps):
            var = (1 - eta / (2 * _variance(process, t))) ** 2 * var + eta
    _assert_second_moment(out, _denoise_gain(process, 0) ** 2 * var)


def test_ode_langevin_with_no_ode_step_is_annealed_langevin():
    process = _vp()
    levels = [99, 50, 20]
    outs = []
    for sampler in (annealed_langevin_sample, ode_langevin_sample):
        x, generator = _prior(process, 99)
        extra = {"num_ode_steps": 0} if sampler is ode_langevin_sample else {}
        outs.append(sampler(_exact_score(process), process, x, levels, num_steps=2, step_size=0.01,
                            generator=generator, **extra))  # fmt: skip
    assert torch.equal(*outs)


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_the_ode_langevin_sampler_calls_the_unet_at_each_level_in_order(family):
    """Two calls per ODE step (at both ends), then num_langevin_steps per remaining level and the denoise."""
    pipe = _pipe(family)
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, *a, **k: seen.append(float(t.reshape(-1)[0])) or forward(x, t, *a, **k)
    pipe(batch_size=1, output_type="pt", sampler="ode_langevin", num_inference_steps=4, num_ode_steps=2,
         num_langevin_steps=2)  # fmt: skip
    a, b, c, d = [3, 2, 1, 0] if family == "ncsn" else [15, 10, 5, 0]  # NCSN: all 4 levels; DDPM: leading
    assert seen == [float(t) for t in [a, b, b, c, c, c, d, d, d]]
    assert len(seen) == 2 * 2 + (4 - 2) * 2 + 1


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_the_pc_sampler_calls_the_unet_at_each_level_in_order(family):
    pipe = _pipe(family)
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, *a, **k: seen.append(float(t.reshape(-1)[0])) or forward(x, t, *a, **k)
    kwargs = {"num_inference_steps": 3} if family == "ncsn" else {"num_inference_steps": 4}
    pipe(batch_size=1, output_type="pt", sampler="pc", num_corrector_steps=1, **kwargs)
    levels = [3.0, 2.0, 0.0] if family == "ncsn" else [15.0, 10.0, 5.0, 0.0]  # NCSN: log-spread; DDPM: leading
    assert seen == [level for level in levels for _ in range(2)]


BAD_CALLS = [
    ({"sampler": "heun"}, "sampler='heun' is not supported; accepted values"),
    ({"sampler": "pc", "snr": -0.1}, "snr must be"),
    ({"sampler": "pc", "num_corrector_steps": -1}, "num_corrector_steps must be"),
    ({"sampler": "ode", "snr": 0.1}, "snr=0.1 applies to sampler='pc', not to sampler='ode'"),
    ({"sampler": "ode", "ode_method": "rk45"}, "ode_method='rk45' is not supported; accepted values"),
    ({"sampler": "ode", "ode_rtol": 1e-3}, "ode_rtol=0.001 applies to the adaptive ode_method"),
    ({"sampler": "ode", "ode_method": "dopri5", "ode_atol": 0.0}, "ode_atol must be"),
    ({"sampler": "pc", "ode_method": "rk4"}, "ode_method='rk4' applies to sampler='ode'"),
    ({"sampler": "pc", "callback_on_step_end": lambda *a: {}}, "sampler='pc' does not accept one"),
    ({"sampler": "ode", "num_ode_steps": 1}, "num_ode_steps=1 applies to sampler='ode_langevin'"),
    ({"sampler": "ode_langevin", "num_ode_steps": -1}, "num_ode_steps must be an integer >= 0"),
    (
        {"sampler": "ode_langevin", "num_inference_steps": 3, "num_ode_steps": 3},
        "num_ode_steps must be an integer <= 2",
    ),
    ({"sampler": "ode_langevin", "step_size": 0.0}, "step_size must be"),
    ({"sampler": "ode_langevin", "num_langevin_steps": 0}, "num_langevin_steps must be an integer >= 1"),
]


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
@pytest.mark.parametrize(("kwargs", "message"), BAD_CALLS)
def test_bad_sampler_arguments_are_named_before_any_unet_call(family, kwargs, message):
    pipe = _pipe(family)
    pipe.unet.forward = lambda *a, **k: pytest.fail("the UNet was called")
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(batch_size=1, **kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe.check_inputs(batch_size=1, **kwargs)


def test_family_specific_sampler_values_are_refused():
    with pytest.raises(ValueError, match="sampler='ancestral' is not supported"):
        tiny_ncsn()(sampler="ancestral")
    with pytest.raises(ValueError, match="step_size=0.1 applies to sampler='langevin', not to sampler='ode'"):
        _ddpm()(sampler="ode", step_size=0.1)


class _Bar:
    def __init__(self, iterable=None, total=None):
        self.iterable, self.total, self.n, self.closed = iterable, total, 0, False
        bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True


bars: list[_Bar] = []


@pytest.mark.parametrize(
    ("kwargs", "total"),
    [
        ({"sampler": "pc", "num_inference_steps": 5}, 5),
        ({"sampler": "ode", "num_inference_steps": 5}, 16),  # timesteps 16 .. 0 (leading spacing): 16 time units
        ({"sampler": "ode", "ode_method": "dopri5", "num_inference_steps": 5}, 16),
    ],
)
def test_progress_bar_runs_to_its_total(kwargs, total):
    pipe = _ddpm()
    bars.clear()
    pipe.progress_bar = _Bar
    pipe(batch_size=1, output_type="pt", **kwargs)
    (bar,) = bars
    assert bar.n == total and (bar.total in (None, total))


def test_evaluate_passes_the_sampler_arguments(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    arguments = parse_evaluation_arguments(
        ["--pipeline", str(tmp_path / "pipe"), "--sampler", "pc", "--snr", "0.1", "--num_corrector_steps", "2"]
    )
    assert arguments.sample_kwargs() == {"sampler": "pc", "snr": 0.1, "num_corrector_steps": 2}
    arguments = parse_evaluation_arguments(
        ["--pipeline", str(tmp_path / "pipe"), "--sampler", "ode_langevin", "--num_ode_steps", "2", "--step_size",
         "1e-4", "--num_langevin_steps", "3"]
    )  # fmt: skip
    expected = {"sampler": "ode_langevin", "num_ode_steps": 2, "step_size": 1e-4, "num_langevin_steps": 3}
    assert arguments.sample_kwargs() == expected
    with pytest.raises((ValueError, SystemExit)):
        parse_evaluation_arguments(["--pipeline", str(tmp_path / "pipe"), "--num_ode_steps", "-1"])
