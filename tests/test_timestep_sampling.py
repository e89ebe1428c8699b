"""Importance-sampled timesteps (`--timestep_sampler loss-second-moment`, Nichol & Dhariwal 2021): the rule against
its mathematics, then in training: the warm-up is a uniform run, a killed and resumed run is the uninterrupted one,
two gloo processes hold one state."""

import hashlib
import json
import math
import signal
import sys

import pytest
import torch
from test_training import SCRIPTS, TINY, TWO_GLOO_PROCESSES, _weights, run_script, run_with_a_crash

from hf_ddpm_ncsn.losses import LossTerms
from hf_ddpm_ncsn.training import main
from hf_ddpm_ncsn.training.timestep_sampling import (
    HISTORY_LENGTH,
    UNIFORM_MIX,
    LossSecondMomentSampler,
    check_same_state_on_every_process,
    gather_losses,
    importance_weights,
    record_losses,
    sample_timesteps,
    second_moment_probabilities,
)

U64 = 2.0**-53


def _warm_sampler(history: torch.Tensor) -> LossSecondMomentSampler:
    sampler = LossSecondMomentSampler(history.shape[0])
    for k in range(HISTORY_LENGTH):
        sampler.update(torch.arange(history.shape[0]), history[:, k])
    assert sampler.warm and torch.equal(sampler.history, history.double())
    return sampler


# --- the rule ----------------------------------------------------------------------------------------------------


def test_the_weighted_loss_is_an_unbiased_estimate_of_the_uniform_mean():
    """E_{t ~ p}[w_t L_t] = sum_t p_t L_t / (T p_t) = mean_t L_t, for any losses, at any p the rule produces."""
    generator = torch.Generator().manual_seed(0)
    num_timesteps = 50
    history = torch.rand(num_timesteps, HISTORY_LENGTH, generator=generator, dtype=torch.float64) ** 4 * 100
    history[7] = 0  # a timestep of zero loss: only the uniform mix keeps it reachable
    p = second_moment_probabilities(history)
    assert p.max() / p.min() > 100  # far from uniform
    timesteps = torch.arange(num_timesteps)
    weights = importance_weights(p, timesteps)
    for _ in range(5):
        losses = torch.rand(num_timesteps, generator=generator, dtype=torch.float64) * 10
        expectation = (p * weights * losses).sum()
        # each p_t w_t is 1/T to 3 roundings; the sum of T terms adds T roundings of at most the total
        assert abs(expectation - losses.mean()) <= 4 * num_timesteps * U64 * losses.mean()
    # the weighting the loop applies: every per-sample value, parts included, times its weight
    terms = LossTerms(torch.tensor([1.0, 2.0]), {"mse": torch.tensor([3.0, 4.0])}).weighted(torch.tensor([0.5, 4.0]))
    assert terms.loss.tolist() == [0.5, 8.0] and terms.parts["mse"].tolist() == [1.5, 16.0]


def test_probabilities_are_proportional_to_the_root_mean_square_mixed_with_uniform():
    history = torch.tensor([[1.0] * 10, [3.0, 4.0] * 5, [0.0] * 10, [-2.0] * 10], dtype=torch.float64)
    rms = [1.0, math.sqrt((9 + 16) / 2), 0.0, 2.0]
    expected = [(1 - 0.001) * r / sum(rms) + 0.001 / 4 for r in rms]
    assert UNIFORM_MIX == 0.001
    assert second_moment_probabilities(history).tolist() == pytest.approx(expected, rel=1e-15)
    # the mix bounds the weights: a timestep of zero loss keeps p = 0.001 / T, so its weight is 1 / 0.001
    weights = importance_weights(second_moment_probabilities(history), torch.tensor([2]))
    assert weights.item() == pytest.approx(1000, rel=1e-12)
    # a history of zeros says nothing about the variance: uniform
    assert second_moment_probabilities(torch.zeros(5, 10)).tolist() == pytest.approx([0.2] * 5, rel=1e-15)
    # the sampler uses exactly this rule once warm
    assert torch.equal(_warm_sampler(history).probabilities(), second_moment_probabilities(history))


