import numpy as np
import pytest
import torch

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.likelihood import elbo_bpd
from hf_ddpm_ncsn.losses import ddpm_loss, ncsn_score_matching_loss

# Data N(0, s^2 I): every optimal predictor is linear and every expected loss has a closed form.
DATA_STD = 0.5


def _data(n: int = 200_000, seed: int = 0) -> torch.Tensor:
    return DATA_STD * torch.randn(n, 1, 1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ncsn_loss_of_the_exact_score_is_its_closed_form_minimum():
    # s*(x, sigma) = -x / (s^2 + sigma^2); sigma s* + eps = (s^2 eps - sigma x_0) / (s^2 + sigma^2) has variance
    # s^2 / (s^2 + sigma^2): the expected loss, averaged over the levels
    s = NCSNScheduler(num_train_timesteps=5, sigma_min=0.05, sigma_max=2.0, prediction_type="score")
    sigmas = s.sigmas.numpy()
    minimum = float(np.mean(DATA_STD**2 / (DATA_STD**2 + sigmas**2)))

    def exact_score(x, sigma):
        return -x / (DATA_STD**2 + sigma.reshape(-1, 1, 1, 1) ** 2)

    g = torch.Generator().manual_seed(1)
    loss = ncsn_score_matching_loss(exact_score, s, _data(), time_embedding_type="fourier", generator=g)
    assert loss.item() == pytest.approx(minimum, rel=0.01)

    def worse(x, sigma):
        return 1.1 * exact_score(x, sigma)

    assert ncsn_score_matching_loss(worse, s, _data(), time_embedding_type="fourier", generator=g) > loss


def test_ncsn_loss_with_epsilon_prediction_is_the_noise_mse():
    s = NCSNScheduler(num_train_timesteps=5, sigma_min=0.05, sigma_max=2.0, prediction_type="epsilon")
    x0 = _data(1000)
    calls = {}

    def model(x, t):
        calls["t"] = t
        return torch.zeros_like(x)  # eps_hat = 0: the loss is E ||eps||^2 / D = 1

    loss = ncsn_score_matching_loss(model, s, x0, generator=torch.Generator().manual_seed(0))
    assert calls["t"].dtype == torch.long
    assert loss.item() == pytest.approx(1.0, rel=0.1)


def test_ddpm_simple_loss_of_the_exact_noise_predictor_is_its_closed_form_minimum():
    # E[eps | x_t] = sqrt(1 - abar) x_t / (abar s^2 + 1 - abar);
    # the residual variance is abar s^2 / (abar s^2 + 1 - abar)
    s = DDPMPosteriorScheduler(num_train_timesteps=20, beta_start=1e-3, beta_end=0.2)
    abar = s.alphas_cumprod

    def exact_eps(x, t):
        a = abar[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * DATA_STD**2 + 1 - a)

    minimum = float((abar * DATA_STD**2 / (abar * DATA_STD**2 + 1 - abar)).mean())
    loss = ddpm_loss(exact_eps, s, _data(), generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(minimum, rel=0.01)


def test_vlb_loss_is_an_unbiased_estimate_of_the_elbo_terms():
    # a model whose x_0 estimate is off by a constant has deterministic terms: the vlb loss averages T * L_t over
    # uniform t, so its mean over many draws is sum_t L_t
    s = DDPMPosteriorScheduler(num_train_timesteps=10, prediction_type="sample", clip_sample=False)
    x0 = (torch.randint(40, 200, (4096, 1, 2, 2), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).float()

    batch = {}

    def biased(x, t):
        return batch["x0"].repeat(len(x) // len(batch["x0"]), 1, 1, 1) + 0.05

    batch["x0"] = x0[:8]
    terms = elbo_bpd(biased, s, x0[:8], generator=torch.Generator().manual_seed(0)).terms
    batch["x0"] = x0
    vlb = ddpm_loss(biased, s, x0, loss_type="vlb", generator=torch.Generator().manual_seed(1))
    assert vlb.item() == pytest.approx(terms.sum(1).mean().item(), rel=0.05)


def test_hybrid_loss_trains_the_variance_through_the_bound_and_the_mean_only_through_mse():
    s = DDPMPosteriorScheduler(num_train_timesteps=10, variance_type="learned_range")
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    w_mean = torch.tensor(0.3, requires_grad=True)
    w_var = torch.tensor(0.2, requires_grad=True)

    def model(x, t):
        return torch.cat([w_mean * x, torch.tanh(w_var * x)], dim=1)

    def grads(loss_type, **kwargs):
        loss = ddpm_loss(model, s, x0, loss_type=loss_type, generator=torch.Generator().manual_seed(0), **kwargs)
        return torch.autograd.grad(loss, [w_mean, w_var], allow_unused=True)

    hybrid_mean, hybrid_var = grads("hybrid")
    hybrid0_mean, hybrid0_var = grads("hybrid", vlb_weight=0.0)
    assert hybrid_mean.item() == pytest.approx(hybrid0_mean.item(), rel=1e-6)  # stop-gradient on the mean
    assert hybrid0_var is None or hybrid0_var.item() == 0.0
    assert hybrid_var.abs().item() > 0
    vlb_mean, vlb_var = grads("vlb")
    assert vlb_mean.abs().item() > 0 and vlb_var.abs().item() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_simple_loss_is_zero_for_a_perfect_predictor(prediction_type):
    s = DDPMPosteriorScheduler(num_train_timesteps=10, prediction_type=prediction_type)
    x0 = torch.rand(4, 1, 2, 2) * 2 - 1
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 10, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    target = {"epsilon": noise, "sample": x0, "v_prediction": s.get_velocity(x0, noise, t)}[prediction_type]

    def perfect(x, timesteps):
        assert torch.equal(timesteps, t)
        return target

    assert ddpm_loss(perfect, s, x0, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(0, abs=1e-12)


def test_bad_loss_arguments_are_named():
    s = DDPMPosteriorScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="loss_type.*'hybrid'"):
        ddpm_loss(lambda x, t: x, s, torch.zeros(1, 1, 2, 2), loss_type="l1")
    learned = DDPMPosteriorScheduler(num_train_timesteps=10, variance_type="learned_range")
    with pytest.raises(ValueError, match="loss_type='simple'"):
        ddpm_loss(lambda x, t: torch.cat([x, x], 1), learned, torch.zeros(1, 1, 2, 2))


def test_the_bound_trains_the_mean_even_where_clipping_would_saturate():
    # the default scheduler clips x0_hat when sampling and evaluating; a clipped x0_hat has no gradient, so the
    # training losses must use the unclipped prediction (as the DDPM and improved-diffusion code do)
    s = DDPMPosteriorScheduler(num_train_timesteps=1000)
    assert s.config.clip_sample
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    weight = torch.tensor(1.0, requires_grad=True)
    loss = ddpm_loss(lambda x, t: weight * torch.randn_like(x) * 3, s, x0, loss_type="vlb")
    (grad,) = torch.autograd.grad(loss, [weight])
    assert grad.abs() > 0


def test_ncsn_loss_of_the_exact_noise_predictor_is_its_closed_form_minimum():
    # eps-prediction: the optimal eps_hat = E[eps | x] = sigma x / (s^2 + sigma^2) for N(0, s^2) data, and the loss
    # ||eps - eps_hat||^2 has the same expected value s^2 / (s^2 + sigma^2) as the score form: a wrong sign or a
    # missing sigma in the eps -> score conversion moves it far away (a zero model would hide both)
    s = NCSNScheduler(num_train_timesteps=5, sigma_min=0.05, sigma_max=2.0, prediction_type="epsilon")
    sigmas = s.sigmas.numpy()
    minimum = float(np.mean(DATA_STD**2 / (DATA_STD**2 + sigmas**2)))

    def exact_eps(x, t):
        sigma = s.sigmas[t].reshape(-1, 1, 1, 1)
        return sigma * x / (DATA_STD**2 + sigma**2)

    loss = ncsn_score_matching_loss(exact_eps, s, _data(), generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(minimum, rel=0.01)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_hybrid_loss_is_the_simple_loss_plus_lambda_times_the_vlb_loss(prediction_type):
    # the same generator draws the same timesteps and noise, so the identity is exact (float64)
    s = DDPMPosteriorScheduler(num_train_timesteps=10, prediction_type=prediction_type, clip_sample=False)
    x0 = (torch.randint(0, 256, (64, 1, 2, 2), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).double()

    def model(x, t):
        return 0.7 * x + 0.01 * t.reshape(-1, 1, 1, 1)

    def loss(loss_type, **kwargs):
        return ddpm_loss(model, s, x0, loss_type=loss_type, generator=torch.Generator().manual_seed(3), **kwargs)

    expected = loss("simple") + 0.25 * loss("vlb")
    torch.testing.assert_close(loss("hybrid", vlb_weight=0.25), expected, rtol=1e-12, atol=0)
