"""The probability-flow ODE likelihood against closed forms: Gaussian data (exact score, exact density, any prior
mismatch), mixtures of Gaussians (analytic score; density and bin probabilities by quadrature), Hutchinson's
estimate against the exact trace, batching, and both pipelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from support.tiny_models import tiny_ddpm, tiny_ncsn, tiny_unet

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.likelihood import ode_bpd

LOG2 = math.log(2.0)


def _ve(prediction_type: str = "score", sigma_max: float = 3.0, levels: int = 10) -> NCSNScheduler:
    return NCSNScheduler(
        num_train_timesteps=levels, sigma_min=0.01, sigma_max=sigma_max, prediction_type=prediction_type
    )


def _vp(num_train_timesteps: int = 100, beta_end: float = 0.2, **kwargs) -> DDPMPosteriorScheduler:
    return DDPMPosteriorScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=beta_end, **kwargs
    )


def _marginal_of_timestep(scheduler, timestep: torch.Tensor, time_embedding_type: str) -> tuple[float, float]:
    """(alpha, sigma) at the network's timestep input: sigma itself for a fourier UNet (independent of the
    scheduler's continuous extension), else the scheduler's marginal at that (fractional) level."""
    value = float(timestep[0])
    if time_embedding_type == "fourier":
        return 1.0, value
    return scheduler.marginal(value)


def _as_prediction(score, x, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """What a network predicting `prediction_type` outputs when its score is exact."""
    eps = -sigma * score
    x0 = (x + sigma**2 * score) / alpha
    return {"score": score, "epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[prediction_type]


def gaussian_model(scheduler, covariance: np.ndarray, time_embedding_type="positional", variance_channels=False):
    """The exact network for data N(0, covariance) on (B, 1, 1, D) points: score -(alpha^2 Sigma + sigma^2 I)^-1 x."""
    cov = torch.from_numpy(covariance)
    prediction_type = scheduler.config.prediction_type

    def model_fn(x, timestep):
        alpha, sigma = _marginal_of_timestep(scheduler, timestep, time_embedding_type)
        precision = torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(len(cov), dtype=cov.dtype))
        score = -(x.reshape(len(x), -1) @ precision).reshape(x.shape)
        out = _as_prediction(score, x, alpha, sigma, prediction_type)
        # a learned-variance UNet's extra channels carry the variance, which the ODE must ignore
        return torch.cat([out, torch.full_like(out, 7.0)], dim=1) if variance_channels else out

    return model_fn


def gaussian_bits(x: torch.Tensor, covariance: np.ndarray, scheduler) -> np.ndarray:
    """Exact -log2 p_0(x) / D of the ODE with the exact score of N(0, Sigma): in Sigma's eigenbasis the flow scales
    coordinate i by sqrt(v_i(T) / v_i(0)), v_i(t) = alpha_t^2 lambda_i + sigma_t^2, and ends in the prior
    N(0, (alpha_T^2 + sigma_T^2) I)."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    process = scheduler.noise_process
    (alpha_0, sigma_0), (alpha_T, sigma_T) = process.marginal(0), process.marginal(process.num_levels - 1)
    v0, vT = alpha_0**2 * eigenvalues + sigma_0**2, alpha_T**2 * eigenvalues + sigma_T**2
    prior = alpha_T**2 + sigma_T**2
    y_T = (x.reshape(len(x), -1).double().numpy() @ eigenvectors) * np.sqrt(vT / v0)
    log_p = (-0.5 * np.log(2 * np.pi * prior) - y_T**2 / (2 * prior) + 0.5 * np.log(vT / v0)).sum(axis=1)
    return -log_p / (len(covariance) * LOG2)