def test_uniform_draws_until_every_timestep_has_ten_losses_and_the_history_keeps_the_last_ten():
    sampler = LossSecondMomentSampler(4)
    for k in range(9):
        sampler.update(torch.arange(4), torch.full((4,), float(k)))
    sampler.update(torch.tensor([0, 1, 2]), torch.full((3,), 9.0))  # timestep 3 holds 9 losses
    assert not sampler.warm and sampler.counts.tolist() == [10, 10, 10, 9]

    def uniform_draws(seed):  # exactly what the uniform sampler draws (losses._uniform_timesteps)
        return torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(seed))

    t, w = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, uniform_draws(3)) and torch.equal(w, torch.ones(64, dtype=torch.float64))
    assert sampler.probabilities().tolist() == [0.25] * 4

    # 15 losses for timestep 2 in one update, in order: the oldest 5 (and the 10 before them) drop out
    sampler.update(torch.tensor([3] + [2] * 15), torch.tensor([100.0] + [float(i) for i in range(1, 16)]))
    assert sampler.warm and sampler.counts.tolist() == [10] * 4
    assert sampler.history[2].tolist() == [float(i) for i in range(6, 16)]
    assert sampler.history[3].tolist() == [float(k) for k in range(9)] + [100.0]
    assert sampler.history[0].tolist() == [float(k) for k in range(9)] + [9.0]
    t, _ = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    assert not torch.equal(t, uniform_draws(3))  # warm: drawn from p, no longer uniform


def test_recording_losses_leaves_its_inputs_alone():
    history, counts = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)
    new_history, new_counts = record_losses(history, counts, torch.tensor([1, 1, 1]), torch.tensor([1.0, 2.0, 3.0]))
    assert new_history.tolist() == [[0, 0], [2, 3], [0, 0]] and new_counts.tolist() == [0, 2, 0]
    assert not history.any() and not counts.any()


def test_sampling_follows_the_probabilities():
    history = torch.tensor([[1.0] * 10, [5.0] * 10, [0.0] * 10, [2.0, 3.0] * 5, [0.5] * 10], dtype=torch.float64)
    p = second_moment_probabilities(history)
    # exact enumeration of the inverse CDF: of N evenly spaced u in [0, 1), each timestep receives N p_t of them,
    # to within one grid point at each end of its interval
    n = 2**20
    counts = torch.bincount(sample_timesteps(p, torch.arange(n, dtype=torch.float64) / n), minlength=5)
    assert len(counts) == 5 and ((counts - n * p).abs() <= 1).all(), (counts, n * p)
    # with dyadic probabilities the grid hits the interval ends exactly: each [P(t < k), P(t <= k)) holds N p_k
    dyadic = torch.tensor([0.25, 0.125, 0.125, 0.5], dtype=torch.float64)
    grid = sample_timesteps(dyadic, torch.arange(64, dtype=torch.float64) / 64)
    assert torch.bincount(grid, minlength=4).tolist() == [16, 8, 8, 32] and grid[16] == 1
    # a large seeded draw of the warm sampler: every count within 6 binomial standard deviations (p_2 = 0.0002)
    sampler = _warm_sampler(history)
    draws = 400_000
    t, w = sampler.sample(draws, "cpu", generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=5).double()
    sigma = (draws * p * (1 - p)).sqrt()
    assert ((counts - draws * p).abs() <= 6 * sigma).all(), (counts - draws * p) / sigma
    assert counts[2] > 0 and torch.equal(w, 1 / (5 * p[t]))


def test_the_state_round_trips_and_refuses_another_shape():
    sampler = _warm_sampler(torch.arange(30, dtype=torch.float64).reshape(3, 10))
    restored = LossSecondMomentSampler(3)
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.flat_state(), sampler.flat_state()) and restored.warm
    with pytest.raises(ValueError, match=r"\(3, 10\) loss history, this run needs \(4, 10\)"):
        LossSecondMomentSampler(4).load_state_dict(sampler.state_dict())


