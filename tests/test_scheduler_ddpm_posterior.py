import math
import re
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers import scheduling_ddpm
from support.gaussian_mixture import GaussianMixture
from test_scheduler_ncsn import assert_matches_mixture, public_config

import hf_ddpm_ncsn.schedulers.scheduling_ddpm_posterior as scheduling_ddpm_posterior
from hf_ddpm_ncsn import DDPMPosteriorScheduler

# --- the schedule and the posterior, against closed forms --------------------------------------------------------


def test_config_round_trips_with_diffusers_ddpm_scheduler():
    theirs = DDPMScheduler(
        num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )
    ours = DDPMPosteriorScheduler.from_config(theirs.config)
    assert isinstance(ours, DDPMPosteriorScheduler)
    assert ours.config.prediction_type == "v_prediction" and ours.config.num_train_timesteps == 50
    back = DDPMScheduler.from_config(ours.config)
    assert public_config(back) == public_config(theirs)
    assert "DDPMScheduler" in [c.__name__ for c in ours.compatibles]


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_schedules_match_diffusers_to_float32_precision(schedule):
    theirs = DDPMScheduler(num_train_timesteps=200, beta_schedule=schedule)
    ours = DDPMPosteriorScheduler(num_train_timesteps=200, beta_schedule=schedule)
    assert ours.betas.dtype == torch.float64
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=1e-4, atol=1e-7)


def test_linear_schedule_is_computed_in_float64_from_the_config():
    s = DDPMPosteriorScheduler(num_train_timesteps=10, beta_start=0.1, beta_end=0.2)
    np.testing.assert_array_equal(s.betas.numpy(), np.linspace(0.1, 0.2, 10))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(0.1, 0.2, 10)), rtol=1e-15)


def test_posterior_is_bayes_rule_of_the_forward_gaussians():
    # q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}),
    # mean = variance * (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1}))
    s = DDPMPosteriorScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.05)
    betas = np.linspace(1e-3, 0.05, 100)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = abar[:-1]
    t = np.arange(1, 100)
    precision = alphas[t] / betas[t] + 1 / (1 - abar_prev)
    np.testing.assert_allclose(s.posterior_variance.numpy()[1:], 1 / precision, rtol=1e-10)
    np.testing.assert_allclose(
        s.posterior_mean_coef2.numpy()[1:], np.sqrt(alphas[t]) / betas[t] / precision, rtol=1e-10
    )
    np.testing.assert_allclose(s.posterior_mean_coef1.numpy()[1:], np.sqrt(abar_prev) / (1 - abar_prev) / precision)
    # t = 0: x_{-1} is x_0 itself, so the posterior mean is x_0 and its log-variance is clipped to log beta~_1
    assert s.posterior_mean_coef1[0] == pytest.approx(1.0) and s.posterior_mean_coef2[0] == 0.0
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == pytest.approx(np.log(1 / precision[0]))
    np.testing.assert_allclose(s.alphas_cumprod_prev.numpy(), np.append(1.0, abar[:-1]))

    x0, xt = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)
    ts = torch.tensor([1, 50, 99])
    mean, var, log_var = s.q_posterior_mean_variance(x0, xt, ts)
    coef_x0 = torch.from_numpy(np.sqrt(abar_prev) / (1 - abar_prev) / precision)[ts - 1].reshape(3, 1, 1, 1)
    coef_xt = torch.from_numpy(np.sqrt(alphas[t]) / betas[t] / precision)[ts - 1].reshape(3, 1, 1, 1)
    torch.testing.assert_close(mean, coef_x0 * x0 + coef_xt * xt)
    torch.testing.assert_close(log_var, var.log())


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range", "fixed_large_log"])
def test_variances_are_finite_everywhere(variance_type):
    s = DDPMPosteriorScheduler(num_train_timesteps=20, variance_type=variance_type)
    channels = 2 if variance_type == "learned_range" else 1
    out = s.p_mean_variance(torch.randn(20, channels, 2, 2), torch.randn(20, 1, 2, 2), torch.arange(20))
    assert torch.isfinite(out.log_variance).all() and torch.isfinite(out.mean).all()


def test_fixed_large_and_learned_range_use_the_paper_values():
    s = DDPMPosteriorScheduler(num_train_timesteps=20, variance_type="fixed_large")
    x = torch.zeros(20, 1, 1, 1)
    log_var = s.p_mean_variance(x, x, torch.arange(20)).log_variance.flatten()
    torch.testing.assert_close(log_var[1:], s.betas[1:].log().float())
    torch.testing.assert_close(log_var[0], s.posterior_variance[1].log().float())
    s = DDPMPosteriorScheduler(num_train_timesteps=20, variance_type="learned_range")
    for v, expected in [(-1.0, s.posterior_log_variance_clipped), (1.0, s.betas.log())]:
        out = torch.cat([x, torch.full_like(x, v)], dim=1)
        got = s.p_mean_variance(out, x, torch.arange(20)).log_variance.flatten()
        torch.testing.assert_close(got, expected.float())


