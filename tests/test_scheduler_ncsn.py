import json
import math
import re

import numpy as np
import pytest
import torch
from support.gaussian_mixture import GaussianMixture, energy_distance

import hf_ddpm_ncsn.schedulers.scheduling_ncsn as scheduling_ncsn
from hf_ddpm_ncsn import NCSNScheduler
from hf_ddpm_ncsn.ncsnv2 import (
    langevin_step_size,
    langevin_variance_ratio,
    noise_level_ratio,
    num_noise_levels,
    overlap_of_levels,
    sigma_max_from_data,
)


def test_sigmas_are_geometric_and_ordered_by_noise():
    s = NCSNScheduler(num_train_timesteps=5, sigma_min=0.01, sigma_max=1.0)
    expected = 0.01 * (100.0 ** (np.arange(5) / 4))
    np.testing.assert_allclose(s.sigmas.numpy(), expected, rtol=1e-12)
    assert s.init_noise_sigma == 1.0
    assert s.sigmas[0] == pytest.approx(0.01) and s.sigmas[-1] == pytest.approx(1.0)


def test_timesteps_run_the_whole_annealed_chain():
    s = NCSNScheduler(num_train_timesteps=4, num_langevin_steps=3, denoise_final=False)
    assert s.timesteps.tolist() == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert s.timesteps.dtype == torch.long
    s = NCSNScheduler(num_train_timesteps=4, num_langevin_steps=2, denoise_final=True)
    assert s.timesteps.tolist() == [3, 3, 2, 2, 1, 1, 0, 0, 0]
    s.set_timesteps(num_langevin_steps=1)
    assert s.timesteps.tolist() == [3, 2, 1, 0, 0]


def test_fewer_inference_levels_are_a_log_even_subset():
    s = NCSNScheduler(num_train_timesteps=10, num_langevin_steps=1, denoise_final=False)
    s.set_timesteps(num_inference_steps=4)
    assert s.timesteps.tolist() == [9, 6, 3, 0]
    log_sigmas = s.sigmas[s.timesteps].log().numpy()
    np.testing.assert_allclose(np.diff(log_sigmas), np.diff(log_sigmas)[0], rtol=1e-9)
    s.set_timesteps(num_inference_steps=10)
    assert s.timesteps.tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(num_inference_steps=11)


def test_add_noise_and_model_timestep():
    s = NCSNScheduler(num_train_timesteps=3, sigma_min=0.1, sigma_max=0.4)
    x0, noise = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([0, 1, 2])
    expected = x0 + torch.tensor([0.1, 0.2, 0.4]).reshape(3, 1, 1, 1) * noise
    torch.testing.assert_close(s.add_noise(x0, noise, t), expected)
    assert s.model_timestep(t).tolist() == [0, 1, 2]
    torch.testing.assert_close(s.model_timestep(t, "fourier"), torch.tensor([0.1, 0.2, 0.4]))
    assert s.scale_model_input(x0, 1) is x0


def test_step_is_one_langevin_update_against_plain_torch():
    s = NCSNScheduler(num_train_timesteps=5, sigma_min=0.01, sigma_max=1.0, step_size=2e-5, denoise_final=False)
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for prediction_type, score in [("score", out), ("epsilon", -out / s.sigmas[3].item())]:
        s.register_to_config(prediction_type=prediction_type)
        got = s.step(out, 3, x, generator=torch.Generator().manual_seed(7)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        eta = 2e-5 * (s.sigmas[3].item() / 0.01) ** 2
        torch.testing.assert_close(got, x + eta / 2 * score + math.sqrt(eta) * z)


def test_final_entry_is_the_tweedie_denoise():
    s = NCSNScheduler(num_train_timesteps=3, num_langevin_steps=1, sigma_min=0.1, prediction_type="score")
    x = torch.randn(4, 2)
    for t in s.timesteps[:-1]:
        s.step(torch.zeros_like(x), t, x)
    score = torch.randn(4, 2)
    torch.testing.assert_close(s.step(score, s.timesteps[-1], x).prev_sample, x + 0.01 * score)
    assert s.step_index == 0  # a second pass through `timesteps` starts over


def test_same_seed_same_chain():
    s = NCSNScheduler(num_train_timesteps=3, num_langevin_steps=2)
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(0)
        x = s.init_noise_sigma * torch.randn(2, 1, 4, 4, generator=g)
        for t in s.timesteps:
            x = s.step(-x, t, x, generator=g).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert s.step(-x, 0, x, return_dict=False)[0].shape == x.shape


def public_config(obj) -> dict:
    return {k: v for k, v in obj.config.items() if not k.startswith("_")}


def test_config_round_trip(tmp_path):
    s = NCSNScheduler(num_train_timesteps=7, sigma_min=0.02, sigma_max=3.0, prediction_type="score")
    s.save_pretrained(tmp_path)
    loaded = NCSNScheduler.from_pretrained(tmp_path)
    assert public_config(loaded) == public_config(s)
    torch.testing.assert_close(loaded.sigmas, s.sigmas)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma_min": 1.0, "sigma_max": 1.0}, "sigma_min"),
        ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min"),
        ({"sigma_min": -0.1}, "sigma_min"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"num_langevin_steps": 0}, "num_langevin_steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"prediction_type": "v_prediction"}, "prediction_type.*'epsilon', 'score'"),
    ],
)
def test_bad_config_raises_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NCSNScheduler(**kwargs)


