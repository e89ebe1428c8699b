"""An isotropic Gaussian mixture whose noised versions have exact scores: the ground truth the samplers are
checked against."""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I) in D dimensions.

    For x = a x_0 + sqrt(v) eps (a = 1, v = sigma^2 for NCSN; a = sqrt(alpha_bar), v = 1 - alpha_bar for DDPM) the
    noised density is again a mixture, sum_k w_k N(a mu_k, (a^2 s_k^2 + v) I), so its score is exact.
    """

    def __init__(self, weights, means, stds):
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * noise).float()

    def score(self, x: torch.Tensor, scale: float = 1.0, extra_variance: float = 0.0) -> torch.Tensor:
        x = x.to(torch.float64)
        variances = scale**2 * self.stds**2 + extra_variance  # (K,)
        diff = x[:, None, :] - scale * self.means[None]  # (N, K, D)
        dim = x.shape[1]
        log_comp = (
            self.weights.log() - 0.5 * (diff**2).sum(-1) / variances - 0.5 * dim * torch.log(2 * math.pi * variances)
        )
        resp = torch.softmax(log_comp, dim=1)  # (N, K)
        return (resp[..., None] * (-diff / variances[None, :, None])).sum(1).float()

    def mode_fractions(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x.double(), self.means).argmin(dim=1)
        return torch.bincount(nearest, minlength=len(self.weights)).double() / len(x)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Szekely's energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|: zero iff the distributions match."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())
