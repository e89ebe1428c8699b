import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image
from support.fault_injection import crash_points
from support.tiny_models import tiny_ddpm, tiny_ncsn, tiny_unet

import hf_ddpm_ncsn.evaluation.feature_classifier as feature_classifier_module
import hf_ddpm_ncsn.evaluation.report as evaluation_report
from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNPipeline
from hf_ddpm_ncsn.evaluation import (
    BASELINE_MODELS,
    INCEPTION_MISSING,
    NCSN_HAS_NO_ELBO,
    default_output_dir,
    evaluate,
    format_report,
    generate_samples,
    inception_features,
    likelihood_baselines_report,
    likelihood_report,
    load_inception_extractor,
    load_pipeline,
    model_card_metrics,
    resize_images,
    sample_quality,
    write_outputs,
)
from hf_ddpm_ncsn.evaluation.likelihood_report import ode_likelihood_report
from hf_ddpm_ncsn.evaluation.metrics import feature_statistics, frechet_distance
from hf_ddpm_ncsn.evaluation.sample_quality import (
    baseline_draw_rows,
    baseline_spread,
    classifier_outputs,
    reference_bootstrap,
)
from hf_ddpm_ncsn.feature_classifier import (
    MissingLabelsError,
    TrainingSettings,
    load_images,
    load_or_train_classifier,
    train_classifier,
)
from hf_ddpm_ncsn.likelihood import (
    elbo_bpd,
    histogram_baselines,
    stratified_elbo_bpd,
    stratified_timesteps,
    stratum_bounds,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: one digits classifier for the whole module, in a temporary cache
@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf_ddpm_ncsn_cache")


@pytest.fixture(scope="module")
def classifier(cache_root: Path):
    return load_or_train_classifier(cache_dir=cache_root / "classifiers")


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    train, train_labels = load_images(split="train")
    held_out, _ = load_images(split="test")
    return {"train": train, "train_labels": train_labels, "held_out": held_out}


# ----------------------------------------------------------------------------------------------------------------
# The feature classifier
def test_digits_classifier_is_accurate_and_cached(classifier, cache_root: Path):
    assert classifier.info["held_out_accuracy"] > 0.95
    assert classifier.info["num_train_images"] == 1617 and classifier.info["num_held_out_images"] == 180
    stored = json.loads(Path(classifier.info["cache_file"]).with_suffix(".json").read_text())
    assert stored["held_out_accuracy"] == classifier.info["held_out_accuracy"]
    again = load_or_train_classifier(cache_dir=cache_root / "classifiers")  # from the cache: same weights
    for name, value in classifier.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=0, atol=0)
    images = torch.rand(5, 1, 8, 8)
    assert again.features(images).shape == (5, 64)
    probabilities = again.probabilities(images)
    assert probabilities.shape == (5, 10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="resize them"):
        again.features(torch.rand(2, 1, 16, 16))


def test_classifier_training_is_deterministic_and_scales_features_to_unit_mean_square(digits):
    images, labels = digits["train"][:128], digits["train_labels"][:128]
    settings = TrainingSettings(epochs=1)
    first = train_classifier(images, labels, 10, seed=3, settings=settings)
    second = train_classifier(images, labels, 10, seed=3, settings=settings)
    for name, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name], value, rtol=0, atol=0)
    with torch.no_grad():
        features = first.features(images.float() / 255)
    assert features.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)