def _points(num: int, dims: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(num, 1, 1, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


GAUSSIAN_CASES = {
    "ve-fourier-score": (lambda: _ve("score"), "fourier", False),
    "ve-positional-epsilon": (lambda: _ve("epsilon"), "positional", False),
    "vp-epsilon": (lambda: _vp(), "positional", False),
    "vp-sample": (lambda: _vp(prediction_type="sample"), "positional", False),
    "vp-v_prediction": (lambda: _vp(prediction_type="v_prediction"), "positional", False),
    "vp-learned_range": (lambda: _vp(variance_type="learned_range"), "positional", True),
}


@pytest.mark.parametrize("case", sorted(GAUSSIAN_CASES))
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_gaussian_data_gets_its_exact_density(case, scale):
    """N(0, s^2 I) data: the density at x is N(x; 0, (alpha_0^2 s^2 + sigma_0^2) I) carried through the prior at T
    (exactly that for s = 1). For NCSN sigma_max = 3 makes the prior 1 + 9 = 10, so a prior of sigma_max^2 or a
    wrong sign in the flow would miss by far more than the solver's error (rtol 1e-7: ~1e-5 of the NLL)."""
    make, embedding, variance_channels = GAUSSIAN_CASES[case]
    scheduler = make()
    covariance = scale**2 * np.eye(4)
    x = _points(5, 4, scale)
    model_fn = gaussian_model(scheduler, covariance, embedding, variance_channels)
    out = ode_bpd(
        model_fn, scheduler, x, time_embedding_type=embedding, dequantize=False, exact_trace=True, rtol=1e-7, atol=1e-7
    )
    expected = gaussian_bits(x, covariance, scheduler)
    np.testing.assert_allclose(out.bits_per_dim.double().numpy(), expected, rtol=2e-4, atol=2e-5)
    assert torch.equal(out.bits_per_dim_stderr, torch.zeros(5))
    if scale == 1.0:  # the prior is the true marginal: the density is the closed form itself
        process = scheduler.noise_process
        alpha_0, sigma_0 = process.marginal(0)
        variance = alpha_0**2 + sigma_0**2
        direct = 0.5 * math.log2(2 * math.pi * variance) + (x.reshape(5, -1) ** 2).mean(1) / (2 * variance * LOG2)
        np.testing.assert_allclose(out.bits_per_dim.double().numpy(), direct.numpy(), rtol=2e-4, atol=2e-5)
    assert 10 < out.nfe < 5000


@pytest.mark.parametrize("make", [_vp, _ve], ids=["vp", "ve"])
def test_hutchinson_estimate_is_unbiased_for_the_exact_trace(make):
    """Correlated Gaussian data (a Jacobian with off-diagonal entries, so Rademacher probes have variance): the
    mean of 400 probes lies within 4 standard errors of the exact density, and the reported error is the probes'
    spread over sqrt(K) (the same spread at K = 100 and K = 400)."""
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(3, 3))
    covariance = factor @ factor.T + 0.1 * np.eye(3)
    scheduler = make()
    x = _points(2, 3, seed=1)
    model_fn = gaussian_model(scheduler, covariance)
    exact = gaussian_bits(x, covariance, scheduler)
    solve = {"dequantize": False, "rtol": 1e-6, "atol": 1e-6}  # solver error ~1e-5 of the NLL, << the probes' 1e-3
    many = ode_bpd(model_fn, scheduler, x, num_probes=400, generator=torch.Generator().manual_seed(0), **solve)
    stderr = many.bits_per_dim_stderr.double().numpy()
    assert np.all(stderr > 1e-3)  # the probes disagree: the test could fail
    assert np.all(np.abs(many.bits_per_dim.double().numpy() - exact) < 4 * stderr)
    fewer = ode_bpd(model_fn, scheduler, x, num_probes=100, generator=torch.Generator().manual_seed(1), **solve)
    spread_ratio = (stderr * 20) / (fewer.bits_per_dim_stderr.double().numpy() * 10)
    assert np.all((0.7 < spread_ratio) & (spread_ratio < 1.4))  # sampling error of a std from 100 draws: ~7%
    single = ode_bpd(model_fn, scheduler, x, generator=torch.Generator().manual_seed(0), **solve)
    assert torch.isnan(single.bits_per_dim_stderr).all()


# ----------------------------------------------------------------------------------------------------------------
# Mixtures of Gaussians: exact score of the noised mixture, density and bin probabilities by quadrature
# Mean-zero mixtures: the prior N(0, alpha_T^2 + sigma_T^2) then differs from the noised mixture at T only in its
# variance and higher cumulants, O(alpha_T^2) for VP and O(1 / sigma_max^2) for VE (~1e-5 nats here); a mean m
# would cost ~ alpha_T m |x_T| (VP) or m |x_T| / sigma_max^2 (VE), ~1e-3 nats
MEANS_1D, STDS_1D, WEIGHTS_1D = np.array([[-0.7], [0.3]]), np.array([0.15, 0.3]), np.array([0.3, 0.7])
MEANS_2D = np.array([[-0.4, 0.2], [0.6, 0.4], [0.1, -1.1]])
STDS_2D, WEIGHTS_2D = np.array([0.2, 0.25, 0.1]), np.array([0.5, 0.3, 0.2])


def mixture_model(scheduler, means, stds, weights):
    """The exact score of sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I) (isotropic components)."""
    means_t, stds_t, log_w = (torch.from_numpy(a) for a in (means, stds, np.log(weights)))
    prediction_type = scheduler.config.prediction_type

    def model_fn(x, timestep):
        alpha, sigma = _marginal_of_timestep(scheduler, timestep, "positional")
        flat = x.reshape(len(x), 1, -1)
        variance = alpha**2 * stds_t**2 + sigma**2  # (K,)
        diff = flat - alpha * means_t[None]  # (B, K, D)
        log_r = log_w - 0.5 * (diff**2).sum(-1) / variance - 0.5 * flat.shape[-1] * torch.log(variance)
        responsibilities = torch.softmax(log_r, dim=1)
        score = -(responsibilities[..., None] * diff / variance[None, :, None]).sum(1)
        return _as_prediction(score.reshape(x.shape), x, alpha, sigma, prediction_type)

    return model_fn


def mixture_log_density(points: np.ndarray, means, stds, weights, alpha: float, sigma: float) -> np.ndarray:
    """log of the mixture noised to (alpha, sigma), at points (N, D)."""
    variance = alpha**2 * stds**2 + sigma**2
    diff = points[:, None, :] - alpha * means[None]
    dims = points.shape[1]
    log_components = -0.5 * (diff**2).sum(-1) / variance - 0.5 * dims * np.log(2 * np.pi * variance)
    return np.log(np.exp(log_components) @ weights)


MIXTURE_PROCESSES = {
    "ve": lambda: NCSNScheduler(num_train_timesteps=20, sigma_min=0.01, sigma_max=1000.0, prediction_type="score"),
    "vp": lambda: _vp(num_train_timesteps=1000, beta_end=0.02),
}


@pytest.mark.parametrize("process", sorted(MIXTURE_PROCESSES))
@pytest.mark.parametrize("dims", [1, 2])
def test_mixture_density_matches_the_analytic_mixture(process, dims):
    """The ODE's density at points is the mixture noised to the first level, whose density integrates to 1 by
    quadrature over the plane/line (so the reference itself is a density)."""
    scheduler = MIXTURE_PROCESSES[process]()
    means, stds, weights = (MEANS_1D, STDS_1D, WEIGHTS_1D) if dims == 1 else (MEANS_2D, STDS_2D, WEIGHTS_2D)
    alpha_0, sigma_0 = scheduler.noise_process.marginal(0)
    grid = np.linspace(-4, 4, 801)
    mesh = np.stack(np.meshgrid(*([grid] * dims), indexing="ij"), -1).reshape(-1, dims)
    mass = (
        np.exp(mixture_log_density(mesh, means, stds, weights, alpha_0, sigma_0)).sum() * (grid[1] - grid[0]) ** dims
    )
    assert mass == pytest.approx(1.0, abs=1e-6)

    x = torch.from_numpy(np.random.default_rng(dims).uniform(-1, 1, size=(6, dims))).reshape(6, 1, 1, dims)
    out = ode_bpd(
        mixture_model(scheduler, means, stds, weights),
        scheduler,
        x,
        dequantize=False,
        exact_trace=True,
        rtol=1e-7,
        atol=1e-7,
    )
    log_p = mixture_log_density(x.reshape(6, dims).numpy(), means, stds, weights, alpha_0, sigma_0)
    np.testing.assert_allclose(out.bits_per_dim.double().numpy(), -log_p / (dims * LOG2), rtol=0, atol=2e-4)


def test_dequantized_bits_bound_the_bin_probability():
    """1-D mixture on the 8-bit grid: the dequantized estimate averages -log2 p(x + u) + log2(127.5) over u uniform
    in the bin, whose exact value (Gauss-Legendre over the bin) it matches within 4 standard errors of 400 draws,
    and which bounds -log2 P(bin) from above (Jensen)."""
    scheduler = MIXTURE_PROCESSES["vp"]()
    alpha_0, sigma_0 = scheduler.noise_process.marginal(0)
    level = 150
    x = torch.full((400, 1, 1, 1), level / 127.5 - 1, dtype=torch.float64)
    out = ode_bpd(
        mixture_model(scheduler, MEANS_1D, STDS_1D, WEIGHTS_1D),
        scheduler,
        x,
        exact_trace=True,
        generator=torch.Generator().manual_seed(0),
        method="rk4",
        num_steps=400,
    )
    nodes, node_weights = np.polynomial.legendre.leggauss(40)
    half = 1 / 255  # the bin of level v is v / 127.5 - 1 +- 1/255, the ELBO decoder's
    points = (level / 127.5 - 1 + half * nodes)[:, None]
    log_p = mixture_log_density(points, MEANS_1D, STDS_1D, WEIGHTS_1D, alpha_0, sigma_0)
    nll_bits = -log_p / LOG2 + math.log2(127.5)  # -log2 of the density times the bin width 2/255
    expected, expected_std = (
        node_weights @ nll_bits / 2,
        math.sqrt(node_weights @ nll_bits**2 / 2 - (node_weights @ nll_bits / 2) ** 2),
    )
    bin_probability = half * (node_weights @ np.exp(log_p))
    bits = out.bits_per_dim.double().numpy()
    assert abs(bits.mean() - expected) < 4 * bits.std() / math.sqrt(len(bits))
    assert 0 <= expected + math.log2(bin_probability) < 1e-4  # Jensen's gap over so narrow a bin is tiny
    # the spread of the draws is that of -log2 p over the bin (a wrong bin width would change it)
    assert bits.std() == pytest.approx(expected_std, rel=0.15)


# ----------------------------------------------------------------------------------------------------------------
# Batching, randomness, errors
def test_result_does_not_depend_on_batching():
    """Dequantization noise and probes are drawn for all images before batching: a fixed-step solve gives the
    same numbers whatever the batch size; an adaptive solve (its steps chosen per batch) agrees to its tolerance."""
    scheduler = MIXTURE_PROCESSES["vp"]()
    model_fn = mixture_model(scheduler, MEANS_2D, STDS_2D, WEIGHTS_2D)
    x = (torch.randint(0, 256, (5, 1, 1, 2), generator=torch.Generator().manual_seed(3)) / 127.5 - 1).double()

    def run(batch_size, **solver):
        return ode_bpd(
            model_fn,
            scheduler,
            x,
            num_probes=2,
            generator=torch.Generator().manual_seed(0),
            batch_size=batch_size,
            **solver,
        )

    fixed = {"method": "rk4", "num_steps": 50}
    whole, pieces = run(None, **fixed), run(2, **fixed)
    torch.testing.assert_close(whole.bits_per_dim, pieces.bits_per_dim, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.bits_per_dim_stderr, pieces.bits_per_dim_stderr, rtol=0, atol=1e-6)
    assert pieces.nfe == 3 * whole.nfe  # three batches of 50 rk4 steps
    adaptive_whole, adaptive_pieces = run(None, rtol=1e-7, atol=1e-7), run(2, rtol=1e-7, atol=1e-7)
    # the interpolated schedule is C^1, so dopri5 at rtol 1e-7 is accurate to ~1e-5 of the NLL (the Gaussian tests)
    torch.testing.assert_close(adaptive_whole.bits_per_dim, adaptive_pieces.bits_per_dim, rtol=1e-4, atol=0)
    other_seed = ode_bpd(model_fn, scheduler, x, num_probes=2, generator=torch.Generator().manual_seed(1), **fixed)
    assert not torch.allclose(other_seed.bits_per_dim, whole.bits_per_dim)


def test_bad_arguments_are_refused_before_any_network_call():
    calls = []

    def model_fn(x, timestep):
        calls.append(1)
        return torch.zeros_like(x)

    scheduler = _vp(num_train_timesteps=10)
    x = torch.tensor([0, 37, 128, 255]).reshape(1, 1, 2, 2) / 127.5 - 1  # on the 8-bit grid
    cases = [
        ({"method": "heun9"}, "method"),
        ({"method": "rk4"}, "num_steps"),
        ({"num_steps": 10}, "num_steps=10 applies to the fixed-step methods"),
        ({"num_probes": 0}, "num_probes"),
        ({"rtol": -1.0}, "rtol"),
        ({"batch_size": 0}, "batch_size"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"dequantize": "yes"}, "dequantize"),
        ({"time_embedding_type": "learned"}, "time_embedding_type='learned'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ode_bpd(model_fn, scheduler, x, **kwargs)
    with pytest.raises(ValueError, match="8-bit"):
        ode_bpd(model_fn, scheduler, x + 0.001)  # 0.13 of a level off the grid
    with pytest.raises(ValueError, match="8-bit"):
        ode_bpd(model_fn, scheduler, x - 2 / 255)  # the level -1, below the grid
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ode_bpd(model_fn, _vp(num_train_timesteps=10, rescale_betas_zero_snr=True), x)
    with pytest.raises(ValueError, match="exact_trace=True differentiates 4225 copies"):
        ode_bpd(model_fn, scheduler, torch.zeros(1, 1, 65, 65), exact_trace=True)
    with pytest.raises(ValueError, match="non-empty batch"):
        ode_bpd(model_fn, scheduler, torch.zeros(0, 1, 2, 2))
    assert calls == []


def test_the_network_gets_what_the_unet_gets():
    """NCSN: the (fractional) level index for a positional UNet, sigma_t for a fourier one; DDPM: the float
    timestep. The solve covers [0, T - 1] and never steps outside it."""
    seen = {}

    def recorder(name):
        def model_fn(x, timestep):
            assert timestep.shape == (len(x),)
            seen.setdefault(name, []).append(float(timestep[0]))
            return -0.5 * x

        return model_fn

    x = torch.zeros(2, 1, 2, 2)
    ncsn = _ve("epsilon", levels=10)
    ode_bpd(recorder("positional"), ncsn, x, dequantize=False, num_steps=4, method="midpoint")
    ode_bpd(
        recorder("fourier"),
        _ve("score"),
        x,
        time_embedding_type="fourier",
        dequantize=False,
        num_steps=4,
        method="euler",
    )
    ode_bpd(recorder("ddpm"), _vp(num_train_timesteps=50), x, dequantize=False)
    assert seen["positional"] == pytest.approx([0.0, 1.125, 2.25, 3.375, 4.5, 5.625, 6.75, 7.875])
    sigmas = [0.01 * 300 ** (t / 9) for t in (0.0, 2.25, 4.5, 6.75)]
    assert seen["fourier"] == pytest.approx(sigmas, rel=1e-6)
    assert min(seen["ddpm"]) == 0.0 and max(seen["ddpm"]) == pytest.approx(49.0, abs=1e-4)  # float32 time
    assert any(not t.is_integer() for t in seen["ddpm"])


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
IMAGES = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize(
    "make", [tiny_ncsn, lambda: tiny_ncsn(fourier=True), tiny_ddpm], ids=["ncsn", "fourier", "ddpm"]
)
def test_pipelines_score_uint8_images_through_the_same_ode(make):
    pipe = make()
    solver = {"method": "rk4", "num_steps": 6, "num_probes": 2}
    out = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), **solver)
    direct = ode_bpd(
        lambda x, t: pipe.unet(x, t).sample,
        pipe.scheduler,
        IMAGES.float() / 127.5 - 1,
        time_embedding_type=pipe.unet.config.time_embedding_type,
        generator=torch.Generator().manual_seed(0),
        **solver,
    )
    torch.testing.assert_close(out.bits_per_dim, direct.bits_per_dim, rtol=0, atol=0)
    assert out.nfe == 24 and out.bits_per_dim.shape == (3,) and torch.isfinite(out.bits_per_dim).all()
    from_float = pipe.ode_likelihood(IMAGES.float() / 127.5 - 1, generator=torch.Generator().manual_seed(0), **solver)
    torch.testing.assert_close(from_float.bits_per_dim, out.bits_per_dim)
    with pytest.raises(ValueError, match="images must be"):
        pipe.ode_likelihood(IMAGES[:, :, :4])


