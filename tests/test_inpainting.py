"""Inpainting by replacement (`hf_ddpm_ncsn.pipelines.inpainting`) in both pipelines.

The mathematical checks use 2-pixel Gaussian data x ~ N(0, Sigma), Sigma = [[1, rho], [rho, 1]], with the exact
score of the noised data, pixel 0 known (= K) and pixel 1 regenerated. Every update of both samplers is then affine
in the state plus Gaussian noise, so the law of the inpainted pixel is Gaussian with moments that a short float64
recursion gives exactly (`_exact_ncsn_moments`, `_exact_ddpm_moments`, written from the update formulas of the
papers, not from the library's code). The samplers' Monte Carlo moments must match them within a few standard
errors. Beside them, the true conditional N(rho K, 1 - rho^2) measures what the replacement method costs: for
rho = 0 (independent pixels) the method is exact (the known pixel never enters the unknown's update), for
rho = 0.8 annealed Langevin is close and DDPM replacement is far (it conditions on noised copies of the known pixel
whose noise is independent of the unknown's history), RePaint's resampling closing part of the gap.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from support.tiny_models import tiny_ddpm, tiny_ncsn

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.evaluation.feature_classifier import FeatureClassifier
from hf_ddpm_ncsn.evaluation.inpainting import (
    bottom_half_mask,
    format_inpainting_table,
    mean_fill,
    nearest_neighbour_fill,
    score_inpainting,
)
from hf_ddpm_ncsn.pipelines.inpainting import (
    KnownPixels,
    ddpm_inpainting_loop,
    forward_jump,
    ncsn_inpainting_loop,
    reconstruction_guided,
    resampling_schedule,
)

K = 1.5  # the known pixel's value
N = 20_000  # Monte Carlo samples of the Gaussian checks


def _seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def _count_calls(pipe) -> list[int]:
    calls = [0]
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


# ----------------------------------------------------------------------------------------------------------------
# Known pixels come back exactly, in every input form
def _bottom_half(value=1.0) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=np.float32)
    mask[4:] = value
    return mask


def _grey_uint8(batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(batch, 8, 8, 1), dtype=np.uint8)


def _image_forms(batch: int):
    """(image in some accepted form, the expected known pixels as float (B, H, W, 1) in [0, 1])."""
    pixels = _grey_uint8(batch)
    floats = (pixels / 255).astype(np.float32)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return {
        "pil": (PIL.Image.fromarray(pixels[0, :, :, 0], mode="L"), np.broadcast_to(floats[:1], floats.shape)),
        "pil list": ([PIL.Image.fromarray(p[:, :, 0], mode="L") for p in pixels], floats),
        "numpy uint8 BHWC": (pixels, floats),
        "numpy float HW": (floats[0, :, :, 0], np.broadcast_to(floats[:1], floats.shape)),
        "torch float BCHW": (tensor, (tensor / 2 + 0.5).permute(0, 2, 3, 1).numpy()),
        "torch uint8 CHW": (torch.from_numpy(pixels[0]).permute(2, 0, 1), np.broadcast_to(floats[:1], floats.shape)),
    }


MASK_FORMS = {
    "pil L": lambda b: PIL.Image.fromarray((_bottom_half() * 255).astype(np.uint8), mode="L"),
    "pil 1": lambda b: PIL.Image.fromarray(_bottom_half() > 0).convert("1"),
    "pil list": lambda b: [PIL.Image.fromarray((_bottom_half() * 255).astype(np.uint8), mode="L")] * b,
    "numpy bool HW": lambda b: _bottom_half() > 0,
    "torch float B1HW": lambda b: torch.from_numpy(_bottom_half()).expand(b, 1, 8, 8),
}


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
@pytest.mark.parametrize("image_form", list(_image_forms(2)))
@pytest.mark.parametrize("mask_form", list(MASK_FORMS))
def test_known_pixels_come_back_exactly(make, image_form, mask_form):
    """Fails if the mask is inverted (white kept), if the known pixels are left noised at the end, or if an input
    form is misread (range, channel order, one-for-the-batch broadcasting)."""
    pipe = make()
    image, expected = _image_forms(2)[image_form]
    mask = MASK_FORMS[mask_form](2)
    kwargs = {"batch_size": 2, "image": image, "mask_image": mask, "num_inference_steps": 3}
    out = pipe(generator=_seed(), output_type="np", **kwargs).images
    np.testing.assert_array_equal(out[:, :4], expected[:, :4])  # black rows: kept, bit for bit
    assert (np.abs(out[:, 4:] - expected[:, 4:]) > 1e-3).mean() > 0.5  # white rows: regenerated
    pil = pipe(generator=_seed(), output_type="pil", **kwargs).images
    np.testing.assert_array_equal(np.asarray(pil[1])[:4], np.round(expected[1, :4, :, 0] * 255).astype(np.uint8))
    pt = pipe(generator=_seed(), output_type="pt", **kwargs).images
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), out)


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_rgb_pil_and_one_image_per_sample(make):
    pipe = make(channels=3)
    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    images = [PIL.Image.fromarray(p, mode="RGB") for p in pixels]
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, :, :, :4] = 1  # a different region per sample
    masks[1, :, 2:6, 2:6] = 1
    masks[2] = 1
    out = pipe(batch_size=3, image=images, mask_image=masks, generator=_seed(), output_type="pil").images
    for got, want, mask in zip(out, pixels, masks[:, 0].numpy().astype(bool), strict=True):
        np.testing.assert_array_equal(np.asarray(got)[~mask], want[~mask])
        assert np.asarray(got)[mask].size == 0 or (np.asarray(got)[mask] != want[mask]).any()


# ----------------------------------------------------------------------------------------------------------------
# What the network sees on the known pixels
def _probe_known(batch: int = 4000):
    image = torch.zeros(batch, 1, 1, 2)
    image[..., 0] = K
    regenerate = torch.zeros(batch, 1, 1, 2, dtype=torch.bool)
    regenerate[..., 1] = True
    return KnownPixels(image, image / 2 + 0.5, regenerate)


def test_ncsn_known_pixels_are_x0_plus_sigma_t_z_once_per_level():
    """Fails if the known pixels are noised at the wrong level (off by one, or sigma_max throughout), redrawn at every
    Langevin step instead of once per level, or not replaced at all."""
    scheduler = NCSNScheduler(num_train_timesteps=5, sigma_min=0.1, sigma_max=2.0, num_langevin_steps=3)
    scheduler.set_timesteps()
    seen = []

    def model(x, t):
        seen.append((int(t), x[..., 0].flatten().clone()))
        return torch.zeros_like(x)

    known = _probe_known()
    ncsn_inpainting_loop(model, scheduler, torch.randn(4000, 1, 1, 2, generator=_seed()), known, _seed(1))
    assert [t for t, _ in seen] == scheduler.timesteps.tolist()  # the Tweedie entry included
    for level in range(5):
        values = [v for t, v in seen if t == level]
        for v in values[1:]:
            torch.testing.assert_close(v, values[0], rtol=0, atol=0)  # one draw per level
        sigma = float(scheduler.sigmas[level])
        assert abs(values[0].mean().item() - K) < 4 * sigma / math.sqrt(4000)
        assert values[0].std().item() == pytest.approx(sigma, rel=0.05)  # SE of a std: 1.1%
    draws = [v for t, v in seen if t in (4, 3)]
    assert not torch.equal(draws[0], draws[-1])  # a fresh draw at the next level


def test_ddpm_known_pixels_are_a_fresh_draw_of_q_xt_given_x0():
    """Fails if the known pixels are drawn at the previous timestep's noise level, reused across steps, or kept
    clean."""
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(5)
    seen = []

    def model(x, t):
        seen.append((int(t), x[..., 0].flatten().clone()))
        return torch.zeros_like(x)

    ddpm_inpainting_loop(model, scheduler, torch.randn(4000, 1, 1, 2, generator=_seed()), _probe_known(), _seed(1))
    assert [t for t, _ in seen] == scheduler.timesteps.tolist()
    for t, values in seen:
        alpha_bar = float(scheduler.alphas_cumprod[t])
        std = math.sqrt(1 - alpha_bar)
        assert abs(values.mean().item() - math.sqrt(alpha_bar) * K) < 4 * std / math.sqrt(4000)
        assert values.std().item() == pytest.approx(std, rel=0.05)
    # the respaced alphas differ by far more than 5% between neighbours, so an off-by-one would fail above
    stds = [math.sqrt(1 - float(scheduler.alphas_cumprod[t])) for t, _ in seen]
    assert min(a / b for a, b in zip(stds, stds[1:], strict=False)) > 1.1


# ----------------------------------------------------------------------------------------------------------------
# Gaussian data: the sampled law against the exact law of the method, and against the true conditional
def _sigma(rho: float) -> np.ndarray:
    return np.array([[1.0, rho], [rho, 1.0]])


def _gaussian_known(batch: int = N) -> KnownPixels:
    return _probe_known(batch)


def _affine_moments(steps) -> tuple[float, float]:
    """Mean and variance of u after the updates u <- a y + b u + c K + s z, where y = alpha K + sigma zeta is the
    known pixel the update sees, zeta ~ N(0, 1) either persisting (fresh=False) or drawn anew (fresh=True), z ~
    N(0, 1) fresh each time, c K a constant pull (reconstruction guidance); u starts as N(0, v0). `steps` yields
    (a, b, c, s, alpha, sigma, fresh), the first being v0."""
    steps = iter(steps)
    mean, var, cov = 0.0, next(steps), 0.0  # cov: Cov(u, zeta)
    for a, b, c, s, alpha, sigma, fresh in steps:
        if fresh:
            cov = 0.0
        var = a * a * sigma * sigma + b * b * var + 2 * a * sigma * b * cov + s * s
        cov = a * sigma + b * cov
        mean = a * alpha * K + b * mean + c * K
    return mean, var


def _guided_score_matrix(precision: np.ndarray, alpha: float, sigma: float, guidance: float):
    """The exact score -P x plus w J^T e_0 (K - e_0^T x0_hat) / r^2 (reconstruction guidance, Ho et al. 2022, with
    PiGDM's r^2 = sigma^2 / (alpha^2 + sigma^2)), Tweedie's x0_hat = J x, J = (I - sigma^2 P) / alpha: returns the
    matrix M and vector m of the guided score M x + m K."""
    jacobian = (np.eye(2) - sigma**2 * precision) / alpha
    weight = guidance * (alpha**2 + sigma**2) / sigma**2
    matrix = -precision - weight * np.outer(jacobian[:, 0], jacobian[0, :])
    return matrix, weight * jacobian[:, 0]


def _exact_ncsn_moments(rho, num_levels, sigma_min, sigma_max, num_langevin_steps, step_size, guidance=0.0):
    """Annealed Langevin u <- u + (eta/2) s_u + sqrt(eta) z, eta = step_size sigma^2 / sigma_min^2, s = -P x with
    P = (Sigma + sigma^2 I)^-1 (guided: `_guided_score_matrix`), then the Tweedie denoise x + sigma_min^2 s;
    y = K + sigma_t zeta once per level."""
    sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), num_levels))

    def score(sigma):
        return _guided_score_matrix(np.linalg.inv(_sigma(rho) + sigma**2 * np.eye(2)), 1.0, sigma, guidance)

    def steps():
        yield sigma_max**2
        for level in range(num_levels - 1, -1, -1):
            sigma = sigmas[level]
            (m, v), eta = score(sigma), step_size * sigma**2 / sigma_min**2
            for i in range(num_langevin_steps):
                yield (
                    0.5 * eta * m[1, 0],
                    1 + 0.5 * eta * m[1, 1],
                    0.5 * eta * v[1],
                    math.sqrt(eta),
                    1.0,
                    sigma,
                    i == 0,
                )
        m, v = score(sigmas[0])
        c = sigmas[0] ** 2
        yield c * m[1, 0], 1 + c * m[1, 1], c * v[1], 0.0, 1.0, sigmas[0], False

    return _affine_moments(steps())


def _exact_ddpm_moments(rho, alpha_bars, walk, guidance=0.0):
    """DDPM ancestral steps (Ho et al. 2020, fixed_small) with the exact eps = sqrt(1 - abar) P x,
    P = (abar Sigma + (1 - abar) I)^-1 (guided: eps = -sqrt(1 - abar) times `_guided_score_matrix`'s score), along a
    respaced chain with alpha_bar `alpha_bars` (descending timesteps), y = sqrt(abar) K + sqrt(1 - abar) zeta fresh
    at each step, and RePaint's forward jumps along `walk`."""

    def steps():
        yield 1.0
        for action, p in walk:
            abar = alpha_bars[p]
            if action == "renoise":  # u <- sqrt(r) u + sqrt(1 - r) z; y does not enter
                ratio = abar / alpha_bars[p + 1]
                yield 0.0, math.sqrt(ratio), 0.0, math.sqrt(1 - ratio), 0.0, 0.0, True
                continue
            prev = alpha_bars[p + 1] if p + 1 < len(alpha_bars) else 1.0
            beta = 1 - abar / prev
            c1, c2 = beta * math.sqrt(prev) / (1 - abar), (1 - prev) * math.sqrt(1 - beta) / (1 - abar)
            alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
            precision = np.linalg.inv(abar * _sigma(rho) + (1 - abar) * np.eye(2))
            m, v = _guided_score_matrix(precision, alpha, sigma, guidance)
            # the posterior mean c1 x0_hat + c2 x with x0_hat = (x + sigma^2 s) / alpha
            g = c1 * (np.eye(2) + sigma**2 * m) / alpha + c2 * np.eye(2)
            std = math.sqrt(beta * (1 - prev) / (1 - abar)) if p + 1 < len(alpha_bars) else 0.0
            yield g[1, 0], g[1, 1], c1 * sigma**2 * v[1] / alpha, std, alpha, sigma, True

    return _affine_moments(steps())


def _gaussian_score(rho: float, variance_of, x: torch.Tensor, signal: float = 1.0) -> torch.Tensor:
    cov = signal * torch.tensor(_sigma(rho)) + variance_of * torch.eye(2, dtype=torch.float64)
    return -(x.reshape(len(x), 2).double() @ torch.linalg.inv(cov)).reshape(x.shape)


NCSN_SETTINGS = {"num_levels": 10, "sigma_min": 0.05, "sigma_max": 3.0, "num_langevin_steps": 60, "step_size": 2e-3}


def _sample_ncsn(rho: float, guidance: float = 0.0) -> torch.Tensor:
    s = NCSN_SETTINGS
    scheduler = NCSNScheduler(
        num_train_timesteps=s["num_levels"],
        sigma_min=s["sigma_min"],
        sigma_max=s["sigma_max"],
        num_langevin_steps=s["num_langevin_steps"],
        step_size=s["step_size"],
        prediction_type="score",
    )
    scheduler.set_timesteps()
    generator = _seed()

    def score(x, t):
        return _gaussian_score(rho, float(scheduler.sigmas[int(t)]) ** 2, x).float()

    x = s["sigma_max"] * torch.randn(N, 1, 1, 2, generator=generator)
    known = _gaussian_known()
    model = reconstruction_guided(score, scheduler, known, guidance) if guidance else score
    return ncsn_inpainting_loop(model, scheduler, x, known, generator)[..., 1].flatten().double()


def _sample_ddpm(rho: float, num_steps: int, jump_length: int = 1, jump_n_sample: int = 1, guidance: float = 0.0):
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=1000, clip_sample=False)
    scheduler.set_timesteps(num_steps)
    generator = _seed()

    def eps(x, t):
        abar = float(scheduler.alphas_cumprod[int(t)])
        return (-math.sqrt(1 - abar) * _gaussian_score(rho, 1 - abar, x, signal=abar)).float()

    x = torch.randn(N, 1, 1, 2, generator=generator)
    known = _gaussian_known()
    model = reconstruction_guided(eps, scheduler, known, guidance) if guidance else eps
    u = ddpm_inpainting_loop(model, scheduler, x, known, generator, jump_length, jump_n_sample)[..., 1].flatten()
    alpha_bars = [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]
    walk = resampling_schedule(num_steps, jump_length, jump_n_sample)
    return u.double(), _exact_ddpm_moments(rho, alpha_bars, walk, guidance)


def _assert_moments(u: torch.Tensor, mean: float, var: float) -> None:
    """Sample mean and variance within 4.5 standard errors of the Gaussian's (SE of the variance: var sqrt(2 / N))."""
    assert abs(u.mean().item() - mean) < 4.5 * math.sqrt(var / N), (u.mean().item(), mean)
    assert abs(u.var().item() - var) < 4.5 * var * math.sqrt(2 / N), (u.var().item(), var)


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_ncsn_inpainting_follows_the_exact_law_of_the_method(rho):
    """Fails if the known pixel is noised at the wrong level, redrawn per step, or the mask is inverted; the
    comparison with the true conditional says what the method guarantees."""
    mean, var = _exact_ncsn_moments(rho, **NCSN_SETTINGS)
    _assert_moments(_sample_ncsn(rho), mean, var)
    # the method's bias at these settings: exact for independent pixels up to the sampler's own error; small here
    assert abs(mean - rho * K) < 0.03 and abs(var - (1 - rho**2)) < 0.03, (mean, var)


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_ddpm_replacement_follows_the_exact_law_of_the_method(rho):
    u, (mean, var) = _sample_ddpm(rho, num_steps=50)
    _assert_moments(u, mean, var)
    if rho == 0.0:  # independent pixels: the unknown's law is the unconditional chain's, whatever K
        assert abs(mean) < 1e-12
    else:  # replacement pulls the unknown pixel well short of the conditional mean rho K = 1.2
        assert 0.6 < mean < 0.9 and var > 1 - rho**2, (mean, var)


def test_repaint_follows_the_exact_law_and_narrows_the_gap():
    u, (mean, var) = _sample_ddpm(0.8, num_steps=50, jump_length=5, jump_n_sample=4)
    _assert_moments(u, mean, var)
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    alpha_bars = [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]
    plain_mean, _ = _exact_ddpm_moments(0.8, alpha_bars, resampling_schedule(50))
    assert abs(mean - 0.8 * K) < abs(plain_mean - 0.8 * K) / 2, (mean, plain_mean)


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_reconstruction_guided_ddpm_follows_its_exact_law_and_closes_the_gap(rho):
    """The guided chain against the exact law of the method: fails if the guidance gradient has the wrong sign,
    weight (r_t^2) or Jacobian, is taken on the regenerated pixels instead of the known ones, or is converted back
    to eps wrongly. At rho = 0.8 w = 1 brings the conditional mean from replacement's 0.72 to within 0.06 of the
    true 1.2; at rho = 0 the known pixel carries no information and the guided chain is the plain one."""
    u, (mean, var) = _sample_ddpm(rho, num_steps=50, guidance=1.0)
    _assert_moments(u, mean, var)
    # the comparisons below are between exact laws (the recursions): they say what the method does; the sampled
    # moments above are what tests the code
    plain_mean, plain_var = _sample_ddpm(rho, num_steps=50)[1]
    if rho == 0.0:  # exactly the unguided chain's law
        assert abs(mean - plain_mean) < 1e-12 and abs(var - plain_var) < 1e-12, (mean, var, plain_var)
    else:
        assert abs(mean - rho * K) < 0.06 < 0.4 < abs(plain_mean - rho * K), (mean, plain_mean)
        assert abs(var - (1 - rho**2)) < 0.06, var


def test_reconstruction_guided_ncsn_follows_its_exact_law():
    mean, var = _exact_ncsn_moments(0.8, **NCSN_SETTINGS, guidance=1.0)
    _assert_moments(_sample_ncsn(0.8, guidance=1.0), mean, var)
    plain_mean, _ = _exact_ncsn_moments(0.8, **NCSN_SETTINGS)
    assert abs(mean - plain_mean) > 0.01  # the guidance acts (annealed Langevin was already close to 1.2)
    assert abs(mean - 0.8 * K) < 0.06 and abs(var - 0.36) < 0.06, (mean, var)


def _guidance_cases():
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        for variance_type in ("fixed_small", "learned_range"):
            yield pytest.param("vp", prediction_type, variance_type, id=f"vp-{prediction_type}-{variance_type}")
    for prediction_type in ("epsilon", "score"):  # NCSNScheduler's; alpha^2 + sigma^2 != 1 here
        yield pytest.param("ve", prediction_type, None, id=f"ve-{prediction_type}")


@pytest.mark.parametrize("family, prediction_type, variance_type", list(_guidance_cases()))
def test_reconstruction_guidance_is_the_same_score_under_every_parametrisation(family, prediction_type, variance_type):
    """A model of the same Gaussian written as eps, x_0, v or score (with or without a variance half; VP, VE) gets the
    guided score of the closed form: fails if `NoiseProcess.from_score` is not the inverse of `to_score` for a
    parametrisation, if r_t^2 ignores alpha (VE: r^2 = sigma^2 / (1 + sigma^2)), or if the variance channels are
    steered."""
    if family == "vp":
        scheduler = DDPMPosteriorScheduler(
            num_train_timesteps=100, prediction_type=prediction_type, variance_type=variance_type
        )
        t = torch.tensor(40)
    else:
        scheduler = NCSNScheduler(
            num_train_timesteps=10, sigma_min=0.05, sigma_max=3.0, prediction_type=prediction_type
        )
        t = torch.tensor(6)
    process, known = scheduler.noise_process, _probe_known(64)
    alpha, sigma = process.marginal(int(t))
    x = torch.randn(64, 1, 1, 2, generator=_seed(3), dtype=torch.float64)
    variance_half = torch.rand(64, 1, 1, 2, generator=_seed(4), dtype=torch.float64)

    def model(sample, timestep):
        score = _gaussian_score(0.8, sigma**2, sample, signal=alpha**2)
        output = process.from_score(score, prediction_type, sample, timestep)
        return output if variance_type in (None, "fixed_small") else torch.cat([output, variance_half], dim=1)

    known64 = KnownPixels(known.image.double(), known.image_01, known.regenerate)
    guided = reconstruction_guided(model, scheduler, known64, 1.0)(x, t)
    score = process.to_score(guided[:, :1], prediction_type, x, t)
    precision = np.linalg.inv(alpha**2 * _sigma(0.8) + sigma**2 * np.eye(2))
    m, v = _guided_score_matrix(precision, alpha, sigma, 1.0)
    expected = x.reshape(64, 2) @ torch.from_numpy(m).T + K * torch.from_numpy(v)
    torch.testing.assert_close(score.reshape(64, 2), expected, rtol=1e-10, atol=1e-10)
    if variance_type == "learned_range":
        torch.testing.assert_close(guided[:, 1:], variance_half, rtol=0, atol=0)


def test_forward_jump_is_q_of_xt_given_xs():
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=100)
    x = torch.full((N,), 0.7)
    out = forward_jump(scheduler, x, 10, 40, _seed())
    ratio = float(scheduler.alphas_cumprod[40] / scheduler.alphas_cumprod[10])
    _assert_moments(out.double(), math.sqrt(ratio) * 0.7, 1 - ratio)


