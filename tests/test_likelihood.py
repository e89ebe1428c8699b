import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hf_ddpm_ncsn import DDPMPosteriorScheduler
from hf_ddpm_ncsn.likelihood import (
    discretized_gaussian_log_likelihood,
    elbo_bpd,
    normal_kl,
    prior_bpd,
    stratified_elbo_bpd,
    vb_terms_bpd,
)

BIN_CENTRES = torch.linspace(-1, 1, 256, dtype=torch.float64)


def _gen(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(100, generator=g), torch.randn(100, generator=g)
    lv1, lv2 = torch.randn(100, generator=g), torch.randn(100, generator=g)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    torch.testing.assert_close(
        normal_kl(m1, lv1, 0.0, 0.0), kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(0, 1))
    )
    assert normal_kl(m1, lv1, m1, lv1).abs().max() == 0


@pytest.mark.parametrize(
    "mean, log_scale", [(0.0, -3.0), (0.3, -6.0), (-0.99, -1.0), (0.5, 1.5), (1.2, -4.0), (0.0, -9.0)]
)
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
    log_p = discretized_gaussian_log_likelihood(
        BIN_CENTRES, means=torch.tensor(mean, dtype=torch.float64), log_scales=torch.tensor(log_scale)
    )
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_matches_the_normal_cdf_and_stays_finite_in_the_tails():
    std = 0.05
    for x, mean in [(0.0, 0.0), (0.5, 0.4), (-1.0, -0.9), (1.0, 0.95)]:
        upper = 1.0 if x == 1.0 else _normal_cdf((x + 1 / 255 - mean) / std)
        lower = 0.0 if x == -1.0 else _normal_cdf((x - 1 / 255 - mean) / std)
        got = discretized_gaussian_log_likelihood(
            torch.tensor([x]), means=torch.tensor([mean]), log_scales=torch.tensor([math.log(std)])
        )
        assert got.item() == pytest.approx(math.log(upper - lower), rel=1e-5)
    # 40 standard deviations away: the tanh approximation underflows, the log-space CDF does not
    far = discretized_gaussian_log_likelihood(
        torch.tensor([0.0, 0.0]), means=torch.tensor([2.0, -2.0]), log_scales=torch.tensor([math.log(0.05)] * 2)
    )
    assert torch.isfinite(far).all() and (far < -700).all()


def test_prior_term_is_the_closed_form_kl():
    s = DDPMPosteriorScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.05)
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    abar = float(np.prod(1 - np.linspace(1e-3, 0.05, 100)))
    # KL(N(a x, 1 - a^2 ... )) per dimension: 0.5 (abar x^2 + (1 - abar) - 1 - log(1 - abar))
    kl = 0.5 * (abar * x0**2 + (1 - abar) - 1 - math.log(1 - abar))
    torch.testing.assert_close(prior_bpd(s, x0), kl.reshape(2, -1).mean(1) / math.log(2))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 224, (n, 1, 4, 4), generator=g).float() / 127.5 - 1


def test_a_model_that_knows_x0_has_zero_kl_terms_and_a_closed_form_decoder_term():
    # prediction_type="sample" with the true x_0: p_theta(x_{t-1} | x_t) = q(x_{t-1} | x_t, x_0) for every t >= 1
    s = DDPMPosteriorScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.05, prediction_type="sample")
    x0 = _images(3)

    def oracle(x_t, t):
        return x0.repeat(len(t) // len(x0), 1, 1, 1)

    out = elbo_bpd(oracle, s, x0, generator=torch.Generator().manual_seed(0), batch_size=30)
    assert out.terms.shape == (3, 50) and out.prior.shape == (3,) and out.bits_per_dim.shape == (3,)
    assert out.terms[:, 1:].abs().max() < 1e-5
    torch.testing.assert_close(out.bits_per_dim, out.terms[:, 0] + out.prior)
    # L_0: the decoder is N(x_0, beta~_1) (mean coefficient 1 on x_0 at t = 0, log-variance clipped to beta~_1),
    # so every pixel of an interior bin has probability 2 Phi(h / std) - 1 with h = 1/255
    betas = np.linspace(1e-3, 0.05, 50)
    abar = np.cumprod(1 - betas)
    std = math.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))
    expected = -math.log2(2 * _normal_cdf(1 / 255 / std) - 1)
    torch.testing.assert_close(out.terms[:, 0], torch.full((3,), expected), rtol=1e-5, atol=1e-6)


