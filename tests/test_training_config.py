"""`--config FILE`: a YAML (or JSON) mapping of argument names to values, used as defaults; and the main job's
settings, which live in configs/main_job/ and must parse to exactly the arguments they replaced."""

import importlib.util
import json
from pathlib import Path

import pytest

from hf_ddpm_ncsn.training import main
from hf_ddpm_ncsn.training.arguments import parse_training_arguments
from hf_ddpm_ncsn.training.config import MAX_CONFIG_BYTES

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "args.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_command_line_overrides_the_config_file(tmp_path):
    config = _write(
        tmp_path,
        "learning_rate: 1e-4\nblock_out_channels: [8, 16]\nuse_ema: false\nseed: 3\nmax_train_steps: null\n"
        "num_noise_levels: 5\nsigma_max: 50\n",
    )
    args, ncsn = parse_training_arguments("ncsn", ["--config", str(config)])
    assert args.learning_rate == 1e-4 and args.block_out_channels == [8, 16] and args.use_ema is False
    assert args.seed == 3 and args.max_train_steps is None  # null keeps the default
    assert ncsn.num_noise_levels == 5 and ncsn.sigma_max == 50.0
    argv = ["--seed", "7", f"--config={config}", "--block_out_channels", "4", "--use_ema", "true"]
    args, ncsn = parse_training_arguments("ncsn", argv)
    assert args.seed == 7 and args.block_out_channels == [4] and args.use_ema is True  # flags win, wherever given
    assert args.learning_rate == 1e-4 and ncsn.num_noise_levels == 5  # the rest still comes from the file


def test_a_value_is_never_read_as_a_flag(tmp_path):
    config = _write(tmp_path, 'dataset_name: "--push_to_hub"\n')
    args, _ = parse_training_arguments("ddpm", ["--config", str(config)])
    assert args.dataset_name == "--push_to_hub" and args.push_to_hub is False