# ----------------------------------------------------------------------------------------------------------------
# RePaint's schedule through the pipeline
def _fed_timesteps(pipe) -> list[int]:
    fed: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: fed.append(int(args[1])))
    return fed


def test_repaint_visits_the_expected_timesteps():
    pipe = tiny_ddpm(num_train_timesteps=20)
    fed = _fed_timesteps(pipe)
    pipe(
        image=torch.zeros(1, 1, 8, 8), mask_image=_bottom_half(), num_inference_steps=5, jump_length=2, jump_n_sample=2
    )
    ts = pipe.scheduler.timesteps.tolist()
    # by hand: down 2, back to the top, down 4, back 2, down to the end
    assert fed == [ts[i] for i in (0, 1, 0, 1, 2, 3, 2, 3, 4)]


@pytest.mark.parametrize("num_steps, jump_length, jump_n_sample", [(20, 3, 3), (20, 10, 10), (7, 7, 4), (12, 1, 2)])
def test_repaint_network_calls_in_closed_form(num_steps, jump_length, jump_n_sample):
    pipe = tiny_ddpm(num_train_timesteps=20)
    calls = _count_calls(pipe)
    bars = []
    pipe.progress_bar = lambda iterable=None, total=None: bars.append(list(iterable)) or bars[-1]
    pipe(
        image=torch.zeros(1, 1, 8, 8),
        mask_image=_bottom_half(),
        num_inference_steps=num_steps,
        jump_length=jump_length,
        jump_n_sample=jump_n_sample,
    )
    expected = num_steps + (math.ceil(num_steps / jump_length) - 1) * (jump_n_sample - 1) * jump_length
    assert calls[0] == expected
    (moves,) = bars  # one progress bar over the whole walk: the steps and the jumps back
    assert len(moves) == 2 * expected - num_steps


