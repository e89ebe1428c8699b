"""The linear log-SNR schedule and the decoder floor, against the mathematics (50-digit references from mpmath), and
the folders training saves with it, loaded by our scheduler and by diffusers' own `DDPMScheduler`."""

import math

import mpmath
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler
from hf_ddpm_ncsn.likelihood import discretized_gaussian_log_likelihood, vb_terms_bpd
from hf_ddpm_ncsn.schedulers.beta_schedules import (
    LINEAR_LOGSNR,
    LOGSNR_RANGE,
    decoder_floor_bits_per_dim,
    decoder_std,
    linear_logsnr_betas,
    make_betas,
)
from hf_ddpm_ncsn.training import main

mpmath.mp.dps = 50
U64 = 2.0**-53  # float64 unit roundoff
U32 = 2.0**-24  # float32 unit roundoff
CASES = [(2, 1.0, -1.0), (20, 13.0, -10.0), (1000, 13.0, -10.0), (1000, *reversed(LOGSNR_RANGE)), (300, 5.0, 4.0)]


def _beta_error_bound(logsnr_max: float, logsnr_min: float) -> float:
    """Relative error bound of each float64 beta: the grid point lambda_t is off by up to 2 u max|lambda|, which moves
    sigmoid(-lambda_t) by as much relatively (|d log sigmoid(-x) / dx| <= 1); the sigmoid itself, the step d, expm1
    and the product add about 6 u. Doubled as a margin over the count."""
    return 2 * U64 * (6 + 2 * max(abs(logsnr_max), abs(logsnr_min)))


def _exact_logsnr(num_timesteps: int, logsnr_max: float, logsnr_min: float) -> list[mpmath.mpf]:
    return [mpmath.mpf(logsnr_max) + (mpmath.mpf(logsnr_min) - logsnr_max) * t / (num_timesteps - 1)
            for t in range(num_timesteps)]  # fmt: skip


def _sigmoid(x) -> mpmath.mpf:
    return 1 / (1 + mpmath.exp(-mpmath.mpf(x)))


@pytest.mark.parametrize("num_timesteps, logsnr_max, logsnr_min", CASES)
def test_the_betas_are_the_exact_ones_of_a_linear_log_snr_and_lie_in_0_1(num_timesteps, logsnr_max, logsnr_min):
    betas = linear_logsnr_betas(num_timesteps, logsnr_max, logsnr_min)
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    assert np.all(betas > 0) and np.all(betas < 1)
    # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} with alpha_bar = sigmoid(lambda) on the exact linear grid
    alpha_bar = [_sigmoid(x) for x in _exact_logsnr(num_timesteps, logsnr_max, logsnr_min)]
    exact = [1 - alpha_bar[0]] + [1 - alpha_bar[t] / alpha_bar[t - 1] for t in range(1, num_timesteps)]
    relative = [abs(float(mpmath.mpf(float(b)) / e - 1)) for b, e in zip(betas, exact, strict=True)]
    assert max(relative) <= _beta_error_bound(logsnr_max, logsnr_min)