@pytest.mark.parametrize(
    "text, match",
    [
        ("lerning_rate: 0.1\n", "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("config: other.yaml\n", "unknown key 'config'"),
        ("num_noise_levels: 4\n", "unknown key 'num_noise_levels'"),  # an NCSN key given to the DDPM script
    ],
)
def test_an_unknown_key_names_the_key_and_the_file(tmp_path, capsys, text, match):
    config = _write(tmp_path, text)
    with pytest.raises(ValueError, match="unknown key") as raised:
        parse_training_arguments("ddpm", ["--config", str(config)])
    assert match in str(raised.value) and str(config) in str(raised.value)
    assert main("ddpm", ["--config", str(config)]) == 2  # before anything is done
    assert match in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("resolution: eight\n", "resolution", "an integer"),
        ("resolution: 8.5\n", "resolution", "an integer"),
        ("resolution: true\n", "resolution", "an integer"),
        ("learning_rate: fast\n", "learning_rate", "a number"),
        ("learning_rate: [1, 2]\n", "learning_rate", "a number"),
        ("use_ema: maybe\n", "use_ema", "true or false"),
        ("use_ema: 1\n", "use_ema", "true or false"),
        ("block_out_channels: 8\n", "block_out_channels", "a non-empty list of integers"),
        ("block_out_channels: []\n", "block_out_channels", "a non-empty list of integers"),
        ("block_out_channels: [8, x]\n", "block_out_channels", "a non-empty list of integers"),
        ("output_dir: {a: 1}\n", "output_dir", "a string"),
        ("loss_type: l1\n", "loss_type", "one of 'simple', 'vlb', 'hybrid'"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_file(tmp_path, text, key, expected):
    config = _write(tmp_path, text)
    with pytest.raises(ValueError) as raised:
        parse_training_arguments("ddpm", ["--config", str(config)])
    message = str(raised.value)
    assert str(config) in message and f"key {key!r} must be {expected}" in message


def test_a_token_in_a_config_file_is_never_shown(tmp_path):
    config = _write(tmp_path, "hub_token: [hf_secretvalue123456789]\n")
    with pytest.raises(ValueError, match="'hub_token' must be a string") as raised:
        parse_training_arguments("ddpm", ["--config", str(config)])
    assert "hf_secretvalue" not in str(raised.value)


@pytest.mark.parametrize(
    "text, name, match",
    [
        ("- resolution\n- 8\n", "args.yaml", "expected a mapping of argument names to values, got a list"),
        ("resolution: [8\n", "args.yaml", "not valid YAML"),
        ("!!python/object/apply:os.system ['echo unsafe']\n", "args.yaml", "not valid YAML"),  # safe_load only
        ('{"resolution": 8,}', "args.json", "not valid JSON"),
    ],
)
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text, name, match):
    config = _write(tmp_path, text, name)
    with pytest.raises(ValueError, match=match):
        parse_training_arguments("ddpm", ["--config", str(config)])


def test_config_file_size_and_count_are_bounded(tmp_path):
    big = _write(tmp_path, "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ValueError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        parse_training_arguments("ddpm", ["--config", str(big)])
    empty = _write(tmp_path, "# nothing\n", "empty.yaml")
    assert parse_training_arguments("ddpm", ["--config", str(empty)])[0].resolution == 16  # the defaults
    with pytest.raises(ValueError, match="more than once"):
        parse_training_arguments("ddpm", ["--config", str(empty), "--config", str(empty)])
    with pytest.raises(ValueError, match="no such file"):
        parse_training_arguments("ddpm", ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="needs a YAML or JSON file"):
        parse_training_arguments("ddpm", ["--config"])


def test_a_json_config_file_still_works(tmp_path):
    config = _write(tmp_path, json.dumps({"ddpm_num_steps": 40, "beta_end": 0.05}), "args.json")
    args, ddpm = parse_training_arguments("ddpm", ["--config", str(config), "--beta_end", "0.04"])
    assert ddpm.ddpm_num_steps == 40 and ddpm.beta_end == 0.04


# --- the main job's settings: configs/main_job/<family>.yaml ---------------------------------------------------

# what scripts/main_job.py passed before the settings moved to configs/main_job/ (the reference)
MAIN_JOB_COMMON = [
    "--resolution", "8", "--center_crop", "true", "--block_out_channels", "32", "64", "64", "--layers_per_block", "1",
    "--train_batch_size", "64", "--max_train_steps", "2000", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
    "--lr_warmup_steps", "100", "--ema_max_decay", "0.999", "--ema_power", "0.75", "--checkpointing_steps", "500",
    "--checkpoints_total_limit", "1", "--num_preview_images", "64", "--logger", "tensorboard",
]  # fmt: skip
MAIN_JOB_FAMILIES = {
    "ncsn": ["--num_noise_levels", "20", "--sigma_min", "0.01", "--sigma_max", "auto", "--conditioning", "fourier",
             "--num_langevin_steps", "15", "--step_size", "4e-5"],
    "ddpm": ["--ddpm_num_steps", "250", "--ddpm_beta_schedule", "linear", "--beta_start", "4e-4", "--beta_end",
             "0.08"],
}  # fmt: skip
MAIN_JOB_QUICK_TRAIN = ["--max_train_steps", "30", "--block_out_channels", "8", "16", "--num_preview_images", "16",
                        "--checkpointing_steps", "10"]  # fmt: skip
MAIN_JOB_QUICK_FAMILY = {"ncsn": ["--num_langevin_steps", "3"], "ddpm": ["--ddpm_num_steps", "20"]}


def _main_job_module():
    spec = importlib.util.spec_from_file_location("main_job", ROOT / "scripts" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_the_main_job_configs_parse_to_the_arguments_they_replaced(tmp_path, family, quick):
    out = tmp_path / family
    reference = MAIN_JOB_COMMON + MAIN_JOB_FAMILIES[family]
    if quick:
        reference += MAIN_JOB_QUICK_TRAIN + MAIN_JOB_QUICK_FAMILY[family]
    expected = parse_training_arguments(family, reference + ["--output_dir", str(out)])
    got = parse_training_arguments(family, _main_job_module().train_argv(family, out, quick))
    assert [vars(a) for a in got] == [vars(a) for a in expected]
    assert all(type(v) is type(vars(expected[1])[k]) for k, v in vars(got[1]).items())  # 4e-05 stays a float


# --- the likelihood recipe: configs/likelihood/ddpm.yaml (README, "A recipe for the digits") ------------------

LIKELIHOOD_RECIPE = [
    "--resolution", "8", "--center_crop", "true", "--block_out_channels", "32", "64", "64", "--layers_per_block", "1",
    "--fourier_feature_exponents", "3", "4", "5",
    "--train_batch_size", "64", "--max_train_steps", "5000", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
    "--lr_warmup_steps", "100", "--ema_max_decay", "0.999", "--ema_power", "0.75", "--checkpointing_steps", "1000",
    "--checkpoints_total_limit", "1", "--num_preview_images", "16", "--logger", "tensorboard",
    "--ddpm_num_steps", "1000", "--ddpm_beta_schedule", "linear-logsnr", "--logsnr_max", "10", "--logsnr_min", "-10",
    "--variance_type", "learned_range", "--loss_type", "vlb", "--timestep_sampler", "loss-second-moment",
]  # fmt: skip


def test_the_likelihood_recipe_config_parses_and_validates(tmp_path):
    """Parsing only (no training): the file loads, passes every check (the linear-logsnr schedule is built to check
    its betas, learned_range with a loss that trains it) and means exactly the recipe's flags."""
    out = ["--output_dir", str(tmp_path / "out")]
    got = parse_training_arguments("ddpm", ["--config", str(ROOT / "configs" / "likelihood" / "ddpm.yaml"), *out])
    expected = parse_training_arguments("ddpm", LIKELIHOOD_RECIPE + out)
    assert [vars(a) for a in got] == [vars(a) for a in expected]
    args, ddpm = got
    assert ddpm.ddpm_beta_schedule == "linear-logsnr" and (ddpm.logsnr_max, ddpm.logsnr_min) == (10.0, -10.0)
    assert ddpm.variance_type == "learned_range" and ddpm.loss_type == "vlb" and args.max_train_steps == 5000
    assert args.fourier_feature_exponents == [3, 4, 5]
    assert not (tmp_path / "out").exists()  # parsing creates nothing