def _flat_image_folder(folder: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_a_dataset_without_labels_has_no_classifier_and_says_why(tmp_path: Path):
    folder = _flat_image_folder(tmp_path / "images")
    with pytest.raises(MissingLabelsError, match="no label column.*need labels"):
        load_or_train_classifier(train_data_dir=str(folder), cache_dir=tmp_path / "cache")
    report = evaluate(
        tiny_ncsn(),
        train_data_dir=str(folder),
        num_samples=4,
        batch_size=4,
        sample_kwargs={"num_langevin_steps": 1},
        classifier_cache_dir=tmp_path / "cache",
    )
    assert "need labels" in report["classifier"]["skipped"]
    assert "classifier_frechet_distance" not in report["sample_quality"]
    assert "nearest_train_distance" in report["sample_quality"]
    assert "need labels" in format_report(report)


# ----------------------------------------------------------------------------------------------------------------
# Sample quality against known cases: real data scores like the baseline, noise does not
def _noise(count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_real_images_score_like_the_baseline_and_noise_far_from_it(classifier, digits):
    rows = np.random.default_rng(0).permutation(len(digits["train"]))
    real, baseline, rest = (digits["train"][np.sort(rows[a:b])] for a, b in ((0, 180), (180, 360), (360, None)))
    held_out = digits["held_out"]
    as_real = sample_quality(real, held_out, baseline, classifier, train=rest)
    as_noise = sample_quality(_noise(180), held_out, baseline, classifier, train=rest)

    fd_baseline = as_real["classifier_frechet_distance_real_baseline"]
    assert fd_baseline == as_noise["classifier_frechet_distance_real_baseline"] > 0
    assert as_real["classifier_frechet_distance"] < 2 * fd_baseline
    assert as_noise["classifier_frechet_distance"] > 10 * fd_baseline

    kid_gap = abs(as_real["classifier_kid"] - as_real["classifier_kid_real_baseline"])
    assert kid_gap < 0.05
    assert as_noise["classifier_kid"] > 10 * kid_gap + 0.5

    assert as_real["class_coverage_real_baseline"] > 0.98
    assert abs(as_real["class_coverage"] - as_real["class_coverage_real_baseline"]) < 0.02
    assert as_noise["class_coverage"] < as_real["class_coverage_real_baseline"] - 0.05

    # memorisation: new real images sit as far from the training set as held-out ones, copies at 0
    assert 0.8 < as_real["nearest_train_distance"]["ratio"]["median"] < 1.25
    assert as_noise["nearest_train_distance"]["ratio"]["median"] > 2
    copies = sample_quality(rest[:50], held_out, baseline, train=rest)
    assert copies["nearest_train_distance"]["samples"]["median"] == 0.0
    assert copies["nearest_train_distance"]["ratio"]["median"] == 0.0


def test_samples_of_another_size_are_resized_for_the_classifier(classifier, digits):
    # as in evaluate(): samples and real images at the pipeline's 16 px, all resized alike to the classifier's 8 px
    def upscaled(images: torch.Tensor) -> torch.Tensor:
        return resize_images(images.float(), 16).round().clamp(0, 255).to(torch.uint8)

    real, baseline, held_out = (
        upscaled(x) for x in (digits["train"][:180], digits["train"][180:360], digits["held_out"])
    )
    as_real = sample_quality(real, held_out, baseline, classifier)
    as_noise = sample_quality(upscaled(_noise(180)), held_out, baseline, classifier)
    fd_baseline = as_real["classifier_frechet_distance_real_baseline"]
    assert as_real["classifier_frechet_distance"] < 2 * fd_baseline < as_noise["classifier_frechet_distance"] / 5
    flat = torch.full((2, 3, 20, 20), 0.25)
    torch.testing.assert_close(resize_images(flat, 8), torch.full((2, 3, 8, 8), 0.25))


# ----------------------------------------------------------------------------------------------------------------
# How sure the sample metrics are: the baseline over several draws of real images, the held-out reference's bootstrap
def test_baseline_draw_0_is_the_single_draw_of_before_and_every_draw_is_distinct_training_images():
    for num_train, num_samples, num_draws, seed in [
        (1617, 500, 3, 0),
        (1617, 500, 5, 3),
        (10, 10, 4, 1),
        (7, 10, 3, 0),
    ]:
        rows = baseline_draw_rows(num_train, num_samples, num_draws, seed)
        # the expression the evaluation used before there were draws
        before = np.sort(np.random.default_rng(seed).permutation(num_train)[:num_samples])
        np.testing.assert_array_equal(rows[0], before)
        assert len(rows) == num_draws
        for draw in rows:
            assert len(draw) == len(np.unique(draw)) == min(num_samples, num_train)
            assert draw.min() >= 0 and draw.max() < num_train
    disjoint = baseline_draw_rows(1617, 500, 3, 0)  # room for 3 x 500: no image in two draws
    assert len(np.unique(np.concatenate(disjoint))) == 1500
    overlapping = baseline_draw_rows(1617, 500, 5, 0)  # no room: independent draws, not copies of draw 0
    assert len({draw.tobytes() for draw in overlapping}) == 5
    # each draw is a uniform subset: a row is in a draw with probability num_samples / num_train = 1/4
    many = baseline_draw_rows(20, 5, 2001, 0)[1:]
    inclusion = np.bincount(np.concatenate(many), minlength=20) / len(many)
    assert np.abs(inclusion - 0.25).max() < 0.05  # 5 binomial standard deviations (0.0097)


def test_every_draw_of_a_training_set_of_exactly_num_samples_images_is_that_set(classifier, digits):
    # 40 training images and 40 samples: every draw is the whole training set, so the draws cannot spread at all
    train, samples = digits["train"][:40], digits["train"][40:80]
    baseline = train[baseline_draw_rows(40, 40, 1, 0)[0]]
    quality = sample_quality(
        samples, digits["held_out"], baseline, classifier, train=train, baseline_draws=4, reference_bootstraps=5
    )
    draws, fd_baseline = (
        quality["classifier_real_baseline_draws"],
        quality["classifier_frechet_distance_real_baseline"],
    )
    assert draws["num_draws"] == 4
    assert draws["frechet_distance"] == [fd_baseline] * 4
    assert draws["kid"] == [quality["classifier_kid_real_baseline"]] * 4
    assert quality["classifier_frechet_distance_real_baseline_mean"] == fd_baseline
    assert quality["classifier_frechet_distance_real_baseline_std"] == 0.0
    assert draws["kid_std"] == draws["class_coverage_std"] == 0.0
    assert quality["classifier_frechet_distance_ratio"] == quality["classifier_frechet_distance"] / fd_baseline
    assert quality["classifier_frechet_distance_ratio_std"] == 0.0
    assert quality["classifier_reference_bootstrap"]["num_held_out_images"] == 180


def test_baseline_draws_leave_draw_0_and_the_samples_numbers_as_they_were(classifier, digits):
    train, held_out = digits["train"], digits["held_out"]
    baseline = train[baseline_draw_rows(len(train), 100, 1, 0)[0]]
    samples = train[baseline_draw_rows(len(train), 100, 1, 9)[0]]
    one = sample_quality(samples, held_out, baseline, classifier, train=train)
    five = sample_quality(
        samples, held_out, baseline, classifier, train=train, baseline_draws=5, reference_bootstraps=20
    )
    fd = "classifier_frechet_distance"
    new_keys = {f"{fd}_{name}" for name in ("real_baseline_mean", "real_baseline_std", "ratio", "ratio_std")}
    new_keys |= {"classifier_real_baseline_draws", "classifier_reference_bootstrap"}
    assert new_keys <= set(one) == set(five)
    for key in set(one) - new_keys:
        assert five[key] == one[key], key  # to the bit
    # the single-draw Fréchet distance of before, from the features directly
    features = {name: classifier_outputs(classifier, x)[0] for name, x in (("base", baseline), ("ref", held_out))}
    before = frechet_distance(*feature_statistics(features["base"]), *feature_statistics(features["ref"]))
    assert five["classifier_frechet_distance_real_baseline"] == before
    assert five["classifier_real_baseline_draws"]["frechet_distance"][0] == before
    assert five["classifier_frechet_distance_real_baseline_std"] > 0  # 100 of 1617 images: the draws do differ
    assert one["classifier_frechet_distance_real_baseline_std"] is None  # one draw has no spread
    assert one["classifier_frechet_distance_ratio"] == one["classifier_frechet_distance"] / before
    with pytest.raises(ValueError, match="baseline_draws=2 needs the training images"):
        sample_quality(samples, held_out, baseline, classifier, baseline_draws=2)


def _chi_moment(order: int, dof: int) -> float:
    """E[s^order] for s = sqrt(chi2_dof / dof), the sample standard deviation of dof + 1 unit Gaussians."""
    return math.exp(math.lgamma((dof + order) / 2) - math.lgamma(dof / 2)) * (2 / dof) ** (order / 2)


def test_baseline_draws_of_gaussian_features_spread_as_the_frechet_distance_of_a_finite_sample_does():
    # 1-D features, a reference with exactly mean 0 and variance 1: a draw of n unit Gaussians has Fréchet distance
    # m^2 + (s - 1)^2 with m ~ N(0, 1/n) independent of s (the sample std, ddof 1, as the covariance), so
    # E = 1/n + 2 - 2 E[s] and Var = 2/n^2 + E(s - 1)^4 - (E(s - 1)^2)^2, with E[s^k] the chi moments
    rng = np.random.default_rng(0)
    n, num_draws = 50, 2000
    reference = rng.normal(size=(300, 1))
    reference = (reference - reference.mean()) / reference.std(ddof=1)
    draws = [rng.normal(size=(n, 1)) for _ in range(num_draws)]
    spread = baseline_spread(rng.normal(0.5, 1, size=(n, 1)), reference, draws, kid_subsets=1, kid_subset_size=10)
    s1, s3, s4 = (_chi_moment(k, n - 1) for k in (1, 3, 4))
    second = 2 - 2 * s1  # E(s - 1)^2
    fourth = s4 - 4 * s3 + 6 - 4 * s1 + 1  # E(s - 1)^4
    mean, std = 1 / n + second, math.sqrt(2 / n**2 + fourth - second**2)
    assert spread["frechet_distance_real_baseline_mean"] == pytest.approx(mean, abs=4 * std / math.sqrt(num_draws))
    assert spread["frechet_distance_real_baseline_std"] == pytest.approx(std, rel=0.15)  # its standard error: ~4%
    assert spread["real_baseline_draws"]["num_draws"] == num_draws
    assert spread["reference_bootstrap"] == {"num_held_out_images": 300, "resamples": 0}


def test_the_reference_bootstrap_spreads_the_frechet_distance_as_the_reference_mean_does():
    # samples far from the reference (their mean d = 3 away): FD = (d - e)^2 + (a covariance term of order 1/M), e
    # the resampled reference mean's deviation, of variance v = population variance / M exactly; so the bootstrap
    # standard deviation of FD is 2 |d| sqrt(v) to first order
    rng = np.random.default_rng(1)
    count = 400
    reference = rng.normal(size=(count, 1))
    samples, draw = rng.normal(3.0, 1.0, size=(2000, 1)), rng.normal(size=(2000, 1))
    statistics = [feature_statistics(x) for x in (samples, draw)]
    section = reference_bootstrap(statistics[0], statistics[1:], reference, resamples=400, seed=0)
    d = samples.mean() - reference.mean()
    expected = 2 * abs(d) * reference.std() / math.sqrt(count)
    assert section["num_held_out_images"] == count and section["resamples"] == 400
    assert section["frechet_distance_std"] == pytest.approx(expected, rel=0.12)  # standard error of the std: ~4%
    # identical reference images: every resample is the same set, nothing to spread
    same = reference_bootstrap(statistics[0], statistics[1:], np.ones((count, 1)), resamples=10, seed=0)
    assert same["frechet_distance_std"] == same["frechet_distance_real_baseline_std"] == 0.0
    assert reference_bootstrap(statistics[0], statistics[1:], reference, resamples=0) == {
        "num_held_out_images": count,
        "resamples": 0,
    }


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"baseline_draws": 0}, "baseline_draws must be an integer >= 1, got 0"),
        ({"baseline_draws": -3}, "baseline_draws must be an integer >= 1, got -3"),
        ({"baseline_draws": 2.5}, "baseline_draws must be an integer >= 1, got 2.5"),
        ({"baseline_draws": True}, "baseline_draws must be an integer >= 1, got True"),
        ({"baseline_draws": "5"}, "baseline_draws must be an integer >= 1, got '5'"),
        ({"reference_bootstraps": -1}, "reference_bootstraps must be an integer >= 0, got -1"),
    ],
)
def test_a_bad_number_of_baseline_draws_or_bootstraps_is_refused_before_any_work(monkeypatch, arguments, match):
    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the arguments were checked")

    for name in ("load_pipeline", "load_images", "load_or_train_classifier", "generate_samples", "sample_quality"):
        monkeypatch.setattr(evaluation_report, name, expensive)
    with pytest.raises(ValueError, match=re.escape(match)):
        evaluate(tiny_ncsn(), num_samples=4, batch_size=4, **arguments)