def test_bad_time_embedding_type_is_named():
    with pytest.raises(ValueError, match="time_embedding_type.*'fourier'"):
        NCSNScheduler().model_timestep(0, "sinusoidal")


# --- NCSNv2 rules --------------------------------------------------------------------------------------------


def test_sigma_max_is_the_largest_pairwise_distance():
    data = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-1.0, 0.0]])
    assert sigma_max_from_data(data, chunk_size=3) == pytest.approx(math.hypot(4.0, 4.0))


def test_noise_level_rule_matches_the_paper_for_cifar10():
    # NCSNv2 uses 232 levels from sigma 50 to 0.01 on CIFAR-10 (D = 3072), chosen with technique 2
    gamma = noise_level_ratio(3072)
    assert overlap_of_levels(gamma, 3072) == pytest.approx(0.5, abs=1e-9)
    assert abs(num_noise_levels(0.01, 50.0, 3072) - 232) / 232 < 0.1
    with pytest.raises(ValueError, match="data_dim"):
        noise_level_ratio(4)


def test_step_size_rule_matches_the_paper_for_cifar10():
    # NCSNv2 CIFAR-10: 232 levels (gamma = 5000^(1/231)), T = 5 steps per level, eps = 6.2e-6 in its convention
    gamma = 5000.0 ** (1 / 231)
    eps = langevin_step_size(0.01, gamma, 5)
    assert eps / 2 == pytest.approx(6.2e-6, rel=0.02)


def test_variance_ratio_formula_matches_an_exact_langevin_run():
    # point-mass data at 0: the score at level sigma is -x / sigma^2; run the scheduler and compare variances
    sigma_min, gamma, steps = 0.05, 1.5, 20
    eps = langevin_step_size(sigma_min, gamma, steps)
    s = NCSNScheduler(
        num_train_timesteps=2,
        sigma_min=sigma_min,
        sigma_max=sigma_min * gamma,
        num_langevin_steps=steps,
        step_size=eps,
        denoise_final=False,
        prediction_type="score",
    )
    g = torch.Generator().manual_seed(0)
    x = sigma_min * gamma * torch.randn(200_000, dtype=torch.float64, generator=g)
    for t in s.timesteps[steps:]:  # the steps at level 0, started from N(0, sigma_1^2)
        x = s.step(-x / sigma_min**2, t, x, generator=g).prev_sample
    ratio = float(x.var()) / sigma_min**2
    expected = float(langevin_variance_ratio(eps, sigma_min, gamma, steps))
    assert ratio == pytest.approx(expected, rel=0.02)
    # technique 4's eps brings the ratio closest to 1: any other step size ends further away
    for other in (0.5 * eps, 2 * eps):
        assert langevin_variance_ratio(other, sigma_min, gamma, steps) > expected


# --- the whole chain against an analytic target ---------------------------------------------------------------

MIXTURE = GaussianMixture(weights=[0.25, 0.75], means=[[-1.5, -1.5], [1.5, 1.5]], stds=[0.3, 0.3])


def _annealed_samples(prediction_type: str, seed: int = 1, n: int = 1000) -> torch.Tensor:
    num_levels, sigma_min, sigma_max, steps = 20, 0.05, 5.0, 100
    gamma = (sigma_max / sigma_min) ** (1 / (num_levels - 1))
    s = NCSNScheduler(
        num_train_timesteps=num_levels,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        num_langevin_steps=steps,
        step_size=langevin_step_size(sigma_min, gamma, steps),
        prediction_type=prediction_type,
    )
    g = torch.Generator().manual_seed(seed)
    x = s.init_noise_sigma * torch.randn(n, 2, generator=g)
    for t in s.timesteps:
        sigma = float(s.sigmas[t])
        score = MIXTURE.score(x, extra_variance=sigma**2)
        x = s.step(score if prediction_type == "score" else -sigma * score, t, x, generator=g).prev_sample
    return x


