"""The accelerate training scripts: distributed for real, resume after SIGKILL, push, early and clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ddpm_ncsn.training import list_checkpoints, main

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
# a tiny, fast configuration: 8x8 digits, a 2-level UNet, few diffusion steps
TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--train_batch_size", "16", "--logger", "none",
    "--num_preview_images", "4", "--lr_warmup_steps", "2",
]  # fmt: skip
TINY_DDPM = TINY + ["--ddpm_num_steps", "20"]
TINY_NCSN = TINY + ["--num_noise_levels", "4", "--num_langevin_steps", "2"]


# one thread everywhere: bit-identical comparisons need the same float reduction order in every process
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_two_gloo_processes_share_weights_and_split_the_data(tmp_path):
    out = tmp_path / "dist"
    result = run_script(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(out), "--max_train_steps", "4", *TINY_DDPM]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((out / "logs" / f"process-{i}.json").read_text()) for i in range(2)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in reports)
    assert reports[0]["parameters_sha256"] == reports[1]["parameters_sha256"]
    assert reports[0]["first_batch_sha256"] != reports[1]["first_batch_sha256"]
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 2
    assert (out / "model_index.json").is_file() and (out / "samples.png").is_file()


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    args = ["--max_train_steps", "60", "--checkpointing_steps", "10", "--checkpoints_total_limit", "2", *TINY_DDPM]
    reference = tmp_path / "reference"
    assert (
        run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(reference), *args]).returncode
        == 0
    )

    killed = tmp_path / "killed"
    command = [sys.executable, str(SCRIPTS / "train_ddpm.py"), "--output_dir", str(killed), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 240
    while not list_checkpoints(killed) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert list_checkpoints(killed) and not (killed / "model_index.json").exists()
    (killed / ".checkpoint-99.partial").mkdir()  # what a crash during a checkpoint write leaves behind

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
    "argv, match",
    [
        (["--sigma_max", "-1"], "sigma_max"),
        (["--sigma_max", "0.001"], "sigma_max"),
        (["--num_noise_levels", "1"], "num_noise_levels"),
        (["--step_size", "big"], "step_size"),
        (["--resolution", "0"], "resolution"),
        (["--num_preview_images", "0"], "num_preview_images"),
        (["--resume_from_checkpoint", "/nonexistent"], "resume_from_checkpoint"),
        (["--dataset_name", "x", "--train_data_dir", "y"], "not both"),
    ],
)
def test_bad_arguments_are_named_at_parse_time(capsys, argv, match):
    assert main("ncsn", argv) == 2
    assert match in capsys.readouterr().err


def test_unknown_choices_list_the_accepted_values(capsys):
    with pytest.raises(SystemExit):
        main("ddpm", ["--loss_type", "l1"])
    err = capsys.readouterr().err
    assert "--loss_type" in err and "hybrid" in err
    assert main("ddpm", ["--variance_type", "learned_range"]) == 2  # the simple loss cannot train it
    assert main("ddpm", ["--mixed_precision", "fp16", "--max_train_steps", "1"]) == 1 or torch.cuda.is_available()


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
    # a fresh process: accelerate keeps its state (mixed precision included) per process
    out = tmp_path / "bf16"
    argv = ["--output_dir", str(out), "--max_train_steps", "2", "--mixed_precision", "bf16", *TINY_DDPM]
    result = run_script([sys.executable, str(SCRIPTS / "train_ddpm.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "training_args.json").read_text())["mixed_precision"] == "bf16"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