def test_evaluate_loads_every_split_with_the_dataset_configuration_and_cache(tmp_path, monkeypatch, digits):
    """`dataset_config_name` and `dataset_cache_dir` (the CLI's --dataset_config_name, --cache_dir) reach the
    held-out, training and classifier loads, and the report names the configuration."""
    calls, real = [], feature_classifier_module.load_image_dataset

    def recording(dataset_name=None, dataset_config_name=None, train_data_dir=None, image_column=None, split="train",
                  cache_dir=None, **kwargs):  # fmt: skip
        calls.append((dataset_name, dataset_config_name, cache_dir, split))
        return real(train_data_dir=train_data_dir, image_column=image_column, split=split)  # the digits

    monkeypatch.setattr(feature_classifier_module, "load_image_dataset", recording)
    report = evaluate(
        tiny_ncsn(), dataset_name="some/dataset", dataset_config_name="small", dataset_cache_dir=str(tmp_path / "hf"),
        num_samples=8, batch_size=8, sample_kwargs={"num_langevin_steps": 1}, ode_likelihood=False,
        baseline_draws=1, reference_bootstraps=0, classifier_cache_dir=tmp_path / "classifiers",
    )  # fmt: skip
    assert report["dataset_config_name"] == "small"
    assert {call[:3] for call in calls} == {("some/dataset", "small", str(tmp_path / "hf"))}
    assert {call[3] for call in calls} == {"train", "test"}
    assert len(calls) == 4  # held-out and train for the evaluation, the same two for the classifier