class _TwoProcesses:
    """What `gather` returns on a 2-process run: this process's tensor, then the other's."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, other: torch.Tensor):
        self.other = other

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, self.other])


def test_processes_must_agree_bit_for_bit_and_send_equal_batches():
    sampler = _warm_sampler(torch.rand(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    check_same_state_on_every_process(_TwoProcesses(sampler.flat_state()[None]), sampler)
    other = sampler.flat_state()
    other[5] = math.nextafter(other[5].item(), math.inf)  # one ulp apart
    with pytest.raises(RuntimeError, match=r"process\(es\) \[1\] differs"):
        check_same_state_on_every_process(_TwoProcesses(other[None]), sampler)

    mine = torch.stack([torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.25])], dim=1)  # (timestep, loss) rows
    t, losses = gather_losses(_TwoProcesses(mine + 1), torch.tensor([0, 3]), torch.tensor([0.5, 0.25]))
    assert t.tolist() == [0, 3, 1, 4] and losses.tolist() == [0.5, 0.25, 1.5, 1.25]  # in process order
    with pytest.raises(RuntimeError, match="batches of the same size"):
        gather_losses(_TwoProcesses(mine[:1]), torch.tensor([0, 3]), torch.tensor([0.5, 0.25]))


# --- in training ---------------------------------------------------------------------------------------------------

# T = 4 and 16 images a step: every timestep has 10 losses after a few steps, so the runs below sample by the loss
SAMPLED = [*TINY, "--ddpm_num_steps", "4", "--loss_type", "vlb", "--timestep_sampler", "loss-second-moment"]


def _saved_state(checkpoint) -> dict:
    """The sampler's state as the checkpoint holds it (custom_checkpoint_0 is the EMA's, registered first)."""
    return torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)


def _sampler_state(checkpoint, num_timesteps: int = 4) -> LossSecondMomentSampler:
    sampler = LossSecondMomentSampler(num_timesteps)
    sampler.load_state_dict(_saved_state(checkpoint))
    return sampler


def _sha256(sampler: LossSecondMomentSampler) -> str:
    return hashlib.sha256(sampler.flat_state().numpy().tobytes()).hexdigest()


def test_the_warm_up_trains_exactly_like_a_uniform_run(tmp_path):
    """Until every timestep has 10 losses (never, in 2 steps of 16 with T = 20) the run draws what a uniform one
    draws and weights by 1: the same weights to the bit."""
    common = ["--max_train_steps", "2", *TINY, "--ddpm_num_steps", "20", "--loss_type", "vlb"]
    assert main("ddpm", ["--output_dir", str(tmp_path / "uniform"), *common]) == 0
    sampled = [*common, "--timestep_sampler", "loss-second-moment", "--checkpointing_steps", "2"]
    assert main("ddpm", ["--output_dir", str(tmp_path / "sampled"), *sampled]) == 0
    expected, got = _weights(tmp_path / "uniform"), _weights(tmp_path / "sampled")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    sampler = _sampler_state(tmp_path / "sampled" / "checkpoint-2", num_timesteps=20)
    assert not sampler.warm and sampler.counts.sum() == 32  # both steps' losses are in the history


@pytest.mark.slow
def test_a_killed_run_with_the_sampler_resumes_to_the_same_weights_and_sampler_state(tmp_path):
    args = ["--max_train_steps", "8", "--checkpointing_steps", "4", *SAMPLED]
    reference = tmp_path / "reference"
    result = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(reference), *args])
    assert result.returncode == 0, result.stderr[-3000:]
    killed = tmp_path / "killed"
    crashed = run_with_a_crash("after", 4, "train_ddpm.py", ["--output_dir", str(killed), *args])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    at_the_kill = _saved_state(killed / "checkpoint-4")
    assert (at_the_kill["counts"] == HISTORY_LENGTH).all()  # resumed while sampling by the loss:
    assert second_moment_probabilities(at_the_kill["history"]).max() > 0.26  # not uniform

    command = [sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(killed), *args]
    resumed = run_script(command + ["--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    expected, got = _weights(reference), _weights(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    states = [_saved_state(d / "checkpoint-8") for d in (reference, killed)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in ("history", "counts"))
    reports = [json.loads((d / "logs" / "process-0.json").read_text()) for d in (reference, killed)]
    assert reports[0]["timestep_sampler_sha256"] == reports[1]["timestep_sampler_sha256"]
    assert reports[0]["timestep_sampler_sha256"] == _sha256(_sampler_state(reference / "checkpoint-8"))


@pytest.mark.slow
def test_two_gloo_processes_hold_the_same_sampler_state(tmp_path):
    out = tmp_path / "dist"
    result = run_script(
        [*TWO_GLOO_PROCESSES, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), "--max_train_steps", "4",
         "--checkpointing_steps", "4", *SAMPLED]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((out / "logs" / f"process-{i}.json").read_text()) for i in range(2)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in reports)
    assert reports[0]["first_batch_sha256"] != reports[1]["first_batch_sha256"]  # different data, one state:
    assert reports[0]["timestep_sampler_sha256"] == reports[1]["timestep_sampler_sha256"]
    assert reports[0]["parameters_sha256"] == reports[1]["parameters_sha256"]
    assert all(r["timestep_sampler_warm"] for r in reports)  # 4 steps x 2 processes x 16 losses over 4 timesteps
    assert _sha256(_sampler_state(out / "checkpoint-4")) == reports[0]["timestep_sampler_sha256"]


def test_a_bad_sampler_name_is_refused_at_parse_time_with_the_accepted_values(capsys):
    with pytest.raises(SystemExit):
        main("ddpm", ["--timestep_sampler", "importance"])
    err = capsys.readouterr().err
    assert "--timestep_sampler" in err and "'uniform'" in err and "'loss-second-moment'" in err