@pytest.mark.parametrize("num_timesteps, logsnr_max, logsnr_min", CASES)
def test_alpha_bar_hits_the_sigmoids_of_the_ends_and_the_log_snr_falls_linearly(num_timesteps, logsnr_max, logsnr_min):
    betas = linear_logsnr_betas(num_timesteps, logsnr_max, logsnr_min)
    alpha_bar = DDPMPosteriorScheduler(num_train_timesteps=num_timesteps, trained_betas=betas).alphas_cumprod.numpy()
    eps = _beta_error_bound(logsnr_max, logsnr_min)
    # a beta off by eps (relative) moves 1 - beta by eps beta / (1 - beta); 1 - beta and each product round once
    bound = np.cumsum(2 * U64 + eps * betas / (1 - betas))
    assert abs(alpha_bar[0] / float(_sigmoid(logsnr_max)) - 1) <= bound[0]
    assert abs(alpha_bar[-1] / float(_sigmoid(logsnr_min)) - 1) <= bound[-1]
    # the log-SNR of the betas as given (computed exactly from them) is monotone and on the linear grid: it is off
    # by the relative errors of 1 - alpha_bar (at most eps) and of alpha_bar (eps * sum beta / (1 - beta))
    exact_alpha_bar, logsnr = mpmath.mpf(1), []
    for beta in betas:
        exact_alpha_bar *= 1 - mpmath.mpf(float(beta))
        logsnr.append(mpmath.log(exact_alpha_bar / (1 - exact_alpha_bar)))
    grid = _exact_logsnr(num_timesteps, logsnr_max, logsnr_min)
    assert all(later < earlier for earlier, later in zip(logsnr, logsnr[1:], strict=False))
    error = [abs(float(x - e)) for x, e in zip(logsnr, grid, strict=True)]
    assert np.all(np.array(error) <= eps + eps * np.cumsum(betas / (1 - betas)))


def test_the_schedule_refuses_ends_it_cannot_honour():
    with pytest.raises(ValueError, match="must be finite and exceed"):
        linear_logsnr_betas(10, -1.0, 1.0)
    with pytest.raises(ValueError, match="must be finite and exceed"):
        linear_logsnr_betas(10, math.inf, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        linear_logsnr_betas(1, 1.0, -1.0)


def test_the_upper_bound_keeps_diffusers_float32_alpha_bar_below_1():
    """At logsnr_max = 16 diffusers' float32 schedule still has alpha_bar_0 < 1 and a chain stays finite; from about
    17.3 on (sigmoid(-lambda) < 2^-25, half an ulp below 1) its alpha_bar_0 rounds to 1: the bound's reason."""
    high = LOGSNR_RANGE[1]
    scheduler = DDPMScheduler(num_train_timesteps=1000, trained_betas=linear_logsnr_betas(1000, high, -10.0))
    assert scheduler.alphas_cumprod[0] < 1
    scheduler.set_timesteps(1000)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(0.5 * x, t, x, generator=generator).prev_sample
    assert torch.isfinite(x).all()
    beyond = DDPMScheduler(num_train_timesteps=1000, trained_betas=linear_logsnr_betas(1000, 17.5, -10.0))
    assert beyond.alphas_cumprod[0] == 1


# --- the decoder floor -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1e-3, 2.27e-4, 0.0074, 0.016, 0.02, 0.1, 1.0, 10.0])
def test_the_decoder_floor_is_the_bin_mass_of_a_centred_gaussian(sigma):
    with mpmath.workdps(120):  # the floor of sigma = 2.27e-4 is 1e-66: the bin mass is 1 - 1e-66
        half_width = mpmath.mpf(1) / 255
        exact = -mpmath.log(mpmath.ncdf(half_width / sigma) - mpmath.ncdf(-half_width / sigma), 2)
    assert decoder_floor_bits_per_dim(sigma) == pytest.approx(float(exact), rel=1e-12, abs=1e-300)
    # the package's own bin likelihood with a perfect mean, at interior pixels (edge bins are open-ended)
    x = torch.tensor([-253 / 255, 0.0, 1 / 255, 101 / 255, 253 / 255], dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, math.log(sigma)))
    assert (-log_p / math.log(2)).tolist() == pytest.approx([float(exact)] * 5, rel=1e-9, abs=1e-12)


def test_the_decoder_floor_of_the_brief_and_its_monotony():
    assert decoder_floor_bits_per_dim(0.02) == pytest.approx(2.6855, abs=1e-4)  # -log2(2 Phi(0.196) - 1)
    sigmas = np.geomspace(1e-4, 10, 50)
    floors = [decoder_floor_bits_per_dim(s) for s in sigmas]
    assert np.all(np.diff(floors) > 0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="sigma must be"):
            decoder_floor_bits_per_dim(bad)


