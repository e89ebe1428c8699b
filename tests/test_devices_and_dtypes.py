"""What the GPU path needs that a CPU can check: half-precision and float64 UNets in the pipelines and likelihoods.

bfloat16 keeps 8 significant bits, so one rounding is off by at most u = 2^-8 relative. The likelihoods are means of
N = B * D * T smooth terms; a bfloat16 UNet perturbs each term by O(u) relative with a sign that varies from term
to term, so the mean moves by about u / sqrt(N), far below u. Storing a part of the likelihood's *state* in bfloat16
(the 8-bit images, which then leave the 256-bin grid, or x_t) moves every term the same way, by O(u): a relative
tolerance of u separates the two. A float64 UNet differs from float32 by float32 roundoff only (2^-24), if the
noise is the same draw: 1e-4 relative is loose for that and tight against a different draw, which moves the ELBO
by several percent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.tiny_models import tiny_ddpm, tiny_ncsn

BF16_U = 2.0**-8


def _images(seed: int = 0, n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _with_dtype(pipe, dtype: torch.dtype):
    pipe.unet.to(dtype)
    return pipe


def _elbo(pipe):
    return pipe.elbo(_images(), generator=torch.Generator().manual_seed(1)).bits_per_dim


def _stratified(pipe):
    return pipe.stratified_elbo(_images(), 5, generator=torch.Generator().manual_seed(1)).bits_per_dim


def _ode(pipe):
    generator = torch.Generator().manual_seed(1)
    return pipe.ode_likelihood(_images(), generator=generator, method="euler", num_steps=6).bits_per_dim


@pytest.mark.parametrize("likelihood", [_elbo, _stratified, _ode], ids=["elbo", "stratified_elbo", "ode"])
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.bfloat16, BF16_U), (torch.float64, 1e-4)], ids=["bf16", "f64"])
def test_likelihood_of_other_unet_dtypes_agrees_with_float32(likelihood, dtype, rtol):
    # catches an x_0 / x_t kept in bfloat16 (off the 8-bit grid) and noise drawn in the UNet's float64
    reference = likelihood(tiny_ddpm(channels=3))
    other = likelihood(_with_dtype(tiny_ddpm(channels=3), dtype))
    assert other.dtype == reference.dtype and torch.isfinite(other).all()
    torch.testing.assert_close(other.double(), reference.double(), rtol=rtol, atol=0.0)


def test_ncsn_ode_likelihood_of_a_bfloat16_fourier_unet_agrees_with_float32():
    # the ODE passes sigma to a fourier UNet: the cast must not touch the timestep path
    reference = _ode(tiny_ncsn(channels=3, fourier=True))
    other = _ode(_with_dtype(tiny_ncsn(channels=3, fourier=True), torch.bfloat16))
    torch.testing.assert_close(other, reference, rtol=BF16_U, atol=0.0)


# (pipeline builder, call arguments, UNet-and-scheduler steps of the chain)
SAMPLERS = [
    (tiny_ncsn, {}, 9),
    (lambda channels: tiny_ncsn(channels, fourier=True), {}, 9),  # its output is divided by a float32 sigma
    (tiny_ncsn, {"sampler": "ode"}, 4),
    (tiny_ddpm, {"num_inference_steps": 5}, 5),
    (tiny_ddpm, {"num_inference_steps": 5, "sampler": "pc"}, 10),
]


@pytest.mark.parametrize(
    ("make", "kwargs", "steps"), SAMPLERS, ids=["ncsn", "ncsn-fourier", "ncsn-ode", "ddpm", "ddpm-pc"]
)
def test_bfloat16_unet_samples_like_float32_from_the_same_cpu_generator(make, kwargs, steps):
    """A CPU generator draws the same noise for a bfloat16 UNet (rounded), so the images agree up to the chain's
    rounding: the state is rounded once per step, by at most u |x| with |x| < 3 (three standard deviations of the
    start), and the error of step k is carried on, not amplified, to first order: steps * u * 3 in x, half that
    in [0, 1]. A different or unseeded draw moves the pixels by O(1)."""
    reference = make(channels=3)(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    pipe = _with_dtype(make(channels=3), torch.bfloat16)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    assert images.dtype == np.float32 and images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    np.testing.assert_allclose(images, reference.images, rtol=0, atol=steps * BF16_U * 3 / 2)
    tensors = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    assert tensors.dtype == torch.bfloat16 and tensors.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(tensors.float().permute(0, 2, 3, 1).numpy(), images)