def test_jump_n_sample_1_is_plain_replacement_bit_for_bit():
    """The pipeline against plain replacement written out: fails if the known pixels are replaced after instead of
    before the step, if a jump happens without resampling, or if the draws come in another order."""
    pipe = tiny_ddpm(num_train_timesteps=20)
    image = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.from_numpy(_bottom_half()).bool()
    a = pipe(batch_size=2, image=image, mask_image=mask, generator=_seed(), output_type="pt", jump_length=3).images
    b = pipe(batch_size=2, image=image, mask_image=mask, generator=_seed(), output_type="pt", jump_length=7).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    scheduler, g = pipe.scheduler, _seed()
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            noised = scheduler.add_noise(image, torch.randn(2, 1, 8, 8, generator=g), t)
            x = torch.where(mask, x, noised)
            x = scheduler.step(pipe.unet(x, t).sample, t, x, generator=g).prev_sample
    expected = torch.where(mask, (x / 2 + 0.5).clamp(0, 1), image / 2 + 0.5)
    torch.testing.assert_close(a, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs are named before any network call; determinism
GOOD_IMAGE = torch.zeros(2, 1, 8, 8)
GOOD_MASK = torch.from_numpy(_bottom_half())
BAD_INPUTS = {
    "image without mask": ({"mask_image": None}, "image was given without mask_image"),
    "mask without image": ({"image": None}, "mask_image was given without image"),
    "mask wrong size": ({"mask_image": torch.zeros(4, 4)}, "mask_image is 4x4"),
    "image wrong size": ({"image": torch.zeros(2, 1, 16, 16)}, "image is 16x16"),
    "mask not binary": ({"mask_image": GOOD_MASK * 0.5}, "mask_image must be binary"),
    "mask grey levels": ({"mask_image": PIL.Image.new("L", (8, 8), 128)}, "mask_image must be binary"),
    "mask three channels": ({"mask_image": torch.zeros(2, 3, 8, 8)}, "mask_image must be .*one channel"),
    "mask RGB image": ({"mask_image": PIL.Image.new("RGB", (8, 8))}, "mask_image must be a single-channel"),
    "image wrong channels": ({"image": torch.zeros(2, 3, 8, 8)}, "image has 3 channels but the UNet takes 1"),
    "image out of range": ({"image": GOOD_IMAGE + 2}, r"image as a float tensor image must .* \[-1, 1\]"),
    "float numpy above 1": ({"image": np.full((8, 8), 2.0)}, r"image as a float NumPy image .* \[0, 1\]"),
    "image batch": ({"image": torch.zeros(3, 1, 8, 8)}, "image holds 3 images but batch_size=2"),
    "mask batch": ({"mask_image": torch.zeros(3, 1, 8, 8)}, "mask_image holds 3 images but batch_size=2"),
    "image of another type": ({"image": "digit.png"}, "image must be a PIL image"),
    "another sampler": ({"sampler": "ode"}, r"image= \(inpainting\) works with sampler='(langevin|ancestral)'"),
    "reconstruction guidance negative": (
        {"reconstruction_guidance_scale": -1.0},
        r"reconstruction_guidance_scale must be a finite number >= 0 \(0 = off\), got -1.0",
    ),
    "reconstruction guidance nan": ({"reconstruction_guidance_scale": math.nan}, "reconstruction_guidance_scale must"),
    "reconstruction guidance bool": ({"reconstruction_guidance_scale": True}, "reconstruction_guidance_scale must"),
    "reconstruction guidance without image": (
        {"image": None, "mask_image": None, "reconstruction_guidance_scale": 2.0},
        "reconstruction_guidance_scale=2.0 steers inpainting: it needs image= and mask_image=",
    ),
    "PIL images of two sizes": (
        {"image": [PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (4, 4))]},
        "image is a list of PIL images of different sizes",
    ),
}
DDPM_BAD_INPUTS = {
    "jump_length 0": ({"jump_length": 0}, "jump_length must be an integer >= 1"),
    "jump_n_sample 0": ({"jump_n_sample": 0}, "jump_n_sample must be an integer >= 1"),
    "jump_length float": ({"jump_length": 2.5}, "jump_length must be an integer >= 1"),
}