def test_a_diffusers_ddpm_folder_gets_an_ode_likelihood(tmp_path):
    """diffusers' own DDPMPipeline layout (UNet2DModel + DDPMScheduler), as the public DDPM checkpoints are."""
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(tmp_path)
    pipe = DDPMPosteriorPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), method="rk4", num_steps=4)
    assert torch.isfinite(out.bits_per_dim).all() and out.nfe == 16


def test_the_progress_bar_follows_the_ode_time_over_every_batch():
    class Bar:
        def __init__(self, total):
            self.total, self.n, self.closed = total, 0.0, False

        def update(self, amount):
            assert amount > 0
            self.n += amount

        def close(self):
            self.closed = True

    bars = []

    def progress(total):
        bars.append(Bar(total))
        return bars[-1]

    scheduler = _vp(num_train_timesteps=10)
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    ode_bpd(lambda x, t: 0.5 * x, scheduler, x, dequantize=False, batch_size=2, progress=progress)
    (bar,) = bars
    assert bar.total == 2 * 9 and bar.n == 18 and bar.closed  # two batches over [0, 9], in whole time units


def test_the_exact_trace_is_the_same_in_chunks_of_pixels(monkeypatch):
    """The exact divergence differentiates D copies of the batch, a few pixels per network call when D * B is
    large: splitting the copies must not change the trace (correlated Gaussian, off-diagonal Jacobian)."""
    from hf_ddpm_ncsn.likelihood import probability_flow

    covariance = np.array([[1.0, 0.6, 0.2], [0.6, 0.8, -0.3], [0.2, -0.3, 0.5]])
    scheduler = _vp()
    x = _points(4, 3, seed=2)
    solve = {"dequantize": False, "exact_trace": True, "method": "rk4", "num_steps": 400}
    whole = ode_bpd(gaussian_model(scheduler, covariance), scheduler, x, **solve)
    monkeypatch.setattr(probability_flow, "EXACT_TRACE_ELEMENTS", 24)  # two copies of 4 3-d images per call
    chunked = ode_bpd(gaussian_model(scheduler, covariance), scheduler, x, **solve)
    torch.testing.assert_close(chunked.bits_per_dim, whole.bits_per_dim, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole.bits_per_dim.double().numpy(), gaussian_bits(x, covariance, scheduler), rtol=1e-3)