def test_evaluate_puts_a_loaded_pipeline_on_the_device_and_leaves_a_given_one_where_it_is(
    tmp_path, monkeypatch, cache_root
):
    """A loaded pipeline goes to `device` (default: the process's accelerate device, the CPU here); a pipeline
    object is moved only when `device` is given. The report names the device the networks ran on."""
    moved, original = [], NCSNPipeline.to

    def recording(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NCSNPipeline, "to", recording)
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    kwargs = {"num_samples": 8, "batch_size": 8, "sample_kwargs": {"num_langevin_steps": 1}, "ode_likelihood": False}
    kwargs.update(baseline_draws=1, reference_bootstraps=0, classifier_cache_dir=cache_root / "classifiers")
    for device, expected in ((None, torch.device("cpu")), ("cpu", torch.device("cpu"))):
        moved.clear()
        report = evaluate(str(tmp_path / "pipe"), device=device, output_dir=tmp_path / "eval", **kwargs)
        assert moved == [expected] and report["device"] == "cpu"
    moved.clear()
    evaluate(tiny_ncsn(), **kwargs)
    assert moved == []
    with pytest.raises(ValueError, match="device 'cuda:64': this machine has"):
        evaluate(tiny_ncsn(), device="cuda:64", **kwargs)


def test_evaluate_reports_the_baseline_over_its_draws_and_prints_the_ratio(cache_root: Path, digits):
    kwargs = {"num_samples": 8, "batch_size": 8, "sample_kwargs": {"num_langevin_steps": 1}, "ode_likelihood": False}
    kwargs["classifier_cache_dir"] = cache_root / "classifiers"
    single = evaluate(tiny_ncsn(), baseline_draws=1, reference_bootstraps=0, **kwargs)
    report = evaluate(tiny_ncsn(), baseline_draws=3, reference_bootstraps=10, **kwargs)
    quality, metrics = report["sample_quality"], report["model_card_metrics"]
    for key in (
        "classifier_frechet_distance",
        "classifier_frechet_distance_real_baseline",
        "classifier_kid_real_baseline",
    ):
        assert quality[key] == single["sample_quality"][key]  # draw 0 is the baseline of before
    draws = quality["classifier_real_baseline_draws"]
    assert (
        draws["num_draws"] == 3
        and draws["frechet_distance"][0] == quality["classifier_frechet_distance_real_baseline"]
    )
    assert quality["classifier_frechet_distance_real_baseline_mean"] == pytest.approx(
        np.mean(draws["frechet_distance"])
    )
    assert quality["classifier_reference_bootstrap"]["num_held_out_images"] == 180
    assert metrics["classifier_frechet_distance_ratio"] == quality["classifier_frechet_distance_ratio"]
    assert (
        metrics["classifier_frechet_distance_real_baseline_std"]
        == quality["classifier_frechet_distance_real_baseline_std"]
    )
    assert "classifier_frechet_distance_real_baseline_std" not in single["model_card_metrics"]  # one draw: no spread
    table = format_report(report)
    assert "(draw 0 of 3)" in table.splitlines()[0]
    ratio_row = next(line for line in table.splitlines() if line.startswith("  ratio to the baseline mean (3 draws"))
    assert f"{quality['classifier_frechet_distance_ratio']:.4g} ± " in ratio_row
    assert f"{quality['classifier_frechet_distance_real_baseline_mean']:.4g} ± " in ratio_row
    assert "  ± from the 180 held-out images (bootstrap, 10 resamples; ratio ± " in table
    assert "  ratio to the baseline (1 draw)  " in format_report(single)
    assert "bootstrap" not in format_report(single)


# ----------------------------------------------------------------------------------------------------------------
# The stratified ELBO estimator
def _biased_model(x0_single: torch.Tensor, delta: float = 0.05):
    # prediction_type="sample" predicting x_0 + delta, clip off: every term is a deterministic function of t
    def model(x_t, t):
        return (x0_single + delta).expand(len(t), -1, -1, -1)

    return model