def test_kl_terms_of_a_biased_model_match_the_closed_form():
    # x0_hat = x_0 + delta (clip off): the means differ by coef1_t * delta and the variances agree (fixed_small),
    # so KL_t = coef1_t^2 delta^2 / (2 beta~_t) nats per pixel, whatever x_t is
    delta = 0.1
    s = DDPMPosteriorScheduler(num_train_timesteps=40, prediction_type="sample", clip_sample=False)
    x0 = _images(2)

    def biased(x_t, t):
        return x0.repeat(len(t) // len(x0), 1, 1, 1) + delta

    out = elbo_bpd(biased, s, x0, generator=torch.Generator().manual_seed(0))
    betas = np.linspace(1e-4, 0.02, 40)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    var = betas * (1 - abar_prev) / (1 - abar)
    expected = torch.from_numpy(coef1[1:] ** 2 * delta**2 / (2 * var[1:]) / math.log(2)).float()
    torch.testing.assert_close(out.terms[:, 1:], expected.expand(2, -1), rtol=1e-4, atol=1e-7)


def test_elbo_is_the_same_whatever_the_timestep_batching():
    s = DDPMPosteriorScheduler(num_train_timesteps=20)
    x0 = _images(3)

    def model(x_t, t):
        return 0.3 * x_t + 0.01 * t.reshape(-1, 1, 1, 1)

    calls = []
    results = [
        elbo_bpd(
            model,
            s,
            x0,
            generator=torch.Generator().manual_seed(0),
            batch_size=b,
            progress=lambda c: calls.append(len(c)) or c,
        )
        for b in (3, 12, 2, None)  # one timestep per call, four per call, images split, the default
    ]
    assert calls == [20, 5, 20, 20]
    assert torch.isfinite(results[0].bits_per_dim).all() and (results[0].terms > 0).all()
    for other in results[1:]:  # the noise of timestep t is the t-th draw whatever the batching: the same terms
        torch.testing.assert_close(other.terms, results[0].terms, rtol=0, atol=0)
        torch.testing.assert_close(other.bits_per_dim, results[0].bits_per_dim, rtol=0, atol=0)


def test_stratified_elbo_is_the_same_whatever_the_batching():
    """The stratified estimate shares the full bound's loop: one noise draw per stratum, whatever the batching."""
    s = DDPMPosteriorScheduler(num_train_timesteps=30)
    x0 = _images(3)

    def model(x_t, t):
        return 0.3 * x_t + 0.01 * t.reshape(-1, 1, 1, 1)

    results = [
        stratified_elbo_bpd(model, s, x0, num_strata=6, generator=torch.Generator().manual_seed(0), batch_size=b)
        for b in (3, 12, 2, None)
    ]
    assert (results[0].terms > 0).all() and results[0].terms.shape == (3, 6)
    for other in results[1:]:
        torch.testing.assert_close(other.timesteps, results[0].timesteps, rtol=0, atol=0)
        torch.testing.assert_close(other.terms, results[0].terms, rtol=0, atol=0)
        torch.testing.assert_close(other.bits_per_dim, results[0].bits_per_dim, rtol=0, atol=0)
    # each term is the bound's term at the drawn timestep: the full bound's loop at the same (image, timestep, noise)
    noise_seed = torch.Generator().manual_seed(0)
    torch.rand(3, 6, generator=noise_seed, dtype=torch.float64)  # the strata's draw comes first
    for k in range(6):
        noise = torch.randn(x0.shape, generator=noise_seed)
        t = results[0].timesteps[:, k]
        x_t = s.add_noise(x0, noise, t)
        expected = vb_terms_bpd(s, model(x_t, t), x0, x_t, t).double()
        torch.testing.assert_close(results[0].terms[:, k], expected, rtol=0, atol=0)


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_stratified_bits_per_dim_is_the_stratum_weighted_sum_of_closed_form_terms_plus_the_prior(spacing):
    # x0_hat = x_0 + delta (clip off, fixed_small): every term is deterministic and closed form, whatever the noise:
    #   L_t (t >= 1) = coef1_t^2 delta^2 / (2 beta~_t) / ln 2, L_0 = -log2(Phi((h - delta)/s) - Phi((-h - delta)/s))
    #   with s^2 = beta~_1 (interior bins), and L_T = mean 0.5 (abar x^2 + (1 - abar) - 1 - log(1 - abar)) / ln 2.
    T, K, delta = 40, 5, 0.01  # delta ~ std of the decoder, so L_0 stays finite in math.erf
    s = DDPMPosteriorScheduler(num_train_timesteps=T, prediction_type="sample", clip_sample=False)
    g = _gen(0)
    x0 = (torch.randint(32, 224, (3, 1, 4, 4), generator=g) / 127.5 - 1).double()

    def biased(x_t, t):
        return x0.repeat(len(t) // len(x0), 1, 1, 1) + delta

    out = stratified_elbo_bpd(biased, s, x0, num_strata=K, generator=_gen(1), spacing=spacing)
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    var = betas * (1 - abar_prev) / (1 - abar)
    std0, h = math.sqrt(var[1]), 1 / 255
    table = coef1**2 * delta**2 / (2 * np.where(var > 0, var, 1.0)) / math.log(2)
    table[0] = -math.log2(_normal_cdf((h - delta) / std0) - _normal_cdf((-h - delta) / std0))
    terms = torch.from_numpy(table)[out.timesteps]
    torch.testing.assert_close(out.terms, terms, rtol=1e-9, atol=0)
    prior = (0.5 * (abar[-1] * x0**2 + (1 - abar[-1]) - 1 - math.log(1 - abar[-1]))).reshape(3, -1).mean(1)
    prior = prior / math.log(2)
    torch.testing.assert_close(out.prior, prior, rtol=1e-12, atol=0)
    expected = (terms * out.stratum_sizes.double()).sum(1) + prior
    torch.testing.assert_close(out.bits_per_dim, expected, rtol=1e-9, atol=0)
    if spacing == "linear":
        return
    # and it is unbiased: its mean over many strata draws is the full bound sum_t L_t + L_T
    full = float(table.sum())
    draws = torch.stack(
        [stratified_elbo_bpd(biased, s, x0, K, generator=_gen(100 + i), spacing=spacing).bits_per_dim
         for i in range(200)]
    )  # fmt: skip
    torch.testing.assert_close((draws.mean(0) - prior), torch.full((3,), full, dtype=torch.float64), rtol=0.05,
                               atol=0)  # fmt: skip


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_elbo_refuses_a_bad_batch_size_or_an_empty_batch(batch_size):
    s = DDPMPosteriorScheduler(num_train_timesteps=4)
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        elbo_bpd(lambda x, t: x, s, _images(2), batch_size=batch_size)
    with pytest.raises(ValueError, match="non-empty batch"):
        elbo_bpd(lambda x, t: x, s, _images(2)[:0])


def test_vb_terms_pick_the_decoder_at_t0_and_kl_elsewhere():
    s = DDPMPosteriorScheduler(num_train_timesteps=10)
    x0 = _images(2)
    x_t = s.add_noise(x0, torch.randn_like(x0), torch.tensor([0, 5]))
    model_output = torch.zeros_like(x0)
    terms = vb_terms_bpd(s, model_output, x0, x_t, torch.tensor([0, 5]))
    p = s.p_mean_variance(model_output, x_t, torch.tensor([0, 5]))
    decoder = -discretized_gaussian_log_likelihood(x0[:1], means=p.mean[:1], log_scales=0.5 * p.log_variance[:1])
    assert terms[0].item() == pytest.approx(decoder.mean().item() / math.log(2), rel=1e-5)
    q_mean, _, q_log_var = s.q_posterior_mean_variance(x0[1:], x_t[1:], 5)
    kl = normal_kl(q_mean, q_log_var, p.mean[1:], p.log_variance[1:])
    assert terms[1].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-5)


def test_more_images_than_the_batch_size_are_evaluated_in_chunks():
    s = DDPMPosteriorScheduler(num_train_timesteps=6)
    x0 = _images(5)
    seen = []

    def model(x_t, t):
        seen.append(len(x_t))
        return 0.5 * x_t

    out = elbo_bpd(model, s, x0, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert max(seen) <= 2 and out.terms.shape == (5, 6)
    torch.testing.assert_close(out.prior, prior_bpd(s, x0).float())
    torch.testing.assert_close(out.bits_per_dim, out.terms.sum(1) + out.prior)