def test_respaced_chain_recomputes_beta_from_the_kept_alpha_bars():
    s = DDPMPosteriorScheduler(num_train_timesteps=100, timestep_spacing="trailing")
    s.set_timesteps(10)
    kept = s.timesteps.flip(0).numpy()
    abar = s.alphas_cumprod.numpy()[kept]
    beta = 1 - abar[1:] / abar[:-1]
    expected = beta * (1 - abar[:-1]) / (1 - abar[1:])
    np.testing.assert_allclose(s._sampling_chain["posterior_variance"][1:], expected, rtol=1e-12)
    assert s.previous_timestep(int(kept[3])) == int(kept[2])
    assert s.previous_timestep(int(kept[0])) == -1


# --- parity with diffusers where the math is the same ----------------------------------------------------------


def test_add_noise_matches_diffusers():
    theirs, ours = DDPMScheduler(), DDPMPosteriorScheduler()
    x0, noise = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5
    )


def _diffusers_in_float64(scheduler: DDPMScheduler) -> DDPMScheduler:
    """diffusers' own step formulas, fed the float64 schedule: the same math without float32 rounding."""
    c = scheduler.config
    scheduler.alphas_cumprod = torch.cumprod(
        1 - torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64), 0
    )
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _exact_step(kwargs: dict, t: int, out: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor):
    """diffusers' step formulas on the float64 schedule, fed the given noise: the exact step to float64 precision."""
    exact = _diffusers_in_float64(DDPMScheduler(**kwargs))
    with mock.patch.object(scheduling_ddpm, "randn_tensor", lambda shape, **_: noise.double()):
        return exact.step(out.double(), t, sample.double())


def _rounding_bounds(dtype, t: int, prediction_type: str, out: torch.Tensor, sample: torch.Tensor, noise):
    """Elementwise bounds on |step - exact step| for prev_sample and the predicted x_0, from the arithmetic.

    Each output is a sum of terms c1 x0, c2 x_t, sigma z, and x0 a sum of terms like x_t / sqrt(abar); each term
    is formed with a handful of roundings of unit u, so 16 u times the sum of the term magnitudes bounds the error.
    The float64 reference itself computes beta_t = 1 - abar_t / abar_{t-1} and loses u64 / beta_t of it by
    cancellation, which multiplies the beta-dependent terms; the noise scale's log-variance (up to |log beta~_1|,
    about 9) is rounded too.
    """
    u, u64 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float64).eps / 2
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    a, a_prev = float(abar[t]), float(abar[t - 1])
    beta = 1 - a / a_prev
    c1, c2 = math.sqrt(a_prev) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
    x, e = sample.double().abs(), out[:, : sample.shape[1]].double().abs()
    x0_terms = {
        "epsilon": x / math.sqrt(a) + math.sqrt((1 - a) / a) * e,
        "sample": e,
        "v_prediction": math.sqrt(a) * x + math.sqrt(1 - a) * e,
    }[prediction_type]
    noise_term = math.sqrt(beta) * noise.double().abs() * (1 + abs(math.log(beta * (1 - a_prev) / (1 - a))))
    prev = 16 * (u + u64 / beta) * (c1 * x0_terms + noise_term) + 16 * u * c2 * x
    return prev, 16 * u * x0_terms


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_matches_diffusers_math_to_rounding_for_t_above_zero(prediction_type, variance_type, clip_sample, dtype):
    # the reference is diffusers' own step, in float64: in float32 diffusers' beta_t = 1 - abar_t / abar_{t-1}
    # cancels for small t (see the test below), ours does not, so ours is compared with the exact step
    kwargs = dict(prediction_type=prediction_type, variance_type=variance_type, clip_sample=clip_sample)
    ours = DDPMPosteriorScheduler(**kwargs)
    channels = 6 if variance_type == "learned_range" else 3
    g = torch.Generator().manual_seed(0)
    for t in [1, 2, 20, 50, 500, 999]:
        sample = torch.randn(2, 3, 4, 4, generator=g, dtype=dtype)
        out = torch.randn(2, channels, 4, 4, generator=g, dtype=dtype)
        if variance_type == "learned_range":
            out[:, 3:] = out[:, 3:].tanh()
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(t), dtype=dtype)
        got = ours.step(out, t, sample, generator=torch.Generator().manual_seed(t))  # draws this same noise
        exact = _exact_step(kwargs, t, out, sample, noise)
        prev_bound, x0_bound = _rounding_bounds(dtype, t, prediction_type, out, sample, noise)
        assert ((got.prev_sample.double() - exact.prev_sample).abs() <= prev_bound).all(), t
        assert ((got.pred_original_sample.double() - exact.pred_original_sample).abs() <= x0_bound).all(), t


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("spacing, offset", [("trailing", 0), ("leading", 1)])
def test_a_chain_ending_above_zero_matches_diffusers_until_its_last_step_which_returns_x0(
    variance_type, spacing, offset
):
    kwargs = dict(variance_type=variance_type, timestep_spacing=spacing, steps_offset=offset)
    ours, theirs = DDPMPosteriorScheduler(**kwargs), _diffusers_in_float64(DDPMScheduler(**kwargs))
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(20)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() and int(ours.timesteps[-1]) > 0
    channels = 6 if variance_type == "learned_range" else 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    last = len(ours.timesteps) - 1
    for i, t in enumerate(ours.timesteps):
        out = torch.randn(2, channels, 4, 4, generator=g, dtype=torch.float64)
        if variance_type == "learned_range":
            out[:, 3:] = out[:, 3:].tanh()
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(i))
        b = theirs.step(out, t, x, generator=torch.Generator().manual_seed(i))
        if i < last:  # float64 with beta's cancellation of at most u64 / beta >= 1e-12 relative: 1e-10 holds
            torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-10, atol=1e-10)
        else:  # the last step: ours ends at x_0 = mu(x_1), the predicted x_0; diffusers adds noise to it
            torch.testing.assert_close(a.prev_sample, b.pred_original_sample, rtol=1e-12, atol=1e-12)
            noise_added = (b.prev_sample - b.pred_original_sample).abs().max()
            assert noise_added < 1e-9 if variance_type == "fixed_small" else noise_added > 1e-4  # std >= 0.014
        x = a.prev_sample


