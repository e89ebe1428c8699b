"""The noise-process module against closed forms: Gaussian data N(0, s^2 I) has an exact score and posterior mean
under both processes, so every conversion can be checked against mathematics rather than against itself."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.schedulers.noise_process import (
    PREDICTION_TYPES,
    VarianceExploding,
    VariancePreserving,
    denoising_mse,
    gather,
)

DATA_STD = 0.7  # Gaussian data N(0, s^2 I)


def _schedulers():
    return {
        "ve": NCSNScheduler(num_train_timesteps=10, sigma_min=0.01, sigma_max=3.0),
        "vp": DDPMPosteriorScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2),
    }


def _gaussian_posterior(alpha, sigma, x_t):
    """Exact score of q_t = N(0, (alpha^2 s^2 + sigma^2) I) and E[x_0 | x_t] for x_0 ~ N(0, s^2 I)."""
    total = alpha**2 * DATA_STD**2 + sigma**2
    return -x_t / total, alpha * DATA_STD**2 * x_t / total


def test_marginals_are_the_two_processes():
    ve, vp = _schedulers()["ve"], _schedulers()["vp"]
    like = torch.zeros(())
    alpha, sigma = ve.marginal(4, like)
    assert alpha == 1.0 and sigma == pytest.approx(float(ve.sigmas[4]), rel=1e-15)
    alpha, sigma = vp.marginal(7, like)
    assert alpha**2 == pytest.approx(float(vp.alphas_cumprod[7]), rel=1e-14)
    assert alpha**2 + sigma**2 == pytest.approx(1.0, abs=1e-15)
    # the same marginals as diffusers' DDPMScheduler (float32 alphas_cumprod there)
    reference = DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2).alphas_cumprod
    np.testing.assert_allclose(vp.noise_process.alphas**2, reference.double().numpy(), rtol=1e-6)


def test_gather_is_a_float_for_one_level_and_broadcasts_per_sample():
    table = np.array([0.5, 1.5, 2.5, 3.5])
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    assert gather(table, 2, like) == 2.5 and isinstance(gather(table, torch.tensor(2), like), float)
    out = gather(table, torch.tensor([3, 0, 1]), like)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [3.5, 0.5, 1.5]


@pytest.mark.parametrize("process_name", ["ve", "vp"])
def test_exact_gaussian_score_gives_the_exact_posterior_mean(process_name):
    """Tweedie's formula through every prediction type: a network predicting the exact score (or the eps, x_0, v
    it implies) of Gaussian data recovers E[x_0 | x_t] in closed form, and the score from each of them; `from_score`
    gives each output back from the score."""
    scheduler = _schedulers()[process_name]
    process = scheduler.noise_process
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 3, len(process.sigmas) - 1, 5])
    x_t = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64) * 2
    alpha, sigma = process.marginal(t, x_t)
    score, posterior_mean = _gaussian_posterior(alpha, sigma, x_t)
    outputs = {
        "score": score,
        "epsilon": -sigma * score,
        "sample": posterior_mean,
        "v_prediction": alpha * (-sigma * score) - sigma * posterior_mean,
    }
    assert set(outputs) == set(PREDICTION_TYPES)
    for prediction_type, output in outputs.items():
        torch.testing.assert_close(process.to_sample(output, prediction_type, x_t, t), posterior_mean, rtol=1e-10,
                                   atol=1e-12)  # fmt: skip
        torch.testing.assert_close(process.to_score(output, prediction_type, x_t, t), score, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(process.to_epsilon(output, prediction_type, x_t, t), -sigma * score, rtol=1e-10,
                                   atol=1e-12)  # fmt: skip
        # and back: the output that implies the score (what reconstruction guidance hands the scheduler)
        torch.testing.assert_close(process.from_score(score, prediction_type, x_t, t), output, rtol=1e-10,
                                   atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("process_name", ["ve", "vp"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_targets_are_what_each_prediction_type_should_output(process_name, prediction_type):
    process = _schedulers()[process_name].noise_process
    g = torch.Generator().manual_seed(1)
    x0, noise = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([1, 0, 4])
    x_t = process.add_noise(x0, noise, t)
    alpha, sigma = process.marginal(t, x0)
    torch.testing.assert_close(x_t, alpha * x0 + sigma * noise)
    target = process.target(prediction_type, x0, noise, t)
    torch.testing.assert_close(process.to_epsilon(target, prediction_type, x_t, t), noise, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(process.to_sample(target, prediction_type, x_t, t), x0, rtol=1e-10, atol=1e-10)


def test_velocity_is_salimans_and_ho():
    process = VariancePreserving(np.array([0.9, 0.5, 0.1]))
    x0, noise = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    v = process.velocity(x0, noise, 1)
    torch.testing.assert_close(v, np.sqrt(0.5) * noise - np.sqrt(0.5) * x0)


def test_tables_are_looked_up_at_integer_levels_only():
    """A fractional level per sample has no table entry: it is an error, not a silent truncation (a fractional
    scalar level is the continuous extension, tested below)."""
    for process in (VarianceExploding(np.array([0.1, 1.0, 10.0])), VariancePreserving(np.array([0.9, 0.5, 0.1]))):
        with pytest.raises(TypeError, match="integer level index"):
            process.marginal(torch.tensor([0.0, 1.5]), torch.zeros(2, 1, 2, 2))
        with pytest.raises(TypeError, match="integer level index"):
            gather(process.sigmas, 1.5, torch.zeros(()))
        with pytest.raises(ValueError, match=r"outside the process's time range \[0, 2\]"):
            process.marginal(2.5)
        with pytest.raises(ValueError, match="needs `like`"):
            process.marginal(torch.tensor([0, 1]))
    assert gather(np.array([1.0, 2.0, 3.0]), 2.0, torch.zeros(())) == 3.0  # an integral float is an index


def test_continuous_ve_extension_is_the_geometric_sequence():
    """NCSN's sigmas are geometric, so between two levels sigma_t is their weighted geometric mean and
    d log sigma / dt the constant log-ratio: the extension adds nothing the schedule does not say."""
    sigmas = 0.01 * (50.0 / 0.01) ** (np.arange(7) / 6)
    process = VarianceExploding(sigmas)
    for t in (0.25, 2.5, 5.9):
        k, w = int(t), t - int(t)
        alpha, sigma, dlog_alpha, dlog_sigma = process.continuous_marginal(t)
        assert (alpha, dlog_alpha) == (1.0, 0.0)
        assert sigma == pytest.approx(sigmas[k] ** (1 - w) * sigmas[k + 1] ** w, rel=1e-14)
        assert dlog_sigma == pytest.approx(np.log(50.0 / 0.01) / 6, rel=1e-12)
        f, g2 = process.sde_coefficients(t)
        assert f == 0.0 and g2 == pytest.approx(2 * sigma**2 * dlog_sigma, rel=1e-14)  # g^2 = d sigma^2 / dt
    assert process.marginal(3) == (1.0, sigmas[3])  # integer levels are the table


def test_continuous_vp_extension_stays_variance_preserving_and_monotone():
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    process = VariancePreserving(alphas_cumprod)
    grid = np.linspace(0, 999, 20_001)
    values = np.array([process.marginal(t) for t in grid])
    np.testing.assert_allclose(values[:, 0] ** 2 + values[:, 1] ** 2, 1.0, rtol=0, atol=4e-16)
    assert np.all(np.diff(values[:, 0]) < 0) and np.all(np.diff(values[:, 1]) > 0)
    for t in (0.5, 17.3, 998.5):
        _, _, dlog_alpha, dlog_sigma = process.continuous_marginal(t)
        # f = d log alpha / dt is -beta(t) / 2 of the VP SDE: log alpha_bar falls by -log(1 - beta_{k+1}) from
        # level k to k + 1, the rate at the segment's midpoint; linear betas make beta(t) linear in between
        beta_t = np.interp(t + 0.5, np.arange(1000), -np.log1p(-betas))
        assert -2 * dlog_alpha == pytest.approx(beta_t, rel=2e-3)
        f, g2 = process.sde_coefficients(t)
        assert g2 == pytest.approx(-2 * f, rel=1e-12)  # VP: g^2 = beta(t) = -2 f
        # the log-rates are the derivatives of the marginal itself (central differences, error O(h^2))
        h = 1e-4
        (a_hi, s_hi), (a_lo, s_lo) = process.marginal(t + h), process.marginal(t - h)
        assert dlog_alpha == pytest.approx((np.log(a_hi) - np.log(a_lo)) / (2 * h), rel=1e-5)
        assert dlog_sigma == pytest.approx((np.log(s_hi) - np.log(s_lo)) / (2 * h), rel=1e-5)
    assert process.marginal(10) == (np.sqrt(alphas_cumprod[10]), np.sqrt(1 - alphas_cumprod[10]))
    assert process.marginal(torch.tensor(10.0)) == process.marginal(10.0) == process.marginal(10)  # a float time


def test_denoising_mse_is_per_sample_mean_over_pixels():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), torch.arange(4.0).reshape(1, 2, 2)])
    assert denoising_mse(prediction, target).tolist() == [1.0, (0 + 1 + 4 + 9) / 4]


def test_ve_process_has_unit_alpha():
    process = VarianceExploding(np.array([0.1, 1.0, 10.0]))
    assert process.alphas.tolist() == [1.0, 1.0, 1.0]
    x0, noise = torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
    assert process.add_noise(x0, noise, torch.tensor([0, 2])).flatten().tolist() == pytest.approx([1.1, 11.0])


def test_ncsn_step_returns_the_tweedie_estimate():
    """`pred_original_sample` of a Langevin step with the exact Gaussian score is E[x_0 | x] in closed form."""
    scheduler = NCSNScheduler(num_train_timesteps=5, sigma_min=0.05, sigma_max=2.0, num_langevin_steps=2,
                              prediction_type="score")  # fmt: skip
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    level = 3
    sigma = float(scheduler.sigmas[level])
    score, posterior_mean = _gaussian_posterior(1.0, sigma, x)
    out = scheduler.step(score, level, x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.pred_original_sample, posterior_mean, rtol=1e-12, atol=1e-12)
    prev_sample, x0 = scheduler.step(score, level, x, generator=torch.Generator().manual_seed(3), return_dict=False)
    torch.testing.assert_close(prev_sample, out.prev_sample, rtol=0, atol=0)
    torch.testing.assert_close(x0, posterior_mean, rtol=1e-12, atol=1e-12)


def test_ddpm_scheduler_gives_the_score_of_an_eps_model():
    """An eps network is a score model: for Gaussian data the optimal eps_hat is -sigma_t * score, and the scheduler
    turns it back into the exact score, also from the mean half of a learned-variance output."""
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=20, variance_type="learned_range")
    x_t = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0, 10, 19])
    alpha, sigma = scheduler.marginal(t, x_t)
    score, _ = _gaussian_posterior(alpha, sigma, x_t)
    output = torch.cat([-sigma * score, torch.zeros_like(x_t)], dim=1)
    torch.testing.assert_close(scheduler.score_from_model_output(output, t, x_t), score, rtol=1e-10, atol=1e-12)