def assert_matches_mixture(samples: torch.Tensor, mixture: GaussianMixture) -> None:
    g = torch.Generator().manual_seed(1234)
    n = len(samples)
    null = [energy_distance(mixture.sample(n, g), mixture.sample(n, g)) for _ in range(20)]
    stat = energy_distance(samples, mixture.sample(n, g))
    assert stat < 2 * max(null), f"energy distance {stat:.4f} vs true-vs-true up to {max(null):.4f}"
    fractions = mixture.mode_fractions(samples)
    torch.testing.assert_close(fractions, mixture.weights, atol=0.05, rtol=0)


@pytest.mark.parametrize("prediction_type", ["score", "epsilon"])
def test_annealed_langevin_with_the_exact_score_reproduces_the_mixture(prediction_type):
    assert_matches_mixture(_annealed_samples(prediction_type), MIXTURE)


def test_the_same_check_fails_when_the_langevin_noise_is_dropped(monkeypatch):
    monkeypatch.setattr(scheduling_ncsn, "randn_tensor", lambda shape, **kwargs: torch.zeros(shape))
    with pytest.raises(AssertionError):
        assert_matches_mixture(_annealed_samples("score"), MIXTURE)


# --- input checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma_max": math.inf}, "sigma_max must be a finite number"),
        ({"sigma_min": math.nan}, "sigma_min must be a finite number"),
        ({"step_size": math.inf}, "step_size must be a finite number"),
        ({"denoise_final": "no"}, "denoise_final must be True or False, got 'no'"),
        ({"num_langevin_steps": 2.5}, "num_langevin_steps must be an integer"),
        ({"num_langevin_steps": True}, "num_langevin_steps must be an integer"),
        # a config may not ask for more than the documented bounds (a 232-byte file once took 3.5 GB to load)
        ({"num_langevin_steps": 50_000_000}, "num_langevin_steps must be an integer <= 100000"),
        ({"num_train_timesteps": 10**9}, "num_train_timesteps must be an integer <= 100000"),
        ({"num_train_timesteps": 1000, "num_langevin_steps": 2000}, "at most 1000000 are accepted"),
    ],
)
def test_bad_values_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        NCSNScheduler(**kwargs)


def test_numpy_scalars_are_accepted_and_saved_as_python_numbers(tmp_path):
    s = NCSNScheduler(
        num_train_timesteps=np.int64(5),
        sigma_min=np.float32(0.01),
        sigma_max=np.float64(2.0),
        num_langevin_steps=np.int32(3),
        step_size=np.float32(1e-5),
        denoise_final=np.bool_(False),
    )
    assert type(s.config.num_train_timesteps) is int and type(s.config.sigma_min) is float
    s.set_timesteps(num_inference_steps=np.int64(2), num_langevin_steps=np.int64(1), step_size=np.float32(2e-5))
    assert s.timesteps.tolist() == [4, 0]
    s.save_pretrained(tmp_path)  # JSON has no numpy scalars
    assert NCSNScheduler.from_pretrained(tmp_path).config.sigma_max == 2.0


def test_a_config_file_asking_for_a_huge_chain_is_refused_before_allocating(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "NCSNScheduler", "num_train_timesteps": 10, "num_langevin_steps": 50_000_000})
    )
    with pytest.raises(ValueError, match="num_langevin_steps must be an integer <= 100000"):
        NCSNScheduler.from_pretrained(tmp_path)


def test_one_inference_level_is_the_noisiest_and_the_denoise_uses_it():
    s = NCSNScheduler(
        num_train_timesteps=6, num_langevin_steps=2, sigma_min=0.1, sigma_max=2.0, prediction_type="score"
    )
    s.set_timesteps(num_inference_steps=1)
    assert s.timesteps.tolist() == [5, 5, 5]  # sigma_max: the chain starts at init_noise_sigma, not at sigma_min
    x, score = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), torch.ones(3, 2)
    for t in s.timesteps[:-1]:
        s.step(torch.zeros_like(x), t, x)
    torch.testing.assert_close(s.step(score, s.timesteps[-1], x).prev_sample, x + 2.0**2 * score)


def test_the_final_denoise_of_an_epsilon_model_is_x_minus_sigma_min_eps():
    # Tweedie x + sigma^2 s with s = -eps / sigma: exactly x - sigma_min * eps (a sign or a power of sigma wrong fails)
    s = NCSNScheduler(num_train_timesteps=3, num_langevin_steps=1, sigma_min=0.1, sigma_max=1.0)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    for t in s.timesteps[:-1]:
        s.step(torch.zeros_like(x), t, x)
    torch.testing.assert_close(s.step(eps, s.timesteps[-1], x).prev_sample, x - 0.1 * eps, rtol=1e-15, atol=1e-15)
