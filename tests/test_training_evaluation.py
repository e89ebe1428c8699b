"""Evaluation during training (`--eval_steps`, `--keep_best_by`): the numbers against the offline evaluation of
the saved pipeline, with two real gloo processes; the best pipeline; resume; the trackers; refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from support.tiny_models import tiny_ddpm
from test_training import SCRIPTS, TINY_DDPM, TINY_NCSN, TWO_GLOO_PROCESSES, _short_run, _write_png

from hf_ddpm_ncsn.data import load_image_dataset
from hf_ddpm_ncsn.evaluation.feature_classifier import load_images
from hf_ddpm_ncsn.families import make_family
from hf_ddpm_ncsn.training import build as training_build
from hf_ddpm_ncsn.training import evaluation as training_evaluation
from hf_ddpm_ncsn.training import main
from hf_ddpm_ncsn.training.arguments import parse_training_arguments
from hf_ddpm_ncsn.training.evaluation import BEST_DIR, BEST_RECORD, TrainingEvaluator, read_best, save_best
from hf_ddpm_ncsn.training.saving import prepare_output_dir

REPO = Path(__file__).resolve().parents[1]
# 8 held-out images for the loss, the ELBO and the ODE; 64 samples for the Fréchet distance
EVAL = ["--eval_num_images", "8", "--eval_num_samples", "64", "--eval_elbo_strata", "5", "--eval_ode_images", "8"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # one thread per process: the training processes and the offline evaluation reduce floats in the same order
    cache = tmp_path_factory.mktemp("hf_ddpm_ncsn_cache")
    return {**os.environ, "HF_DDPM_NCSN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train(family: str, out: Path, env: dict[str, str], extra: list[str], launcher: list[str] | None = None) -> dict:
    tiny = TINY_DDPM if family == "ddpm" else TINY_NCSN
    script = str(SCRIPTS / f"train_{family}.py")
    _run([*(launcher or [sys.executable]), script, "--output_dir", str(out), *tiny, *EVAL, *extra], env)
    return json.loads((out / "metrics.json").read_text())


def _offline(folder: Path, env: dict[str, str], tmp_path: Path) -> dict:
    """scripts/evaluate.py on a saved pipeline with the in-training evaluation's counts, batch size and seed."""
    report = tmp_path / f"report-{folder.name}"
    _run([sys.executable, str(SCRIPTS / "evaluate.py"), "--pipeline", str(folder), "--output_dir", str(report),
          "--num_samples", "64", "--num_elbo_images", "8", "--elbo_strata", "5", "--ode_rtol", "1e-4",
          "--ode_atol", "1e-4", "--seed", "0", "--baseline_draws", "1", "--reference_bootstraps", "0"],
         env)  # fmt: skip
    return json.loads((report / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ddpm", "ncsn"])
def test_two_processes_evaluate_the_saved_model_as_the_offline_evaluation_does(family, tmp_path, env):
    """Trained on 2 gloo processes, evaluated at steps 2 and 4 by the main process: the final evaluation is, to the
    bit, what scripts/evaluate.py reports for the saved pipeline (same images, seeds and batches, one thread)."""
    out = tmp_path / family
    metrics = _train(family, out, env, ["--max_train_steps", "4", "--eval_steps", "2"], TWO_GLOO_PROCESSES)
    assert metrics["num_processes"] == 2
    assert [e["step"] for e in metrics["evaluations"]] == [2, 4]
    final, report = metrics["evaluations"][-1], _offline(out, env, tmp_path)
    quality = report["sample_quality"]
    assert final["classifier_frechet_distance"] == quality["classifier_frechet_distance"]
    assert final["classifier_frechet_distance_ratio"] == quality["classifier_frechet_distance_ratio"]
    assert final["ode_bits_per_dim"] == report["ode_likelihood"]["bits_per_dim"]
    if family == "ddpm":
        assert final["held_out_bits_per_dim"] == report["likelihood"]["stratified"]["bits_per_dim"]
    else:
        assert "held_out_bits_per_dim" not in final
    # the model changed between the evaluations, and the numbers with it
    assert metrics["evaluations"][0]["held_out_loss"] != final["held_out_loss"]
    assert metrics["evaluation_seconds"] > sum(e["seconds"] for e in metrics["evaluations"]) * 0.99


def test_the_held_out_loss_is_the_mean_training_loss_over_the_held_out_images():
    """A model whose noise prediction is the constant c: the simple loss of each image is the pixel mean of
    (eps - c)^2, whose mean over 180 x 64 pixels is 1 + c^2 within a few standard errors sqrt((2 + 4c^2) / 11520).
    """
    c = 0.5
    args, ddpm_args = parse_training_arguments("ddpm", ["--resolution", "8", "--ddpm_num_steps", "20"])
    family = make_family("ddpm", ddpm_args)
    held_out, _ = load_images(split="test", resolution=8, channels=1)
    pipe = tiny_ddpm(num_train_timesteps=20)

    class Constant(torch.nn.Module):
        config = pipe.unet.config
        device = torch.device("cpu")

        def forward(self, x, t):
            return (torch.full_like(x, c),)

    pipe.unet = Constant()
    loss = TrainingEvaluator(args, family, held_out)._held_out_loss(pipe)
    stderr = ((2 + 4 * c**2) / held_out[0].numel() / len(held_out)) ** 0.5
    assert abs(loss - (1 + c**2)) < 4 * stderr
    assert TrainingEvaluator(args, family, held_out)._held_out_loss(pipe) == loss  # fixed noise: paired evaluations


@pytest.mark.slow
def test_keep_best_by_keeps_the_pipeline_of_the_lowest_evaluation_and_a_resumed_run_continues_the_history(
    tmp_path, env
):
    """The best folder holds the pipeline of the evaluation with the lowest stratified ELBO (its offline ELBO is
    the recorded one), beside the last; a run stopped at step 4 and resumed to step 6 records the same evaluations
    and keeps the same best as a run of 6 steps at once; and evaluating leaves the training alone (the same final
    weights as a run without evaluations)."""
    # a constant learning rate: the runs of 4 and 6 steps then take the same first 4 steps
    best_args = ["--eval_steps", "2", "--keep_best_by", "held_out_bits_per_dim", "--lr_scheduler", "constant"]
    whole = _train("ddpm", tmp_path / "whole", env, ["--max_train_steps", "6", *best_args])
    evaluations = whole["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4, 6]
    best = min(evaluations, key=lambda e: e["held_out_bits_per_dim"])
    assert whole["best"] == best
    kept = tmp_path / "whole" / BEST_DIR
    assert json.loads((kept / BEST_RECORD).read_text()) == best
    report = _offline(kept, env, tmp_path)
    assert report["likelihood"]["stratified"]["bits_per_dim"] == best["held_out_bits_per_dim"]

    split = tmp_path / "split"
    _train("ddpm", split, env, ["--max_train_steps", "4", "--checkpointing_steps", "4", *best_args])
    resumed = _train("ddpm", split, env, ["--max_train_steps", "6", "--resume_from_checkpoint", "latest", *best_args])
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in evaluations]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed["evaluations"]] == strip
    assert {k: v for k, v in resumed["best"].items() if k != "seconds"} == {
        k: v for k, v in best.items() if k != "seconds"
    }

    plain = tmp_path / "plain"
    _run([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(plain), *TINY_DDPM,
          "--max_train_steps", "6", "--lr_scheduler", "constant"], env)  # fmt: skip
    assert _weights(plain) == _weights(tmp_path / "whole")


def _weights(folder: Path) -> dict[str, list]:
    tensors = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    return {name: tensor.tolist() for name, tensor in tensors.items()}


@pytest.mark.slow
def test_the_evaluations_and_the_elbo_term_plot_reach_tensorboard(tmp_path, env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    tiny = [arg if arg != "none" else "tensorboard" for arg in TINY_DDPM]
    _run([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), *tiny, *EVAL,
          "--max_train_steps", "4", "--eval_steps", "2"], env)  # fmt: skip
    events = EventAccumulator(str(out / "logs" / "ddpm-training"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    evaluations = json.loads((out / "metrics.json").read_text())["evaluations"]
    for name in ("held_out_loss", "held_out_bits_per_dim", "ode_bits_per_dim", "classifier_frechet_distance"):
        logged = [(event.step, event.value) for event in events.Scalars(f"eval/{name}")]
        assert logged == [(e["step"], pytest.approx(e[name], rel=1e-6)) for e in evaluations]  # float32 scalars
    assert [event.step for event in events.Images("elbo_terms")] == [2, 4]
    logged = Image.open(io.BytesIO(events.Images("elbo_terms")[1].encoded_image_string)).convert("RGB")
    saved = Image.open(out / "previews" / "elbo-terms-step-4.png").convert("RGB")
    assert np.array_equal(np.asarray(logged), np.asarray(saved))


@pytest.mark.parametrize(
    "family, argv, match",
    [
        ("ddpm", ["--keep_best_by", "held_out_loss"], "--keep_best_by held_out_loss needs --eval_steps"),
        ("ncsn", ["--eval_steps", "5", "--keep_best_by", "held_out_bits_per_dim"], "accepted values: ['held_out_loss"),
        (
            "ddpm",
            ["--eval_steps", "5", "--eval_num_samples", "0", "--keep_best_by", "classifier_frechet_distance"],
            "needs --eval_num_samples > 0",
        ),
        ("ddpm", ["--eval_steps", "5", "--keep_best_by", "ode_bits_per_dim"], "needs --eval_ode_images > 0"),
        ("ddpm", ["--eval_steps", "-1"], "--eval_steps must be >= 0"),
        ("ddpm", ["--eval_num_images", "0"], "--eval_num_images must lie in [1, 4096]"),
        ("ddpm", ["--eval_num_samples", "5000"], "--eval_num_samples must lie in [0, 4096]"),
        ("ddpm", ["--eval_num_samples", "1"], "--eval_num_samples must be 0 (no Fréchet distance) or at least 2"),
        ("ddpm", ["--eval_elbo_strata", "0"], "--eval_elbo_strata must be positive"),
    ],
)
def test_bad_evaluation_arguments_are_refused_at_parse_time(tmp_path, capsys, family, argv, match):
    assert main(family, [*_short_run(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_keep_best_by_the_classifier_distance_is_refused_without_labels_before_any_model_is_built(
    tmp_path, capsys, monkeypatch
):
    images = tmp_path / "images"  # one flat folder: no class sub-folders, no labels
    images.mkdir()
    for i in range(4):
        _write_png(images / f"{i}.png")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(training_build, "set_seed", no_model)  # the first step of building the model
    argv = ["--train_data_dir", str(images), "--train_batch_size", "2", "--eval_steps", "1"]
    argv += ["--keep_best_by", "classifier_frechet_distance"]
    assert main("ddpm", [*_short_run(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert "--keep_best_by classifier_frechet_distance needs a dataset with labels" in err
    assert "held_out_loss" in err  # the accepted alternatives


def test_a_kept_best_counts_only_when_the_resumed_checkpoint_recorded_its_evaluation(tmp_path):
    """best/ of another run in a reused folder, or of a later part of this run that a resume discards, is not the
    run's best: a worse evaluation of this run must still replace it."""
    pipe, out = tiny_ddpm(num_train_timesteps=20), str(tmp_path)
    foreign = {"step": 6, "held_out_loss": 0.125, "seconds": 1.0}
    save_best(pipe, out, foreign)
    assert read_best(out, "held_out_loss", []) is None
    assert read_best(out, "held_out_loss", [{"step": 6, "held_out_loss": 0.25}]) is None  # another value
    assert read_best(out, "held_out_loss", [{"step": 4, "held_out_loss": 0.125}]) is None  # another step
    assert read_best(out, "held_out_loss", [{"step": 2}, {"step": 6, "held_out_loss": 0.125}]) == foreign
    assert read_best(out, None, [foreign]) is None


def test_preparing_the_output_folder_repairs_an_interrupted_switch_of_best(tmp_path):
    """A crash inside save_best on a filesystem without atomic exchange leaves the old best only as its backup,
    and a crash while staging leaves a partial folder: the next run restores the one and removes the other
    before reading best/ (and before its final switch would carry them into the new folder)."""
    out, pipe = tmp_path / "out", tiny_ddpm(num_train_timesteps=20)
    record = {"step": 2, "held_out_loss": 0.5}
    save_best(pipe, str(out), record)
    (out / BEST_DIR).rename(out / f".{BEST_DIR}.0123abcd.old")  # the first rename of the switch, then the crash
    (out / f".{BEST_DIR}.4567cdef.partial").mkdir()
    prepare_output_dir(str(out))
    assert sorted(p.name for p in out.iterdir()) == [BEST_DIR]
    assert read_best(str(out), "held_out_loss", [record]) == record


def test_the_evaluation_reads_the_dataset_configuration_and_cache_of_the_training(tmp_path, monkeypatch):
    """--dataset_config_name and --cache_dir reach every split the in-training evaluation loads (held-out and
    classifier; the baseline's rows come from the training's own split), as they reach the training's; the baseline
    decodes only its own rows."""
    calls, real = [], load_image_dataset

    def recording(dataset_name=None, dataset_config_name=None, train_data_dir=None, image_column=None, split="train",
                  cache_dir=None, **kwargs):  # fmt: skip
        calls.append((dataset_name, dataset_config_name, cache_dir, split))
        return real(train_data_dir=train_data_dir, image_column=image_column, split=split)  # the digits

    monkeypatch.setattr("hf_ddpm_ncsn.evaluation.feature_classifier.load_image_dataset", recording)
    decoded, decode = [], training_evaluation.decode_images
    monkeypatch.setattr(training_evaluation, "decode_images", lambda d, *a: decoded.append(len(d)) or decode(d, *a))
    monkeypatch.setenv("HF_DDPM_NCSN_CACHE", str(tmp_path / "classifiers"))
    argv = ["--resolution", "8", "--ddpm_num_steps", "20", "--dataset_name", "some/dataset", "--dataset_config_name",
            "small", "--cache_dir", str(tmp_path / "hf"), "--eval_steps", "1", "--eval_num_samples", "16"]  # fmt: skip
    args, ddpm_args = parse_training_arguments("ddpm", argv)
    train = recording("some/dataset", "small", cache_dir=str(tmp_path / "hf"))  # the split build_run loaded
    evaluator = training_evaluation.build_evaluator(args, make_family("ddpm", ddpm_args), 1, train)
    assert evaluator.classifier is not None and evaluator.frechet_baseline > 0
    assert {call[:3] for call in calls} == {("some/dataset", "small", str(tmp_path / "hf"))}
    assert {call[3] for call in calls} == {"train", "test"}
    assert decoded == [16]  # of the 1,617 training digits, only the baseline's draw