def _one_image() -> torch.Tensor:
    return torch.randint(32, 224, (1, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1


def _sample_scheduler(num_train_timesteps: int) -> DDPMPosteriorScheduler:
    return DDPMPosteriorScheduler(num_train_timesteps=num_train_timesteps, prediction_type="sample", clip_sample=False)


def test_strata_cover_the_timesteps_and_each_draw_stays_in_its_stratum():
    assert stratum_bounds(10, 3, spacing="linear").tolist() == [0, 3, 6, 10]
    assert stratum_bounds(20, 5).tolist() == [0, 1, 2, 4, 9, 20]  # t = 0 alone, then geometric: 20^(k/4)
    assert stratum_bounds(7, 6).tolist() == [0, 1, 2, 3, 4, 5, 7]  # every stratum keeps at least one timestep
    for spacing in ("log", "linear"):
        assert stratum_bounds(12, 12, spacing).tolist() == list(range(13))
        bounds = stratum_bounds(10, 3, spacing)
        generator = torch.Generator().manual_seed(0)
        timesteps, sizes = stratified_timesteps(500, 10, 3, generator=generator, spacing=spacing)
        assert sizes.tolist() == (bounds[1:] - bounds[:-1]).tolist()
        for k in range(3):
            assert set(timesteps[:, k].tolist()) == set(range(bounds[k], bounds[k + 1]))
    with pytest.raises(ValueError, match="num_strata"):
        stratum_bounds(10, 11)
    with pytest.raises(ValueError, match="spacing"):
        stratum_bounds(10, 3, spacing="cosine")


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_stratified_estimate_with_one_timestep_per_stratum_is_the_full_sum(spacing):
    scheduler = _sample_scheduler(30)
    x0 = _one_image().expand(3, -1, -1, -1)
    model = _biased_model(x0[:1])
    full = elbo_bpd(model, scheduler, x0, generator=torch.Generator().manual_seed(0))
    estimate = stratified_elbo_bpd(
        model, scheduler, x0, 30, generator=torch.Generator().manual_seed(1), batch_size=7, spacing=spacing
    )
    assert (estimate.timesteps == torch.arange(30)).all()
    torch.testing.assert_close(estimate.bits_per_dim, full.bits_per_dim.double(), rtol=1e-6, atol=0)


def _draws(model, scheduler, x0, num_strata: int, spacing: str, seed: int, count: int = 4000) -> torch.Tensor:
    # independent draws of the estimate: copies of one image, each with its own stratified timesteps
    return stratified_elbo_bpd(
        model,
        scheduler,
        x0.expand(count, -1, -1, -1),
        num_strata,
        generator=torch.Generator().manual_seed(seed),
        batch_size=count,
        spacing=spacing,
    ).bits_per_dim


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_stratified_estimate_is_unbiased(spacing):
    scheduler = _sample_scheduler(40)
    x0 = _one_image()
    model = _biased_model(x0)
    full = elbo_bpd(model, scheduler, x0, generator=torch.Generator().manual_seed(0)).bits_per_dim.item()
    draws = _draws(model, scheduler, x0, 5, spacing, seed=2)
    stderr = draws.std().item() / math.sqrt(len(draws))
    assert stderr > 0  # the draws differ: the test has power
    assert abs(draws.mean().item() - full) < 4 * stderr


def test_stratification_beats_uniform_timesteps_and_log_strata_beat_equal_ones():
    scheduler = _sample_scheduler(40)
    x0 = _one_image()
    model = _biased_model(x0)
    # K = 1 is one uniform timestep: averaging 5 of them has a fifth of its variance, at the cost of K = 5
    uniform = _draws(model, scheduler, x0, 1, "linear", seed=3)
    linear, log = (_draws(model, scheduler, x0, 5, spacing, seed=4) for spacing in ("linear", "log"))
    assert linear.var() < uniform.var() / 5
    assert log.var() < linear.var() / 10


def test_ode_likelihood_report_is_the_pipelines_ode_on_its_own_noise():
    """Mean and standard error over images of `ode_likelihood` with seed + 2 (the ELBO's noise is seed's, the
    stratified estimate's seed + 1), batch k of `batch_size` images from seed + 2 + k 2^32 (the evaluation's
    chunks), with the solver settings it states."""
    pipe = tiny_ddpm()
    images = torch.randint(0, 256, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    report = ode_likelihood_report(pipe, images, num_probes=2, rtol=1e-4, atol=1e-4, batch_size=2, seed=5)
    direct = [
        pipe.ode_likelihood(
            images[2 * k : 2 * k + 2],
            generator=torch.Generator().manual_seed(7 + k * 2**32),
            num_probes=2,
            rtol=1e-4,
            atol=1e-4,
        )
        for k in range(2)
    ]
    bits = torch.cat([out.bits_per_dim for out in direct]).double()
    assert report["bits_per_dim"] == pytest.approx(bits.mean().item(), rel=1e-12)
    assert report["bits_per_dim_stderr"] == pytest.approx(bits.std().item() / 2, rel=1e-12)
    prior = torch.cat([out.prior_bits_per_dim for out in direct]).double().mean().item()
    assert report["prior_bpd"] == pytest.approx(prior, rel=1e-12)
    assert (report["nfe"], report["num_images"], report["num_probes"], report["rtol"]) == (
        sum(out.nfe for out in direct),
        4,
        2,
        1e-4,
    )
    with pytest.raises(ValueError, match="ode_probes"):
        evaluate("no/such-repo", ode_probes=0)  # refused before anything is loaded
    with pytest.raises(ValueError, match="ode_rtol"):
        evaluate("no/such-repo", ode_rtol=0.0)


def test_likelihood_report_agrees_with_its_stratified_estimate():
    pipe = tiny_ddpm(num_train_timesteps=12)
    images = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    report = likelihood_report(pipe, images, num_strata=4, batch_size=64)
    stratified = report["stratified"]
    assert len(report["terms_mean_per_timestep"]) == 12
    assert report["bits_per_dim"] == pytest.approx(
        sum(report["terms_mean_per_timestep"]) + report["prior_bpd"], rel=1e-5
    )
    assert abs(stratified["difference_from_full"]) < 4 * stratified["difference_stderr"]
    assert stratified["unet_evaluations"] == 16 * 4 and stratified["unet_evaluations_saved"] == 16 * 8
    assert stratified["spacing"] == "log"


# ----------------------------------------------------------------------------------------------------------------
# The likelihood's reference models, in the report and the printed table
BASELINE_ROWS = (
    "bits_per_dim reference: per-pixel histogram, add-0.01",
    "bits_per_dim reference: per-pixel histogram, add-one",
    "bits_per_dim reference: shared histogram, add-0.01",
    "bits_per_dim reference: uniform over the 17 levels",
)


def _table_value(table: str, metric: str) -> str:
    line = next(line for line in table.splitlines() if line.startswith(metric + " "))
    return re.split(r"\s{2,}", line)[1]


def test_the_reference_models_are_reported_with_their_smoothing_and_printed_beside_every_bits_per_dim():
    # training images (0, 255), (0, 0); the held-out image (7, 7) was never seen anywhere, so every model gives it
    # the probability alpha / denominator per pixel: per-pixel (N + 256 alpha), shared (N D + 256 alpha)
    train = torch.tensor([[0, 255], [0, 0]], dtype=torch.uint8).view(2, 1, 1, 2)
    held_out = torch.tensor([[7, 7]], dtype=torch.uint8).view(1, 1, 1, 2)
    section = likelihood_baselines_report(train, held_out)
    assert section["num_train_images"] == 2 and section["num_images"] == 1
    assert section["per_pixel_histogram"]["smoothing"] == 0.01
    assert section["per_pixel_histogram"]["bits_per_dim"] == pytest.approx(math.log2(4.56 / 0.01), rel=1e-13)
    assert section["per_pixel_histogram_add_one"]["smoothing"] == 1.0
    assert section["per_pixel_histogram_add_one"]["bits_per_dim"] == pytest.approx(math.log2(258), rel=1e-13)
    assert section["shared_histogram"]["smoothing"] == 0.01
    assert section["shared_histogram"]["bits_per_dim"] == pytest.approx(math.log2(6.56 / 0.01), rel=1e-13)
    assert section["uniform_over_levels"] == {
        "num_levels": 3,
        "bits_per_dim": math.log2(3),
        "bits_per_dim_stderr": None,
    }
    assert "alpha = 0.01 (add-one: alpha = 1)" in section["description"]
    assert "3 grey levels that occur in the training split or the held-out images" in section["description"]

    ddpm = {"likelihood": {"num_images": 1, "num_timesteps": 4, "bits_per_dim": 5.5, "bits_per_dim_stderr": None}}
    ncsn = {"likelihood": {"skipped": NCSN_HAS_NO_ELBO}}
    for report in (ddpm, ncsn):  # a model without a bits/dim still gets the references
        table = format_report({**report, "likelihood_baselines": section})
        values = [_table_value(table, row.replace("17", "3")) for row in BASELINE_ROWS]
        assert values == [f"{math.log2(456):.4g}", f"{math.log2(258):.4g}", f"{math.log2(656):.4g}", "1.585"]
        assert f"note: {section['description']}" in table.splitlines()
        metrics = model_card_metrics({**report, "likelihood_baselines": section})
        assert metrics["bits_per_dim_baseline_per_pixel_histogram"] == section["per_pixel_histogram"]["bits_per_dim"]
        assert {
            "bits_per_dim_baseline_per_pixel_histogram_add_one",
            "bits_per_dim_baseline_shared_histogram",
            "bits_per_dim_baseline_uniform_over_levels",
        } <= set(metrics)
    # the references follow the model's bits/dim directly
    names = [line.split("  ")[0] for line in format_report({**ddpm, "likelihood_baselines": section}).splitlines()]
    first = names.index("bits_per_dim (full ELBO, 1 held-out images, T=4)")
    assert names[first + 1 : first + 5] == [row.replace("17", "3") for row in BASELINE_ROWS]


# ----------------------------------------------------------------------------------------------------------------
# evaluate(): loading, outputs, Inception plumbing
def test_a_diffusers_ddpm_pipeline_folder_is_evaluated_with_its_elbo(tmp_path: Path, cache_root: Path, digits):
    folder = tmp_path / "diffusers-ddpm"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=8)).save_pretrained(folder)
    report = evaluate(
        str(folder),
        num_samples=8,
        num_elbo_images=6,
        elbo_strata=2,
        batch_size=64,
        classifier_cache_dir=cache_root / "classifiers",
    )
    assert report["pipeline_class"] == "DDPMPosteriorPipeline"
    assert report["likelihood"]["num_images"] == 6 and math.isfinite(report["likelihood"]["bits_per_dim"])
    assert report["files"]["report"] == str(folder / "eval" / "report.json")
    assert {"report", "samples", "elbo_terms"} <= set(report["files"])
    assert all(isinstance(v, float) for v in report["model_card_metrics"].values())
    assert {"bits_per_dim", "classifier_frechet_distance", "classifier_frechet_distance_real_baseline"} <= set(
        report["model_card_metrics"]
    )
    # the reference models: fitted on the training split, measured on the ELBO's 6 held-out images
    baselines = report["likelihood_baselines"]
    assert baselines["num_images"] == 6 and baselines["num_train_images"] == len(digits["train"]) == 1617
    fitted = histogram_baselines(digits["train"], digits["held_out"][:6], smoothing=0.01)
    add_one = histogram_baselines(digits["train"], digits["held_out"][:6], smoothing=1.0)
    for name, expected in [
        ("per_pixel_histogram", fitted.per_pixel),
        ("per_pixel_histogram_add_one", add_one.per_pixel),
        ("shared_histogram", fitted.shared),
        ("uniform_over_levels", fitted.uniform),
    ]:
        assert baselines[name]["bits_per_dim"] == pytest.approx(expected.mean().item(), rel=1e-12)
        assert report["model_card_metrics"][f"bits_per_dim_baseline_{name}"] == baselines[name]["bits_per_dim"]
    assert baselines["uniform_over_levels"]["num_levels"] == 17
    with pytest.raises(TypeError, match="DDPMPipeline folder loads"):
        load_pipeline(DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=8)))