@pytest.mark.parametrize(
    "betas",
    [make_betas(1000, 1e-4, 0.02, "linear"), make_betas(250, 4e-4, 0.08, "linear"), linear_logsnr_betas(50, 9, -10)],
    ids=["linear-1000", "main-job-250", "linear-logsnr-50"],
)
def test_a_perfect_model_reaches_the_floor_of_its_decoder_std_exactly(betas):
    """decoder_std is the standard deviation the scheduler's decoder uses at t = 0, and an oracle eps-model's L_0 at
    interior pixels is the floor of that std: the floor is the real one, not a formula beside the ELBO."""
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=len(betas), trained_betas=betas, clip_sample=False)
    sigma = decoder_std(betas)
    alpha_bar = [mpmath.mpf(1) - mpmath.mpf(float(betas[0]))]
    alpha_bar.append(alpha_bar[0] * (1 - mpmath.mpf(float(betas[1]))))
    exact_tilde_beta_1 = mpmath.mpf(float(betas[1])) * (1 - alpha_bar[0]) / (1 - alpha_bar[1])
    assert sigma == pytest.approx(float(mpmath.sqrt(exact_tilde_beta_1)), rel=1e-12)
    assert math.exp(0.5 * scheduler.posterior_log_variance_clipped[0].item()) == pytest.approx(sigma, rel=1e-14)

    generator = torch.Generator().manual_seed(0)
    x0 = (torch.randint(1, 255, (4, 1, 4, 4), generator=generator).double() / 127.5 - 1).clamp(-253 / 255, 253 / 255)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    x_t = scheduler.add_noise(x0, noise, t)
    terms = vb_terms_bpd(scheduler, noise, x0, x_t, t, clip_denoised=False)  # the true noise: x0_hat = x0
    assert terms.tolist() == pytest.approx([decoder_floor_bits_per_dim(sigma)] * 4, rel=1e-6, abs=1e-12)


# --- what training saves: loadable by our scheduler and by diffusers ----------------------------------------------


def test_a_trained_log_snr_folder_loads_in_diffusers_with_the_same_alphas_cumprod(tmp_path):
    out = tmp_path / "logsnr"
    argv = ["--output_dir", str(out), "--max_train_steps", "1", "--resolution", "8", "--block_out_channels", "8",
            "16", "--train_batch_size", "16", "--logger", "none", "--num_preview_images", "2", "--ddpm_num_steps",
            "50", "--ddpm_beta_schedule", LINEAR_LOGSNR, "--logsnr_max", "14", "--logsnr_min", "-9"]  # fmt: skip
    assert main("ddpm", argv) == 0
    betas = linear_logsnr_betas(50, 14.0, -9.0)
    expected = torch.from_numpy(np.cumprod(1.0 - betas))

    ours = DDPMPosteriorScheduler.from_pretrained(out, subfolder="scheduler")
    assert torch.equal(ours.alphas_cumprod, expected)  # the JSON round trip of float64 betas is exact
    assert ours.config.beta_schedule == LINEAR_LOGSNR and ours.config.beta_start == betas[0]
    assert ours.config.beta_end == betas[-1]
    assert torch.equal(DDPMPosteriorPipeline.from_pretrained(out).scheduler.alphas_cumprod, expected)

    # diffusers: float32 betas (u), float32 1 - beta (u, and u beta / alpha from the rounded beta), a float32
    # cumprod (u per product): relative error at most u * sum(2 + beta / (1 - beta)) up to t
    bound = 1.01 * U32 * np.cumsum(2 + betas / (1 - betas))
    for scheduler_class in (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        theirs = scheduler_class.from_pretrained(out, subfolder="scheduler")
        relative = (theirs.alphas_cumprod.double() / expected - 1).abs().numpy()
        assert np.all(relative <= bound), (scheduler_class.__name__, (relative / bound).max())
    card = (out / "README.md").read_text()
    assert LINEAR_LOGSNR in card and "logsnr_max" in card
