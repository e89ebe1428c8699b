"""Importance sampling of training timesteps by the loss's second moment (Nichol & Dhariwal 2021, sec. 3.3).

The bound's sum L_vlb = sum_t L_t is estimated in training by T * L_t with t uniform, an estimate whose variance is
dominated by the few timesteps with large, noisy terms. Sampling t with probability p_t and weighting its loss by
1 / (T p_t) keeps the estimate unbiased for any p (sum_t p_t * L_t / (T p_t) = mean_t L_t), and the p minimising the
variance is proportional to sqrt(E[L_t^2]). The rule, `--timestep_sampler loss-second-moment`:

- every timestep keeps the history of its last `HISTORY_LENGTH` = 10 per-sample training losses;
- until every timestep has 10, timesteps are drawn uniformly, with the very draw the uniform sampler makes
  (`torch.randint`), and weighted by 1, so a run is the same as a uniform one until then;
- then p_t is proportional to the root mean square of its history, mixed with the uniform distribution as
  (1 - 0.001) p + 0.001 / T (no timestep is starved, and no weight exceeds 1000), and each sample's loss is
  weighted by 1 / (T p_t).

The history is updated after every forward pass with the per-sample losses of every process (gathered, in process
order), so every process holds the same state; it is saved in every accelerate checkpoint (registered with
`register_for_checkpointing`) and restored on `--resume_from_checkpoint`, so a resumed run draws what the
uninterrupted one would have drawn. `check_same_state_on_every_process` verifies the agreement before a checkpoint
(only the main process's copy is saved) and at the end of training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")
#: losses kept per timestep (improved-diffusion's `history_per_term`)
HISTORY_LENGTH = 10
#: weight of the uniform distribution in the mixture (improved-diffusion's `uniform_prob`)
UNIFORM_MIX = 0.001


def second_moment_probabilities(history: torch.Tensor, uniform_mix: float = UNIFORM_MIX) -> torch.Tensor:
    """p_t proportional to sqrt(mean_k history[t, k]^2), mixed with the uniform distribution.

    Args:
        history (`torch.Tensor` of shape (T, K)): K losses per timestep.
        uniform_mix (`float`, defaults to 0.001): the uniform distribution's weight m in (1 - m) p + m / T.

    Returns:
        `torch.Tensor` of shape (T,), float64: the sampling probabilities (uniform when every loss is 0, which
        carries no information about where the variance is).
    """
    rms = history.to(torch.float64).square().mean(dim=1).sqrt()
    total = rms.sum()
    num_timesteps = history.shape[0]
    p = rms / total if total > 0 else torch.full_like(rms, 1.0 / num_timesteps)
    return (1.0 - uniform_mix) * p + uniform_mix / num_timesteps


def importance_weights(probabilities: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The weight 1 / (T p_t) of each sampled timestep, which makes the weighted loss an unbiased estimate of the
    loss averaged uniformly over timesteps.

    Args:
        probabilities (`torch.Tensor` of shape (T,)): the distribution the timesteps were drawn from.
        timesteps (`torch.Tensor` of shape (B,)): the drawn timesteps.
    """
    return 1.0 / (probabilities.shape[0] * probabilities[timesteps])