def test_previous_timestep_is_what_diffusers_returns():
    # diffusers' own test_custom_timesteps calls .item() on it
    s = DDPMPosteriorScheduler()
    timesteps = [100, 87, 50, 1, 0]
    s.set_timesteps(timesteps=timesteps)
    got = [s.previous_timestep(t) for t in s.timesteps]
    assert all(isinstance(p, torch.Tensor) and p.ndim == 0 for p in got)
    assert [p.item() for p in got] == [87, 50, 1, 0, -1]
    theirs = DDPMScheduler()
    theirs.set_timesteps(timesteps=timesteps)
    assert [p.item() for p in got] == [theirs.previous_timestep(t).item() for t in theirs.timesteps]
    fresh = DDPMPosteriorScheduler()  # the training chain, before set_timesteps: timestep - 1, as in diffusers
    assert fresh.previous_timestep(5) == 4 and fresh.previous_timestep(torch.tensor(5)).item() == 4


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_every_step_count_works_and_matches_diffusers_where_diffusers_is_valid(spacing):
    ours, theirs = DDPMPosteriorScheduler(timestep_spacing=spacing), DDPMScheduler(timestep_spacing=spacing)
    for n in range(1, 1001):
        ours.set_timesteps(n)
        steps = ours.timesteps.tolist()
        assert len(steps) == n and steps == sorted(set(steps), reverse=True) and 0 <= steps[-1] <= steps[0] < 1000
        theirs.set_timesteps(n)
        if len(theirs.timesteps) == n and int(theirs.timesteps.min()) >= 0:
            assert steps == theirs.timesteps.tolist(), n
    if spacing == "trailing":  # diffusers' float arange gives n + 1 timesteps for these, the last one -1
        for n in (61, 103, 121):
            theirs.set_timesteps(n)
            assert len(theirs.timesteps) == n + 1 and int(theirs.timesteps[-1]) == -1


def test_float32_step_at_small_t_is_closer_to_the_exact_math_than_diffusers():
    exact, ours, theirs = _diffusers_in_float64(DDPMScheduler()), DDPMPosteriorScheduler(), DDPMScheduler()
    shape = (4, 3, 8, 8)
    sample, out = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    for t in [1, 2, 3]:
        # the exact float64 step, with its noise swapped for the float32 draw that both float32 runs make
        std = exact._get_variance(t).sqrt()
        z64 = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        z32 = torch.randn(shape, generator=torch.Generator().manual_seed(0)).double()
        truth = exact.step(out, t, sample, generator=torch.Generator().manual_seed(0)).prev_sample - std * (z64 - z32)
        errors = [
            (s.step(out.float(), t, sample.float(), generator=torch.Generator().manual_seed(0)).prev_sample - truth)
            .abs()
            .max()
            for s in (ours, theirs)
        ]
        assert errors[0] < 1e-5 < errors[1], errors


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_respaced_sampling_chain_matches_diffusers(spacing):
    theirs = DDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ours = DDPMPosteriorScheduler.from_config(theirs.config)
    samples = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(25)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 1, 4, 4, generator=g)
        for t in scheduler.timesteps:
            x = scheduler.step(0.5 * torch.tanh(x), t, x, generator=g).prev_sample
        samples.append(x)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    torch.testing.assert_close(samples[0], samples[1], rtol=1e-5, atol=1e-5)