def _bad_cases():
    for make in (tiny_ncsn, tiny_ddpm):
        for name, case in BAD_INPUTS.items():
            yield pytest.param(make, *case, id=f"{make.__name__}-{name}")
    for name, case in DDPM_BAD_INPUTS.items():
        yield pytest.param(tiny_ddpm, *case, id=f"tiny_ddpm-{name}")


@pytest.mark.parametrize("make, overrides, message", list(_bad_cases()))
def test_bad_inputs_are_named_before_any_network_call(make, overrides, message):
    pipe = make()
    calls = _count_calls(pipe)
    kwargs = {"batch_size": 2, "image": GOOD_IMAGE, "mask_image": GOOD_MASK}
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(**kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)
    assert calls[0] == 0


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_same_generator_same_inpainting(make):
    pipe = make()
    kwargs = {"batch_size": 2, "image": GOOD_IMAGE, "mask_image": GOOD_MASK, "output_type": "np"}
    a = pipe(generator=_seed(5), **kwargs).images
    b = pipe(generator=_seed(5), **kwargs).images
    c = pipe(generator=_seed(6), **kwargs).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c)[:, 4:].max() > 1e-3
    per_image = pipe(generator=[_seed(5), _seed(7)], **kwargs).images  # a list of generators, one per image
    assert per_image.shape == a.shape


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_reconstruction_guidance_in_the_pipelines(make):
    """Off (0) is plain replacement bit for bit; on, the known pixels still come back exactly, the regenerated ones
    change, a seed gives the same images, and the network is called once per step as without it (the gradient is
    a backward pass, not another call)."""
    pipe = make()
    calls = _count_calls(pipe)
    kwargs = {"batch_size": 2, "image": GOOD_IMAGE + 0.5, "mask_image": GOOD_MASK, "output_type": "np"}
    plain = pipe(generator=_seed(), **kwargs).images
    plain_calls = calls[0]
    off = pipe(generator=_seed(), reconstruction_guidance_scale=0.0, **kwargs).images
    np.testing.assert_array_equal(plain, off)
    calls[0] = 0
    guided = pipe(generator=_seed(), reconstruction_guidance_scale=2.0, **kwargs).images
    assert calls[0] == plain_calls
    np.testing.assert_array_equal(guided[:, :4], plain[:, :4])  # the known rows: the image (0.75), exactly
    assert np.abs(guided[:, 4:] - plain[:, 4:]).max() > 1e-4
    np.testing.assert_array_equal(guided, pipe(generator=_seed(), reconstruction_guidance_scale=2.0, **kwargs).images)
    if make is tiny_ddpm:  # with RePaint's resampling too
        repaint = pipe(generator=_seed(), reconstruction_guidance_scale=2.0, jump_length=2, jump_n_sample=2, **kwargs)
        np.testing.assert_array_equal(repaint.images[:, :4], plain[:, :4])
        assert np.abs(repaint.images[:, 4:] - guided[:, 4:]).max() > 1e-4


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_callback_sees_every_network_step(make):
    pipe = make()
    steps = []

    def callback(p, i, t, tensors):
        steps.append(i)
        return {"sample": tensors["sample"]}

    pipe(image=torch.zeros(1, 1, 8, 8), mask_image=GOOD_MASK, num_inference_steps=2, callback_on_step_end=callback)
    assert steps == list(range(len(pipe.scheduler.timesteps)))