def sample_timesteps(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Timesteps drawn from `probabilities` by inverting its CDF at `uniforms`: t is the first index whose
    cumulative probability exceeds u, so t = k exactly for u in [P(t < k), P(t <= k)).

    Args:
        probabilities (`torch.Tensor` of shape (T,)): a probability vector, float64.
        uniforms (`torch.Tensor` of shape (B,)): draws from U[0, 1), on the same device.

    Returns:
        `torch.Tensor` of shape (B,), int64.
    """
    cdf = probabilities.to(torch.float64).cumsum(dim=0)
    cdf = cdf / cdf[-1]  # the last entry is exactly 1, so no u < 1 falls past the last timestep
    return torch.searchsorted(cdf, uniforms.to(torch.float64), right=True)


def record_losses(
    history: torch.Tensor, counts: torch.Tensor, timesteps: torch.Tensor, losses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The history after appending each (timestep, loss) pair in order: a timestep holding K losses drops its
    oldest.

    Args:
        history (`torch.Tensor` of shape (T, K)): each row's first `counts[t]` entries, oldest first.
        counts (`torch.Tensor` of shape (T,)): how many losses each timestep holds (at most K).
        timesteps (`torch.Tensor` of shape (N,)): timesteps of the new losses.
        losses (`torch.Tensor` of shape (N,)): the new losses.

    Returns:
        `tuple`: the new history (float64, on the CPU) and counts; the inputs are left unchanged.
    """
    history = history.detach().to("cpu", torch.float64, copy=True)
    counts = counts.detach().to("cpu", torch.int64, copy=True)
    rows, held, length = history.numpy(), counts.numpy(), history.shape[1]  # views: scalar writes in NumPy are fast
    for t, loss in zip(timesteps.tolist(), losses.detach().to("cpu", torch.float64).tolist(), strict=True):
        if held[t] < length:
            rows[t, held[t]] = loss
            held[t] += 1
        else:
            rows[t, :-1] = rows[t, 1:]  # NumPy copies overlapping slices as if through a buffer
            rows[t, -1] = loss
    return history, counts


class LossSecondMomentSampler:
    """The `loss-second-moment` timestep sampler: its loss history, the draws it makes, and its checkpoint state.

    Args:
        num_timesteps (`int`): T.
        history_length (`int`, defaults to 10): losses kept per timestep.
        uniform_mix (`float`, defaults to 0.001): the uniform distribution's weight in the mixture.
    """

    def __init__(self, num_timesteps: int, history_length: int = HISTORY_LENGTH, uniform_mix: float = UNIFORM_MIX):
        self.uniform_mix = uniform_mix
        self.history = torch.zeros(num_timesteps, history_length, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.int64)

    @property
    def num_timesteps(self) -> int:
        return self.history.shape[0]

    @property
    def warm(self) -> bool:
        """Whether every timestep holds a full history (until then, draws are uniform)."""
        return bool((self.counts == self.history.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        """The distribution of the next draws (T,), float64: uniform until `warm`."""
        if not self.warm:
            return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        return second_moment_probabilities(self.history, self.uniform_mix)

    def sample(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps for a batch and the weight of each sample's loss.

        Args:
            batch_size (`int`): B.
            device (`torch.device` or `str`): where the batch lives.
            generator (`torch.Generator`, *optional*): random generator (training uses the global one, whose
                state accelerate checkpoints).

        Returns:
            `tuple`: timesteps (B,) int64 and weights (B,) float64, on `device`.
        """
        draw_device = generator.device if generator is not None else device
        if not self.warm:
            # the uniform sampler's own draw (`losses._uniform_timesteps`): the warm-up equals a uniform run
            t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device)
            return t.to(device), torch.ones(batch_size, dtype=torch.float64, device=device)
        p = self.probabilities().to(draw_device)
        uniforms = torch.rand(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        t = sample_timesteps(p, uniforms)
        return t.to(device), importance_weights(p, t).to(device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Append the losses of every process's batch (in process order), as `gather_losses` returns them."""
        self.history, self.counts = record_losses(self.history, self.counts, timesteps, losses)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.clone(), "counts": self.counts.clone(), "uniform_mix": self.uniform_mix}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state.

        Raises:
            `ValueError`: the state is of another number of timesteps or history length.
        """
        if tuple(state["history"].shape) != tuple(self.history.shape):
            raise ValueError(
                f"the checkpoint's timestep sampler holds a {tuple(state['history'].shape)} loss history, this run "
                f"needs {tuple(self.history.shape)} (timesteps, losses per timestep)"
            )
        self.history = state["history"].to("cpu", torch.float64, copy=True)
        self.counts = state["counts"].to("cpu", torch.int64, copy=True)
        self.uniform_mix = float(state["uniform_mix"])

    def flat_state(self) -> torch.Tensor:
        """The whole state as one float64 vector (history, counts, mix): what processes compare."""
        extra = torch.tensor([self.uniform_mix], dtype=torch.float64)
        return torch.cat([self.history.flatten(), self.counts.to(torch.float64), extra])


def gather_losses(
    accelerator: Accelerator, timesteps: torch.Tensor, losses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's timesteps and per-sample losses (detached), concatenated in process order, on every process.

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        timesteps (`torch.Tensor` of shape (B,)): this process's timesteps.
        losses (`torch.Tensor` of shape (B,)): this process's per-sample losses (unweighted).

    Raises:
        `RuntimeError`: the processes' batches differ in size (the gathered length is not num_processes * B).
    """
    # one collective: a timestep below 100,000 is exact in float64
    local = torch.stack([timesteps.to(torch.float64), losses.detach().to(torch.float64)], dim=1)
    gathered = accelerator.gather(local)
    if gathered.shape[0] != accelerator.num_processes * local.shape[0]:
        raise RuntimeError(
            f"gathered {gathered.shape[0]} timestep losses from {accelerator.num_processes} processes of "
            f"{local.shape[0]} samples each: every process must train on batches of the same size"
        )
    return gathered[:, 0].to(torch.int64).cpu(), gathered[:, 1].cpu()


def check_same_state_on_every_process(accelerator: Accelerator, sampler: LossSecondMomentSampler) -> None:
    """Raise unless every process holds the same sampler state, bit for bit.

    Raises:
        `RuntimeError`: naming the processes whose state differs from the main process's.
    """
    if accelerator.num_processes == 1:
        return
    # compared as integers: bit-for-bit, whatever the values
    states = accelerator.gather(sampler.flat_state().to(accelerator.device)[None]).view(torch.int64)
    differ = [rank for rank in range(1, states.shape[0]) if not torch.equal(states[rank], states[0])]
    if differ:
        raise RuntimeError(
            f"the timestep sampler's state of process(es) {differ} differs from the main process's: the processes "
            "no longer draw timesteps from the same distribution"
        )