def test_thresholding_matches_diffusers():
    kwargs = dict(thresholding=True, sample_max_value=2.0, prediction_type="sample")
    theirs, ours = DDPMScheduler(**kwargs), DDPMPosteriorScheduler(**kwargs)
    out, sample = 3 * torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = ours.step(out, 100, sample, generator=torch.Generator().manual_seed(0))
    b = theirs.step(out, 100, sample, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample)
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5)


# --- the whole chain against an analytic target ---------------------------------------------------------------

MIXTURE = GaussianMixture(weights=[0.25, 0.75], means=[[-0.5, -0.5], [0.5, 0.5]], stds=[0.1, 0.1])


def _ancestral_samples(num_inference_steps: int | None, n: int = 1000) -> torch.Tensor:
    s = DDPMPosteriorScheduler(clip_sample=False)
    if num_inference_steps is not None:
        s.set_timesteps(num_inference_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    for t in s.timesteps:
        abar = float(s.alphas_cumprod[t])
        eps = -((1 - abar) ** 0.5) * MIXTURE.score(x, scale=abar**0.5, extra_variance=1 - abar)
        x = s.step(eps, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("num_inference_steps", [None, 100])
def test_ancestral_sampling_with_the_exact_noise_reproduces_the_mixture(num_inference_steps):
    assert_matches_mixture(_ancestral_samples(num_inference_steps), MIXTURE)


def test_the_same_check_fails_when_the_sampling_noise_is_dropped(monkeypatch):
    monkeypatch.setattr(scheduling_ddpm_posterior, "randn_tensor", lambda shape, **kwargs: torch.zeros(shape))
    with pytest.raises(AssertionError):
        assert_matches_mixture(_ancestral_samples(100), MIXTURE)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_schedule": "cosine"}, "beta_schedule.*'squaredcos_cap_v2'"),
        ({"variance_type": "small"}, "variance_type.*'fixed_small'"),
        ({"prediction_type": "score"}, "prediction_type.*'v_prediction'"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing.*'trailing'"),
        ({"beta_start": -0.1}, "beta"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ],
)
def test_bad_config_raises_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMPosteriorScheduler(**kwargs)


def test_bad_sampling_arguments_are_named():
    s = DDPMPosteriorScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(11)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep=3 is not in the sampling chain"):
        s.step(torch.zeros(1, 1), 3, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="2 \\* 1 channels"):
        DDPMPosteriorScheduler(variance_type="learned").p_mean_variance(torch.zeros(1, 1), torch.zeros(1, 1), 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio must be a finite number in (0.0, 1.0]"),
        ({"dynamic_thresholding_ratio": 0.0}, "dynamic_thresholding_ratio must be a finite number in (0.0, 1.0]"),
        ({"sample_max_value": -1.0}, "sample_max_value must be a finite number"),
        ({"sample_max_value": math.inf}, "sample_max_value must be a finite number"),
        ({"clip_sample": "yes"}, "clip_sample must be True or False"),
        ({"thresholding": 1}, "thresholding must be True or False"),
        ({"beta_end": math.nan}, "beta_end must be a finite number"),
        ({"steps_offset": 1000}, "steps_offset must be an integer <= 999"),
        # a config may not ask for more than the documented bound (1e9 would allocate 7.5 GiB per table)
        ({"num_train_timesteps": 10**9}, "num_train_timesteps must be an integer <= 100000"),
    ],
)
def test_bad_values_are_refused_at_construction_not_at_step(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        DDPMPosteriorScheduler(**kwargs)


def test_numpy_scalars_are_accepted_and_saved_as_python_numbers(tmp_path):
    s = DDPMPosteriorScheduler(num_train_timesteps=np.int64(50), beta_end=np.float32(0.02), clip_sample=np.bool_(True))
    s.set_timesteps(np.int64(10))
    assert len(s.timesteps) == 10 and type(s.config.num_train_timesteps) is int
    s.save_pretrained(tmp_path)
    assert DDPMPosteriorScheduler.from_pretrained(tmp_path).config.num_train_timesteps == 50


def test_learned_variance_is_the_model_log_variance():
    s = DDPMPosteriorScheduler(num_train_timesteps=20, variance_type="learned")
    g = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    p = s.p_mean_variance(out, x_t, torch.tensor([0, 7, 19]))
    assert torch.equal(p.log_variance, out[:, 1:])
    torch.testing.assert_close(p.variance, out[:, 1:].exp(), rtol=0, atol=0)