# ----------------------------------------------------------------------------------------------------------------
# The evaluation's pieces (scripts/inpainting_eval.py)
def test_inpainting_evaluation_pieces():
    images = torch.from_numpy(_grey_uint8(3)).permute(0, 3, 1, 2).contiguous()
    train = torch.stack([torch.full((1, 8, 8), 10, dtype=torch.uint8), torch.full((1, 8, 8), 21, dtype=torch.uint8)])
    mask = bottom_half_mask(8, 8)
    assert mask[0, 0, :4].sum() == 0 and mask[0, 0, 4:].min() == 1
    filled = mean_fill(images, mask, train)
    assert torch.equal(filled[:, :, :4], images[:, :, :4]) and (filled[:, :, 4:] == 16).all()  # round(15.5) = 16
    train = torch.cat([images.flip(0), images[:1] // 2])  # image i's top half is train image 2 - i's
    train[:, :, 4:] = torch.arange(4, dtype=torch.uint8).reshape(4, 1, 1, 1)  # a bottom that names its row
    nearest = nearest_neighbour_fill(images, mask, train)
    assert torch.equal(nearest[:, :, :4], images[:, :, :4]) and nearest[:, 0, 4:, 0].tolist() == [
        [2] * 4,
        [1] * 4,
        [0] * 4,
    ]

    pipe = tiny_ddpm()
    torch.manual_seed(0)
    row = score_inpainting("ddpm", pipe, FeatureClassifier(1, 8, 10), images, torch.tensor([0, 1, 2]), mask)
    assert row.network_evaluations == 20 and 0 <= row.accuracy <= 1 and row.seconds > 0
    assert "| ddpm |" in format_inpainting_table([row])