def test_a_hub_repo_id_is_downloaded_and_evaluated(hub_cache: Path, tmp_path: Path, cache_root: Path):
    repo_id = "test-user/evaluate-tiny-ddpm"
    tiny_ddpm(num_train_timesteps=6).push_to_hub(repo_id, token="hf_local_test_token", num_grid_images=0)
    assert default_output_dir(repo_id) == "eval-evaluate-tiny-ddpm"
    report = evaluate(
        repo_id,
        num_samples=4,
        num_elbo_images=4,
        elbo_strata=2,
        batch_size=16,
        output_dir=tmp_path / "out",
        classifier_cache_dir=cache_root / "classifiers",
    )
    assert report["pipeline"] == repo_id and report["pipeline_class"] == "DDPMPosteriorPipeline"
    assert (tmp_path / "out" / "report.json").is_file()
    with pytest.raises(OSError, match="not a local folder, and fetching it as a Hub repo id failed"):
        load_pipeline("test-user/no-such-repo")


def test_unknown_sampling_arguments_are_refused():
    with pytest.raises(ValueError, match="does not take \\['num_langevn_steps'\\]"):
        generate_samples(tiny_ddpm(num_train_timesteps=4), 2, 2, num_langevn_steps=3)


@pytest.mark.parametrize(
    "make, sample_kwargs, match",
    [
        (tiny_ddpm, {"num_langevn_steps": 3}, "does not take \\['num_langevn_steps'\\]"),
        (tiny_ddpm, {"num_langevin_steps": 3}, "num_langevin_steps=3 applies to sampler='langevin', not to"),
        (tiny_ncsn, {"sampler": "pc", "snr": 0}, "snr must be a finite number"),
        (tiny_ddpm, {"num_inference_steps": 50}, "cannot exceed num_train_timesteps=20"),
        (tiny_ncsn, {"num_inference_steps": 9}, "cannot exceed the 4 trained noise levels"),
        (tiny_ncsn, {"num_langevin_steps": 0}, "num_langevin_steps must be an integer >= 1"),
    ],
)
def test_bad_sampling_arguments_are_refused_before_the_data_the_classifier_or_the_elbo(
    monkeypatch, make, sample_kwargs, match
):
    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the arguments were checked")

    for name in ("load_images", "load_or_train_classifier", "likelihood_report", "generate_samples"):
        monkeypatch.setattr(evaluation_report, name, expensive)  # where evaluate() looks them up
    with pytest.raises(ValueError, match=match):
        evaluate(make(), num_samples=4, batch_size=4, sample_kwargs=sample_kwargs)


