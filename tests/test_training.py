"""The accelerate training scripts: distributed for real, resume after SIGKILL, push, early and clear errors."""

import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_ddpm_ncsn.checkpoints import ABANDONED_DIR, read_state
from hf_ddpm_ncsn.training import list_checkpoints, main
from hf_ddpm_ncsn.training.arguments import parse_training_arguments

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
SUPPORT = ROOT / "tests" / "support"
# a tiny, fast configuration: 8x8 digits, a 2-level UNet, few diffusion steps
TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--train_batch_size", "16", "--logger", "none",
    "--num_preview_images", "4", "--lr_warmup_steps", "2",
]  # fmt: skip
TINY_DDPM = TINY + ["--ddpm_num_steps", "20"]
TINY_NCSN = TINY + ["--num_noise_levels", "4", "--num_langevin_steps", "2"]


# one thread everywhere: bit-identical comparisons need the same float reduction order in every process; every
# process writes its report (digests of its first batch and final weights: process_report.py)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DDPM_NCSN_PROCESS_REPORT": "1"}


# `accelerate launch` of two gloo processes on this CPU (the scripts build Accelerator(cpu=True) without CUDA)
TWO_GLOO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def run_script(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_two_gloo_processes_share_weights_and_split_the_data(tmp_path):
    out = tmp_path / "dist"
    result = run_script(
        [*TWO_GLOO_PROCESSES, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), "--max_train_steps", "4",
         *TINY_DDPM]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((out / "logs" / f"process-{i}.json").read_text()) for i in range(2)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in reports)
    assert reports[0]["parameters_sha256"] == reports[1]["parameters_sha256"]
    assert reports[0]["first_batch_sha256"] != reports[1]["first_batch_sha256"]
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 2
    assert (out / "model_index.json").is_file() and (out / "samples.png").is_file()