def test_the_divergence_is_taken_under_no_grad_and_inference_mode_too():
    """Callers often wrap evaluation in no_grad / inference_mode; the divergence still needs autograd."""
    pipe = tiny_ddpm()
    solver = {"method": "rk4", "num_steps": 3}
    expected = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), **solver).bits_per_dim
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            got = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), **solver).bits_per_dim
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_score_that_ignores_x_has_no_divergence():
    """A constant output (a zero-score baseline, a broken network) is scored, with div s = 0 in both modes."""
    scheduler = _vp(num_train_timesteps=10)
    x = _points(3, 4)
    solve = {"dequantize": False, "method": "rk4", "num_steps": 10, "generator": torch.Generator().manual_seed(0)}
    constant = ode_bpd(lambda x, t: torch.ones(len(x), 1, 1, 4), scheduler, x, exact_trace=True, **solve)
    probed = ode_bpd(lambda x, t: torch.ones(len(x), 1, 1, 4), scheduler, x, num_probes=3, **solve)
    torch.testing.assert_close(constant.bits_per_dim, probed.bits_per_dim, rtol=0, atol=1e-6)
    assert torch.equal(probed.bits_per_dim_stderr, torch.zeros(3))


def test_half_precision_pipelines_integrate_in_float32():
    """A float16 UNet scores the same images (the state stays float32; only the network's calls are cast)."""
    pipe = tiny_ddpm()
    solver = {"method": "rk4", "num_steps": 3}
    full = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), **solver).bits_per_dim
    pipe.unet.to(torch.bfloat16)
    half = pipe.ode_likelihood(IMAGES, generator=torch.Generator().manual_seed(0), **solver)
    assert half.bits_per_dim.dtype == torch.float32
    torch.testing.assert_close(half.bits_per_dim, full, rtol=0.05, atol=0)