def test_the_script_reports_a_refused_argument_without_a_traceback(tmp_path: Path):
    tiny_ddpm().save_pretrained(tmp_path / "pipe")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--pipeline", str(tmp_path / "pipe"), "--num_inference_steps", "50"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 1
    assert "error: num_inference_steps=50 cannot exceed num_train_timesteps=20" in result.stderr
    assert "Traceback" not in result.stderr


class _PooledProjection(torch.nn.Module):
    """Stands in for Inception: average pooling to 4x4 and a fixed linear map to 16 features."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(48, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1) @ self.weight


class _TinyExtractor(_PooledProjection):
    """Checks the input convention first: 3 channels, 299 x 299, values in [0, 255]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        assert float(x.max()) <= 255.0 and float(x.min()) >= 0.0
        return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1) @ self.weight


class _ExtractorWithLogits(_PooledProjection):
    """Like NVIDIA's Inception port: logits by default, features with return_features=True."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1) @ self.weight
        return features if return_features else features[:, :5]


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated but still the format
        torch.jit.script(module).save(str(path))
    return path


def test_inception_numbers_come_from_a_local_torchscript_extractor(tmp_path: Path, cache_root: Path):
    plain = _script(_TinyExtractor(), tmp_path / "tiny.pt")
    report = evaluate(
        tiny_ncsn(),
        num_samples=8,
        batch_size=8,
        inception_weights=str(plain),
        sample_kwargs={"num_langevin_steps": 1},
        classifier_cache_dir=cache_root / "classifiers",
    )
    inception = report["inception"]
    assert inception["feature_extractor"] == str(plain)
    assert inception["fid"] > inception["fid_real_baseline"] > 0
    assert {"kid", "kid_real_baseline"} <= set(inception)
    assert report["model_card_metrics"]["inception_fid"] == inception["fid"]
    assert re.search(r"^inception_fid\s+\S+\s+\S+$", format_report(report), flags=re.M)
    assert "files" not in report  # a pipeline object and no output_dir: nothing is written

    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert inception_features(load_inception_extractor(plain), images).shape == (3, 16)
    with_logits = load_inception_extractor(_script(_ExtractorWithLogits(), tmp_path / "logits.pt"))
    assert inception_features(with_logits, images).shape == (3, 16)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(_PooledProjection(), (torch.rand(2, 3, 299, 299),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, tmp_path / "tiny.pt2")
    np.testing.assert_allclose(
        inception_features(load_inception_extractor(tmp_path / "tiny.pt2"), images),
        inception_features(load_inception_extractor(plain), images),
        rtol=1e-5,
    )


def test_a_missing_inception_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="inception_weights=.*nope.pt"):
        evaluate(tiny_ncsn(), num_samples=2, inception_weights=missing)
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--pipeline", str(tmp_path), "--inception_weights", missing])
    assert exit_info.value.code == 2
    assert "--pipeline" in capsys.readouterr().err  # tmp_path has no model_index.json: the first error
    folder = tmp_path / "pipe"
    tiny_ncsn().save_pretrained(folder)
    with pytest.raises(SystemExit):
        script.parse_args(["--pipeline", str(folder), "--inception_weights", missing])
    assert "argument --inception_weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--pipeline", str(folder), "--num_samples", "0"])
    assert "argument --num_samples" in capsys.readouterr().err


def test_a_crash_while_writing_the_outputs_leaves_only_complete_files(tmp_path: Path):
    report = {"likelihood": {"terms_mean_per_timestep": [2.0, 0.5, 0.1, 0.02]}, "seed": 0}
    samples = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    write_outputs(report, samples, tmp_path / "reference")
    complete = {path.name: path.read_bytes() for path in (tmp_path / "reference").iterdir()}
    assert set(complete) == {"report.json", "samples.png", "elbo_terms.png"}
    folder = tmp_path / "eval"

    def setup() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    for at in crash_points(setup, lambda: write_outputs(report, samples, folder)):
        left = {path.name: path.read_bytes() for path in folder.iterdir()} if folder.is_dir() else {}
        # report.json is written last: when it is there, every file it names is complete
        assert all(complete[name] == content for name, content in left.items()), (at, sorted(left))
        assert "report.json" not in left or set(left) == set(complete)


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--num_samples", "2", "--nmu_samples", "3"], "unrecognised arguments: --nmu_samples (did you mean"),
        (["--dataset_name", "x", "--train_data_dir", "."], "argument --train_data_dir: not allowed with argument"),
        (["--train_data_dir", "no-such-folder"], "argument --train_data_dir: no-such-folder is not an existing"),
        (["--dataset_config_name", "small"], "argument --dataset_config_name: needs --dataset_name"),
        (["--device", "gpu"], "argument --device: device 'gpu' is not one of: cpu, cuda, cuda:<index>, mps"),
        (["--device", "cuda:64"], "argument --device: device 'cuda:64': this machine has"),
        (["--elbo_strata", "-1"], "argument --elbo_strata: must be an integer >= 0, got -1"),
        (["--num_langevin_steps", "0"], "argument --num_langevin_steps: must be an integer >= 1, got 0"),
        (["--batch_size", "many"], "argument --batch_size/--batch-size: invalid int value: 'many'"),
        (["--baseline_draws", "0"], "argument --baseline_draws: must be an integer >= 1, got 0"),
        (["--reference_bootstraps", "-1"], "argument --reference_bootstraps: must be an integer >= 0, got -1"),
    ],
)
def test_the_script_names_a_bad_or_unknown_flag_at_parse_time(tmp_path, capsys, arguments, message):
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    with pytest.raises(SystemExit) as exit_info:
        _evaluate_script().parse_args(["--pipeline", str(tmp_path / "pipe"), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_script_passes_its_defaults_and_sampling_flags_to_evaluate(tmp_path, capsys):
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    args = _evaluate_script().parse_args(["--pipeline", str(tmp_path / "pipe"), "--num_langevin_steps", "3"])
    assert args.pipeline == str(tmp_path / "pipe")
    assert args.evaluate_kwargs() == {
        "dataset_name": None,
        "train_data_dir": None,
        "image_column": None,
        "dataset_config_name": None,
        "dataset_cache_dir": None,
        "num_samples": 1000,
        "num_elbo_images": None,
        "elbo_strata": 50,
        "batch_size": 256,
        "seed": 0,
        "baseline_draws": 5,
        "reference_bootstraps": 50,
        "device": None,
        "inception_weights": None,
        "output_dir": str(tmp_path / "pipe" / "eval"),
        "sample_kwargs": {"num_langevin_steps": 3},
        "ode_likelihood": True,
        "ode_probes": 1,
        "ode_rtol": 1e-5,
        "ode_atol": 1e-5,
    }
    args = _evaluate_script().parse_args(["--pipeline", "a/b", "--no_ode_likelihood", "--ode_probes", "4"])
    assert (args.ode_likelihood, args.ode_probes) == (False, 4)
    for flag, value in (("--ode_probes", "0"), ("--ode_rtol", "0"), ("--ode_atol", "-1e-5")):
        with pytest.raises(SystemExit):
            _evaluate_script().parse_args(["--pipeline", "a/b", f"{flag}={value}"])
        assert f"argument {flag}: must be" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The script, end to end in a fresh process
def _run_script(args: list[str], cache_root: Path) -> subprocess.CompletedProcess:
    # one thread, as in the test process (conftest): tiny tensors only pay for synchronisation
    env = {**os.environ, "HF_DDPM_NCSN_CACHE": str(cache_root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _baseline_cell(table: str, metric: str) -> tuple[float, float]:
    line = next(line for line in table.splitlines() if line.startswith(metric + " "))
    value, baseline = (float(cell.split(" ± ")[0]) for cell in re.split(r"\s{2,}", line)[1:3])
    return value, baseline


@pytest.mark.slow
def test_script_evaluates_a_saved_ddpm_folder(tmp_path: Path, cache_root: Path, classifier):
    folder = tmp_path / "ddpm"
    tiny_ddpm(num_train_timesteps=10).save_pretrained(folder)
    arguments = "--num_samples 16 --num_elbo_images 8 --elbo_strata 3 --batch_size 64 --num_inference_steps 5"
    result = _run_script(["--pipeline", str(folder), *arguments.split()], cache_root)
    out = folder / "eval"
    assert (out / "samples.png").is_file() and (out / "elbo_terms.png").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["classifier"]["held_out_accuracy"] == classifier.info["held_out_accuracy"]  # from the cache
    assert report["counts"] == {"samples": 16, "held_out": 180, "train": 1617, "baseline_train_images": 16}
    assert report["likelihood"]["stratified"]["num_strata"] == 3
    assert report["sample_kwargs"] == {"num_inference_steps": 5}
    assert report["inception"] == {"skipped": INCEPTION_MISSING}
    value, baseline = _baseline_cell(result.stdout, "classifier_frechet_distance")
    assert value == pytest.approx(report["sample_quality"]["classifier_frechet_distance"], rel=1e-3)
    assert baseline == pytest.approx(report["sample_quality"]["classifier_frechet_distance_real_baseline"], rel=1e-3)
    assert "bits_per_dim (full ELBO, 8 held-out images, T=10, 80 UNet evaluations, " in result.stdout
    ode = report["ode_likelihood"]
    assert ode["num_images"] == 8 and ode["nfe"] > 0  # the ELBO's images
    assert float(_table_value(result.stdout, "bits_per_dim_ode").split(" ± ")[0]) == pytest.approx(
        ode["bits_per_dim"], rel=1e-3
    )
    assert f"{ode['nfe']} NFE" in result.stdout
    assert report["likelihood_baselines"]["num_images"] == 8  # the ELBO's images
    for row, name in zip(BASELINE_ROWS, BASELINE_MODELS, strict=True):
        printed = float(_table_value(result.stdout, row).split(" ± ")[0])
        assert printed == pytest.approx(report["likelihood_baselines"][name]["bits_per_dim"], rel=1e-3)
    assert INCEPTION_MISSING in result.stdout
    with Image.open(out / "samples.png") as grid:
        assert grid.size == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2)  # 16 samples: 8x8 upscaled to 32 px, 2 px gaps


@pytest.mark.slow
def test_script_evaluates_a_saved_ncsn_folder(tmp_path: Path, cache_root: Path, classifier):
    folder = tmp_path / "ncsn"
    tiny_ncsn().save_pretrained(folder)
    out = tmp_path / "report-here"
    result = _run_script(
        ["--pipeline", str(folder), "--num_samples", "8", "--num_langevin_steps", "1", "--output_dir", str(out)],
        cache_root,
    )
    report = json.loads((out / "report.json").read_text())
    assert report["likelihood"] == {"skipped": NCSN_HAS_NO_ELBO}
    assert (out / "samples.png").is_file() and not (out / "elbo_terms.png").exists()
    assert NCSN_HAS_NO_ELBO in result.stdout
    # its bits/dim is the ODE's, on the same 180 held-out images as the references
    assert report["ode_likelihood"]["num_images"] == 180 and math.isfinite(report["ode_likelihood"]["bits_per_dim"])
    assert report["model_card_metrics"]["bits_per_dim_ode"] == report["ode_likelihood"]["bits_per_dim"]
    # the references on all 180 held-out images: the README's numbers for the digits
    baselines = report["likelihood_baselines"]
    assert baselines["num_images"] == 180
    assert [baselines[name]["bits_per_dim"] for name in BASELINE_MODELS] == pytest.approx(
        [2.4297, 2.6253, 2.9841, math.log2(17)], abs=1e-4
    )
    assert all(row in result.stdout for row in BASELINE_ROWS) and baselines["description"] in result.stdout
    assert _baseline_cell(result.stdout, "classifier_kid")[1] == pytest.approx(
        report["sample_quality"]["classifier_kid_real_baseline"], rel=1e-3, abs=1e-4
    )