def run_with_a_crash(when: str, step: int, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run a training script that SIGKILLs itself just before/after publishing the checkpoint of `step`."""
    return run_script(
        [sys.executable, str(SUPPORT / "train_with_faults.py"), when, str(step), str(SCRIPTS / script), *args]
    )


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    args = ["--max_train_steps", "60", "--checkpointing_steps", "10", "--checkpoints_total_limit", "2", *TINY_DDPM]
    reference = tmp_path / "reference"
    assert (
        run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(reference), *args]).returncode
        == 0
    )

    killed = tmp_path / "killed"
    crashed = run_with_a_crash("after", 30, "train_ddpm.py", ["--output_dir", str(killed), *args])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    # killed between the rename of checkpoint-30 and the limit's clean-up: the next checkpoint applies the limit
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert not (killed / "model_index.json").exists()
    (killed / ".checkpoint-99.partial").mkdir()  # what a crash during a checkpoint write leaves behind

    command = [sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(killed), *args]
    resumed = run_script(command + ["--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    assert json.loads((killed / "metrics.json").read_text())["global_step"] == 60
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-50", "checkpoint-60"]
    assert not (killed / ".checkpoint-99.partial").exists()
    # same seed, same data order, restored RNG/optimizer/EMA/lr state: bit-identical on one CPU process
    expected, got = _weights(reference), _weights(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    ranks = [json.loads((d / "logs" / "process-0.json").read_text()) for d in (reference, killed)]
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]


@pytest.mark.slow
def test_resuming_an_older_checkpoint_abandons_the_later_ones_and_latest_stays_in_the_new_lineage(tmp_path):
    out = tmp_path / "run"
    base = ["--output_dir", str(out), "--checkpointing_steps", "10", "--checkpoints_total_limit", "2", *TINY_DDPM]
    first = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), *base, "--max_train_steps", "30"])
    assert first.returncode == 0, first.stderr[-3000:]
    first_run = read_state(out / "checkpoint-30")["run_id"]

    # a second run resumes from checkpoint-20 and dies with its first checkpoint staged (complete) but unpublished
    second = [*base, "--max_train_steps", "40", "--resume_from_checkpoint", str(out / "checkpoint-20")]
    crashed = run_with_a_crash("before", 30, "train_ddpm.py", second)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    # the first run's checkpoint-30 was moved aside before anything new was written: it is not this lineage's
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-20"]
    (abandoned,) = (out / ABANDONED_DIR).rglob("checkpoint-30")
    assert read_state(abandoned)["run_id"] == first_run

    # `latest` publishes the staged checkpoint and continues the second run's lineage, never the abandoned future
    third = [*base, "--max_train_steps", "40", "--resume_from_checkpoint", "latest"]
    resumed = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), *third])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Recovered checkpoint-30" in resumed.stderr and "Resumed from" in resumed.stderr
    states = [read_state(p) for p in list_checkpoints(out)]
    assert [s["global_step"] for s in states] == [30, 40]  # the limit kept the newest two of this lineage
    lineage = states[-1]["lineage"]
    assert [run for run, _ in lineage][0] == first_run and [start for _, start in lineage] == [0, 20, 30]
    assert states[0]["run_id"] == lineage[1][0] and states[1]["run_id"] == lineage[2][0]


@pytest.mark.slow
def test_ncsn_training_saves_a_loadable_pipeline_with_a_card(tmp_path):
    out = tmp_path / "ncsn"
    assert (
        main("ncsn", ["--output_dir", str(out), "--max_train_steps", "3", "--save_images_steps", "2", *TINY_NCSN]) == 0
    )
    from hf_ddpm_ncsn import NCSNPipeline

    pipe = NCSNPipeline.from_pretrained(out)
    assert pipe.unet.config.time_embedding_type == "fourier" and pipe.scheduler.config.prediction_type == "score"
    assert pipe.scheduler.config.sigma_max > 1  # NCSNv2 technique 1 on the digits
    card = (out / "README.md").read_text()
    assert "digits" in card and "max_train_steps" in card and "samples.png" in card
    assert (out / "previews" / "step-2.png").is_file()


@pytest.mark.slow
def test_push_delivers_the_pipeline_and_card_but_not_checkpoints_or_logs(tmp_path, hub_server, hub_cache):
    repo_id = f"test-user/train-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "pushed"
    token = "hf_trainingtokenABCDEFGHIJKLMNOP"
    argv = ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "1", *TINY_DDPM,
            "--logger", "tensorboard", "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", token]  # fmt: skip
    assert main("ddpm", argv) == 0
    files = set(hub_server.files(repo_id))
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "README.md", "samples.png"} <= files
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/"))]
    assert all(token.encode() not in hub_server.read_file(repo_id, f) for f in files)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(repo_id)
    assert type(pipe).__name__ == "DDPMPosteriorPipeline"


def test_a_failed_push_keeps_the_local_output(tmp_path, hub_server):
    hub_server.fail_next(1, status=500, kinds=("commit",))
    out = tmp_path / "kept"
    argv = ["--output_dir", str(out), "--max_train_steps", "1", *TINY_DDPM, "--push_to_hub", "--hub_model_id",
            f"test-user/fail-{uuid.uuid4().hex[:8]}", "--hub_token", "hf_x"]  # fmt: skip
    assert main("ddpm", argv) == 1
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()


def test_only_a_family_that_needs_them_reads_training_images_to_build_its_scheduler(tmp_path, monkeypatch):
    import hf_ddpm_ncsn.training.build as build

    iterations, stacked = [], []

    class CountingLoader(torch.utils.data.DataLoader):
        def __iter__(self):  # the loader before accelerate.prepare: only the scheduler's images read it
            iterations.append(1)
            return super().__iter__()

    def counting_dataloader(*args, **kwargs):
        loader = make_dataloader(*args, **kwargs)
        loader.__class__ = CountingLoader
        return loader

    def counting_stack(dataloader, limit):
        stacked.append(limit)
        return stack_images(dataloader, limit)

    make_dataloader, stack_images = build.make_dataloader, build.stack_images
    monkeypatch.setattr(build, "make_dataloader", counting_dataloader)
    monkeypatch.setattr(build, "stack_images", counting_stack)
    assert main("ddpm", [*_short_run(tmp_path / "ddpm"), *TINY_DDPM, "--num_preview_images", "1"]) == 0
    assert iterations == [] and stacked == []  # DDPM's schedule does not depend on the data
    assert main("ncsn", [*_short_run(tmp_path / "ncsn"), *TINY_NCSN, "--num_preview_images", "1"]) == 0
    assert iterations == [1] and stacked == [build.MAX_POINTS_FOR_SIGMA_MAX]  # NCSN's sigma_max="auto" does


def test_the_hybrid_loss_logs_its_parts(tmp_path, monkeypatch):
    """The loss is logged with its parts (per-sample terms reduced by the loss module): hybrid = mse + lambda vlb."""
    from accelerate import Accelerator

    logged = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: logged.append(dict(values)))
    hybrid = ["--loss_type", "hybrid", "--variance_type", "learned_range", "--vlb_weight", "0.01"]
    argv = ["--output_dir", str(tmp_path / "hybrid"), "--max_train_steps", "2", *TINY_DDPM, *hybrid]
    assert main("ddpm", argv) == 0
    steps = [values for values in logged if "loss" in values]
    assert len(steps) == 2
    for values in steps:
        assert values["loss"] == pytest.approx(values["loss_mse"] + 0.01 * values["loss_vlb"], rel=1e-5)
        assert values["loss_vlb"] > 0 and values["loss_mse"] > 0
    logged.clear()
    assert main("ddpm", ["--output_dir", str(tmp_path / "simple"), "--max_train_steps", "1", *TINY_DDPM]) == 0
    assert [sorted(k for k in values if k.startswith("loss")) for values in logged if "loss" in values] == [["loss"]]


def test_no_process_report_is_written_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DDPM_NCSN_PROCESS_REPORT", raising=False)
    out = tmp_path / "out"
    assert main("ddpm", ["--output_dir", str(out), "--max_train_steps", "1", *TINY_DDPM]) == 0
    assert (out / "model_index.json").is_file() and not list(out.rglob("process-*.json"))


# --- errors before training starts ------------------------------------------------------------------------------


def _write_png(path: Path, size=(8, 8)) -> None:
    from PIL import Image

    Image.new("L", size, color=128).save(path)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--train_data_dir", "/nonexistent/images"], "train_data_dir"),
        (["--image_column", "pixels"], "pixels"),
    ],
)
def test_bad_data_arguments_fail_before_training(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert main("ddpm", ["--output_dir", str(out), "--max_train_steps", "1", *TINY_DDPM, *extra]) == 1
    assert match in capsys.readouterr().err
    assert not list_checkpoints(out) and not (out / "model_index.json").exists()


def test_a_corrupt_image_is_reported_not_skipped(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        _write_png(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    out = tmp_path / "out"
    assert (
        main(
            "ddpm", ["--output_dir", str(out), "--train_data_dir", str(images), *TINY_DDPM, "--train_batch_size", "2"]
        )
        == 1
    )
    assert "broken.png" in capsys.readouterr().err
    assert not (out / "model_index.json").exists()


@pytest.mark.parametrize(
    "family, argv, match",
    [
        ("ncsn", ["--sigma_max", "-1"], "sigma_max"),
        ("ncsn", ["--sigma_max", "0.001"], "sigma_max"),
        ("ncsn", ["--sigma_min", "inf"], "--sigma_min must be a finite number"),
        ("ncsn", ["--num_noise_levels", "1"], "num_noise_levels"),
        ("ncsn", ["--num_langevin_steps", "200000"], "--num_langevin_steps must lie in"),
        ("ncsn", ["--step_size", "big"], "step_size"),
        ("ncsn", ["--resolution", "0"], "resolution"),
        ("ncsn", ["--num_preview_images", "0"], "num_preview_images"),
        ("ncsn", ["--resume_from_checkpoint", "/nonexistent"], "resume_from_checkpoint"),
        ("ncsn", ["--dataset_name", "x", "--train_data_dir", "y"], "not both"),
        ("ncsn", ["--ema_inv_gamma", "0"], "--ema_inv_gamma must be a finite number in (0, inf)"),
        ("ncsn", ["--ema_power", "-1"], "--ema_power must be a finite number in (0, inf)"),
        ("ncsn", ["--layers_per_block", "0"], "--layers_per_block must be positive"),
        ("ncsn", ["--layers_per_block", "-1"], "--layers_per_block must be positive"),
        ("ncsn", ["--adam_beta1", "2"], "--adam_beta1 must be a finite number in [0, 1)"),
        ("ncsn", ["--adam_epsilon", "-1"], "--adam_epsilon must be a finite number in (0, inf)"),
        ("ncsn", ["--seed", "-1"], "--seed must lie in [0, 2**32 - 1]"),
        ("ncsn", ["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number in [0, inf)"),
        ("ncsn", ["--max_grad_norm", "-1"], "--max_grad_norm must be a finite number in [0, inf)"),
        ("ncsn", ["--learning_rate", "inf"], "--learning_rate must be a finite number"),
        ("ncsn", ["--block_out_channels", *["8"] * 6], "--resolution 16 must be divisible by 32"),
        ("ddpm", ["--vlb_weight", "-1"], "--vlb_weight must be a finite number in [0, inf)"),
        ("ddpm", ["--vlb_weight", "nan"], "--vlb_weight must be a finite number in [0, inf)"),
        ("ddpm", ["--beta_end", "2"], "beta_end"),
        ("ddpm", ["--ddpm_num_steps", "1000000000"], "--ddpm_num_steps must lie in [2, 100000]"),
        ("ddpm", ["--output_dir", __file__], "--output_dir"),
        ("ddpm", ["--model_config_name_or_path", "path/to/config.json"], "does not exist"),
        ("ddpm", ["--model_config_name_or_path", "/nonexistent/unet"], "does not exist"),
        ("ddpm", ["--model_config_name_or_path", "missing.json"], "does not exist"),
        ("ddpm", ["--model_config_name_or_path", "./missing"], "does not exist"),
        ("ddpm", ["--model_config_name_or_path", "configs/unet.json"], "does not exist"),
        ("ddpm", ["--model_config_name_or_path", "user/unet", "--block_out_channels", "8"], "cannot be combined"),
        ("ddpm", ["--model_config_name_or_path", "user/unet", "--layers_per_block", "2"], "cannot be combined"),
        ("ddpm", ["--logsnr_max", "nan"], "--logsnr_max must be a finite number in [-20, 16]"),
        ("ddpm", ["--logsnr_max", "17"], "--logsnr_max must be a finite number in [-20, 16]"),
        ("ddpm", ["--logsnr_min=-inf"], "--logsnr_min must be a finite number in [-20, 16]"),
        ("ddpm", ["--logsnr_min", "-21"], "--logsnr_min must be a finite number in [-20, 16]"),
        (
            "ddpm",
            ["--ddpm_beta_schedule", "linear-logsnr", "--logsnr_max", "-5", "--logsnr_min", "-5"],
            "--logsnr_max (-5) must exceed --logsnr_min (-5)",
        ),
        ("ddpm", ["--logsnr_min", "-12"], "--logsnr_min: used by --ddpm_beta_schedule linear-logsnr only, not linear"),
        (
            "ddpm",
            ["--ddpm_beta_schedule", "linear-logsnr", "--beta_start", "1e-5", "--beta_end", "0.01"],
            "--beta_start and --beta_end: not used by --ddpm_beta_schedule linear-logsnr",
        ),
    ],
)
def test_bad_arguments_are_named_at_parse_time(tmp_path, capsys, family, argv, match):
    # a short run in a temporary folder if the check were ever missed: the case's own arguments come last and win
    assert main(family, [*_short_run(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_a_misspelled_token_flag_is_named_without_its_value(capsys):
    secrets = ["hf_supersecretvalue1234567", "hf_othersecretvalue7654321"]
    assert main("ddpm", ["--hub_tokn", secrets[0], f"--hubtoken={secrets[1]}"]) == 2
    err = capsys.readouterr().err
    assert "--hub_tokn (did you mean --hub_token?)" in err and "--hubtoken" in err and "values are not shown" in err
    assert not any(secret in err for secret in secrets)


def test_any_positive_widths_build_a_working_default_unet():
    from hf_ddpm_ncsn.families import build_unet, default_unet_config

    for widths in ([12, 24], [4], [6, 12], [5, 10, 10]):  # GroupNorm groups and attention heads adapt
        unet = build_unet(default_unet_config(widths, None), 8, 1, 1)
        assert unet(torch.zeros(1, 1, 8, 8), 3).sample.shape == (1, 1, 8, 8), widths
    # the widths that always worked keep exactly their UNet: 8 groups for multiples of 8, else the first width
    assert default_unet_config([32, 64, 64], None)["norm_num_groups"] == 8
    assert default_unet_config([4, 8], None)["norm_num_groups"] == 4


def _short_run(tmp_path) -> list[str]:
    return ["--output_dir", str(tmp_path / "out"), "--max_train_steps", "1", "--logger", "none"]


def test_unknown_choices_list_the_accepted_values(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main("ddpm", ["--loss_type", "l1"])
    err = capsys.readouterr().err
    assert "--loss_type" in err and "hybrid" in err
    assert main("ddpm", [*_short_run(tmp_path), "--variance_type", "learned_range"]) == 2  # simple cannot train it
    fp16 = main("ddpm", [*_short_run(tmp_path), "--mixed_precision", "fp16"])
    assert fp16 == 1 or torch.cuda.is_available()


def test_help_documents_every_argument():
    out = run_script([sys.executable, str(SCRIPTS / "train_ncsn.py"), "--help"]).stdout
    for name in ("--dataset_name", "--train_data_dir", "--image_column", "--resolution", "--center_crop",
                 "--random_flip", "--gradient_accumulation_steps", "--lr_scheduler", "--use_ema", "--ema_max_decay",
                 "--mixed_precision", "--checkpoints_total_limit", "--resume_from_checkpoint", "--push_to_hub",
                 "--hub_model_id", "--sigma_max", "--conditioning", "--num_langevin_steps",
                 "--step_size"):  # fmt: skip
        assert name in out, name
    out = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--help"]).stdout
    for name in ("--ddpm_num_steps", "--ddpm_beta_schedule", "--variance_type", "--prediction_type", "--loss_type"):
        assert name in out, name


def test_a_config_file_supplies_arguments_and_the_command_line_wins(tmp_path):
    from hf_ddpm_ncsn.training_args import parse_training_arguments

    config = tmp_path / "args.json"
    config.write_text(json.dumps({"learning_rate": 0.5, "block_out_channels": [8, 16], "sigma_max": "3", "seed": 4}))
    args, ncsn = parse_training_arguments("ncsn", ["--config", str(config), "--seed", "7"])
    assert args.learning_rate == 0.5 and args.block_out_channels == [8, 16] and ncsn.sigma_max == 3.0
    assert args.seed == 7
    yaml_config = tmp_path / "args.yaml"
    yaml_config.write_text("loss_type: hybrid\nvariance_type: learned_range\n")
    _, ddpm = parse_training_arguments("ddpm", ["--config", str(yaml_config)])
    assert ddpm.loss_type == "hybrid" and ddpm.variance_type == "learned_range"


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    argv = ["--output_dir", str(out), "--max_train_steps", "50", "--checkpointing_steps", "1", *TINY_DDPM,
            "--learning_rate", "1e12", "--max_grad_norm", "0", "--lr_warmup_steps", "0",
            "--use_ema", "false"]  # fmt: skip
    assert main("ddpm", argv) == 1
    err = capsys.readouterr().err
    assert "the loss is" in err and "at step" in err and "checkpoint-" in err
    assert list_checkpoints(out) and not (out / "model_index.json").exists()
    shutil.rmtree(out)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    # fresh processes: accelerate keeps its state (mixed precision included) per process
    losses = {}
    for precision in ("bf16", "no"):
        out = tmp_path / precision
        argv = ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "1",
                "--mixed_precision", precision, *TINY_DDPM]  # fmt: skip
        result = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), *argv])
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((out / "training_args.json").read_text())["mixed_precision"] == precision
        losses[precision] = [loss for _, loss in json.loads((out / "metrics.json").read_text())["loss_history"]]
    # training happened: the step changed the weights, and the losses are finite
    before, after = (load_file(tmp_path / "bf16" / f"checkpoint-{i}" / "model.safetensors") for i in (1, 2))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(losses["bf16"]) == 2 and all(math.isfinite(loss) for loss in losses["bf16"])
    # in bf16: the same seed, data and first weights give another loss than in float32 (autocast was on)
    assert losses["bf16"][0] != losses["no"][0]


# --- resuming: the checkpoint records its run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resumable") / "run"
    argv = ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2", *TINY_DDPM]
    assert main("ddpm", argv) == 0
    return out / "checkpoint-2"


def test_a_checkpoint_records_its_run(ddpm_checkpoint):
    state = read_state(ddpm_checkpoint)
    assert state["family"] == "ddpm" and state["global_step"] == 2 and state["num_processes"] == 1
    assert state["unet_config"]["block_out_channels"] == [8, 16]
    assert state["scheduler_config"]["num_train_timesteps"] == 20
    assert state["arguments"]["train_batch_size"] == 16 and "hub_token" not in state["arguments"]
    assert math.isfinite(state["last_loss"]) and state["lineage"] == [[state["run_id"], 0]]


@pytest.mark.parametrize(
    "family, extra, match",
    [
        ("ncsn", TINY_NCSN, "family: the checkpoint is a ddpm run, this is a ncsn run"),
        (
            "ddpm",
            TINY_DDPM + ["--ddpm_num_steps", "30"],
            "scheduler config num_train_timesteps: checkpoint 20, now 30",
        ),
        ("ddpm", TINY_DDPM + ["--train_batch_size", "8"], "--train_batch_size: checkpoint 16, now 8"),
        ("ddpm", TINY_DDPM + ["--block_out_channels", "16", "32"], "UNet config block_out_channels"),
        ("ddpm", TINY_DDPM + ["--use_ema", "false"], "--use_ema: checkpoint True, now False"),
        ("ddpm", TINY_DDPM + ["--loss_type", "vlb"], "--loss_type: checkpoint 'simple', now 'vlb'"),
        (
            "ddpm",
            TINY_DDPM + ["--timestep_sampler", "loss-second-moment"],
            "--timestep_sampler: checkpoint 'uniform', now 'loss-second-moment'",
        ),
        # a schedule's 20 trained_betas are named by their ends and count, not printed whole
        ("ddpm", TINY_DDPM + ["--ddpm_beta_schedule", "linear-logsnr"], "(20 values)"),
    ],
)
def test_resuming_another_run_stops_before_training_and_names_the_mismatch(
    ddpm_checkpoint, tmp_path, capsys, family, extra, match
):
    out = tmp_path / "out"
    argv = [
        "--output_dir",
        str(out),
        "--max_train_steps",
        "4",
        *extra,
        "--resume_from_checkpoint",
        str(ddpm_checkpoint),
    ]
    assert main(family, argv) == 1
    err = capsys.readouterr().err
    assert f"cannot resume {ddpm_checkpoint}" in err and match in err
    assert not list_checkpoints(out) and not (out / "model_index.json").exists()


def test_a_checkpoint_from_before_an_argument_existed_resumes_as_its_default(ddpm_checkpoint, tmp_path, capsys):
    older = tmp_path / "checkpoint-2"
    shutil.copytree(ddpm_checkpoint, older)
    state = json.loads((older / "training_state.json").read_text())
    for name in ("timestep_sampler", "logsnr_max", "logsnr_min"):  # what checkpoints recorded before these existed
        del state["arguments"][name]
    (older / "training_state.json").write_text(json.dumps(state))
    argv = ["--max_train_steps", "4", *TINY_DDPM, "--resume_from_checkpoint", str(older)]
    sampled = ["--output_dir", str(tmp_path / "sampled"), *argv, "--timestep_sampler", "loss-second-moment"]
    assert main("ddpm", sampled) == 1  # it ran with the default, uniform sampler
    assert "--timestep_sampler: checkpoint 'uniform', now 'loss-second-moment'" in capsys.readouterr().err
    assert main("ddpm", ["--output_dir", str(tmp_path / "out"), *argv]) == 0
    assert "--logsnr" not in capsys.readouterr().err  # no change to report either


def test_a_checkpoint_without_a_run_record_is_refused(ddpm_checkpoint, tmp_path, capsys):
    legacy = tmp_path / "checkpoint-2"
    shutil.copytree(ddpm_checkpoint, legacy)
    (legacy / "training_state.json").write_text('{"global_step": 2}')  # what earlier versions wrote
    argv = ["--output_dir", str(tmp_path / "out"), "--max_train_steps", "4", *TINY_DDPM]
    assert main("ddpm", [*argv, "--resume_from_checkpoint", str(legacy)]) == 1
    assert "records no run" in capsys.readouterr().err


def test_resuming_with_a_new_learning_rate_and_more_steps_is_allowed_and_logged(ddpm_checkpoint, tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--max_train_steps", "3", "--learning_rate", "5e-4", *TINY_DDPM,
            "--num_preview_images", "2", "--resume_from_checkpoint", str(ddpm_checkpoint)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main("ddpm", argv) == 0
    assert "--learning_rate: checkpoint 0.001, now 0.0005" in caplog.text
    assert "--max_train_steps: checkpoint 2, now 3" in caplog.text and "--num_preview_images" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3


def test_a_new_learning_rate_replaces_the_one_that_load_state_restores():
    from diffusers.optimization import get_scheduler

    from hf_ddpm_ncsn.training import _apply_learning_rate

    def build(lr):
        optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
        return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)

    optimizer, schedule = build(1e-3)
    for _ in range(4):
        optimizer.step()
        schedule.step()
    resumed_optimizer, resumed_schedule = build(5e-4)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed_schedule.load_state_dict(schedule.state_dict())
    assert resumed_schedule.base_lrs == [1e-3]  # what a resumed run would silently keep
    _apply_learning_rate(resumed_optimizer, resumed_schedule, 5e-4)

    def cosine(step):  # diffusers' cosine schedule after 2 warm-up steps of 10
        return 0.5 * (1 + math.cos(math.pi * (step - 2) / 8))

    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * cosine(4), rel=1e-12)
    resumed_optimizer.step()
    resumed_schedule.step()
    assert resumed_schedule.get_last_lr()[0] == pytest.approx(5e-4 * cosine(5), rel=1e-12)


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"invalid JSON literal {constant}")

    return json.loads(text, parse_constant=refuse)


def test_resuming_past_max_train_steps_is_an_error_and_at_it_the_run_finishes(ddpm_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *TINY_DDPM, "--resume_from_checkpoint", str(ddpm_checkpoint)]
    assert main("ddpm", [*argv, "--max_train_steps", "1"]) == 1
    assert "is at step 2, past the 1 steps of this run" in capsys.readouterr().err
    assert not (out / "model_index.json").exists()
    # at the checkpoint's step there is nothing left to train: the pipeline is saved, the metrics are valid JSON
    assert main("ddpm", [*argv, "--max_train_steps", "2"]) == 0
    printed = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = _strict_json((out / "metrics.json").read_text())
    assert printed == {"global_step": 2, "final_loss": read_state(ddpm_checkpoint)["last_loss"]}
    assert metrics["global_step"] == 2 and metrics["final_loss"] == printed["final_loss"]
    assert metrics["images_per_second"] is None and metrics["loss_history"] == []
    assert (out / "model_index.json").is_file()


# --- --model_config_name_or_path: a file, a folder, a Hub repo, under two gloo processes -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ["file", "folder", "hub"])
def test_a_unet_config_from_a_file_a_folder_or_a_hub_repo_trains_on_two_processes(tmp_path, form, request):
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    env = {}
    if form == "file":  # not named config.json, in a folder without one
        unet.save_config(tmp_path / "saved")
        source = tmp_path / "my_unet.json"
        (tmp_path / "saved" / "config.json").rename(source)
    elif form == "folder":
        unet.save_config(tmp_path / "saved")
        source = tmp_path / "saved"
    else:  # a pipeline repo: its config is unet/config.json
        from support.tiny_models import tiny_ddpm

        hub_env = request.getfixturevalue("hub_env")
        source = f"test-user/unet-config-{uuid.uuid4().hex[:8]}"
        pipe = tiny_ddpm()
        pipe.unet = unet
        pipe.push_to_hub(source, num_grid_images=0)
        env = hub_env
    out = tmp_path / "out"
    command = [*TWO_GLOO_PROCESSES, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), "--max_train_steps", "1",
               "--model_config_name_or_path", str(source), "--resolution", "8", "--train_batch_size", "16",
               "--logger", "none", "--num_preview_images", "2", "--ddpm_num_steps", "20"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**ENV, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads((out / "logs" / f"process-{i}.json").read_text())["num_processes"] for i in range(2)] == [2, 2]
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["block_out_channels"] == [8, 16] and config["norm_num_groups"] == 4
    assert config["sample_size"] == 8 and config["in_channels"] == 1  # the data decides these


@pytest.mark.slow
def test_a_failure_on_the_main_process_alone_stops_every_process(tmp_path):
    # only the main process publishes checkpoints: when that fails, the other process must not wait at a barrier
    command = [*TWO_GLOO_PROCESSES, str(SUPPORT / "train_with_faults.py"), "fail", "2", str(SCRIPTS / "train_ddpm.py"),
               "--output_dir", str(tmp_path / "out"), "--max_train_steps", "4", "--checkpointing_steps", "2",
               *TINY_DDPM]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=ENV)
    assert result.returncode != 0
    assert "injected: no space left on device" in result.stderr
    assert "the main process failed, so this one stops too" in result.stderr
    assert not list_checkpoints(tmp_path / "out") and not (tmp_path / "out" / "model_index.json").exists()


def test_a_new_learning_rate_takes_effect_in_the_resumed_run(ddpm_checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "3",
            "--learning_rate", "5e-4", *TINY_DDPM, "--resume_from_checkpoint", str(ddpm_checkpoint)]  # fmt: skip
    assert main("ddpm", argv) == 0
    # the optimizer accelerate saved at step 3: base rate 5e-4, on the cosine schedule of 2 warm-up steps in 4
    (group,) = torch.load(out / "checkpoint-3" / "optimizer.bin", weights_only=False)["param_groups"]
    assert group["initial_lr"] == 5e-4
    assert group["lr"] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * (3 - 2) / (4 - 2))), rel=1e-12)


def test_the_final_save_keeps_other_entries_but_describes_only_the_new_model(ddpm_checkpoint, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ddpm_checkpoint.parent, out)  # a finished run, evaluated since
    (out / "eval").mkdir()
    (out / "eval" / "report.json").write_text(json.dumps({"model_card_metrics": {"bits_per_dim": 9.99}}))
    (out / "notes.txt").write_text("mine")
    old_grid = (out / "samples.png").read_bytes()
    argv = ["--output_dir", str(out), "--max_train_steps", "3", *TINY_DDPM, "--resume_from_checkpoint", "latest"]
    assert main("ddpm", argv) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval" / "report.json").is_file()  # kept
    assert "9.99" not in (out / "README.md").read_text()  # the old model's evaluation is not the new one's
    assert (out / "samples.png").read_bytes() != old_grid
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]


# ----------------------------------------------------------------------------------------------------------------
# Trackers
def test_a_wandb_logger_without_wandb_installed_is_refused_at_parse_time(monkeypatch):
    from hf_ddpm_ncsn.training import arguments

    real_find_spec = arguments.importlib.util.find_spec
    monkeypatch.setattr(
        arguments.importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name)
    )
    for choice in ("wandb", "all"):
        with pytest.raises(ValueError, match=rf"--logger {choice} needs wandb, which is not installed: pip install"):
            parse_training_arguments("ddpm", ["--logger", choice])
    assert parse_training_arguments("ddpm", ["--logger", "tensorboard"])[0].logger == "tensorboard"


@pytest.mark.slow
def test_logger_all_logs_scalars_and_sample_grids_to_tensorboard_and_offline_wandb(tmp_path):
    """--logger all with WANDB_MODE=offline (no network): the loss and the preview grids reach both trackers, and
    each logged grid is the preview PNG the run saved, pixel for pixel."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    tiny = [arg if arg != "none" else "all" for arg in TINY_DDPM]  # TINY's --logger none -> all
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), "--max_train_steps", "4",
         "--save_images_steps", "2", *tiny],
        capture_output=True, text=True, timeout=300, env={**ENV, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    preview = np.asarray(Image.open(out / "previews" / "step-2.png").convert("RGB"))

    events = EventAccumulator(str(out / "logs" / "ddpm-training"), size_guidance={"images": 0})
    events.Reload()
    assert {"samples", "final_samples"} <= set(events.Tags()["images"])
    assert [event.step for event in events.Images("samples")] == [2, 4]
    logged = Image.open(io.BytesIO(events.Images("samples")[0].encoded_image_string)).convert("RGB")
    assert np.array_equal(np.asarray(logged), preview)
    assert any(tag.startswith("loss") for tag in events.Tags()["scalars"])

    (run,) = (out / "logs" / "wandb").glob("offline-run-*")
    images = run / "files" / "media" / "images"
    assert sorted(path.name.split("_")[1] for path in images.glob("samples_*.png")) == ["2", "4"]
    (step_2,) = images.glob("samples_2_*.png")
    assert np.array_equal(np.asarray(Image.open(step_2).convert("RGB")), preview)
    assert list(images.glob("final_samples_4_*.png")) and list(run.glob("run-*.wandb"))
