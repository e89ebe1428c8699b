"""FourierFeaturesUNet2DModel: the features in closed form, the wiring into UNet2DModel, every loading route,
untrusted configs, and training with --fourier_feature_exponents."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from support.tiny_models import tiny_unet
from test_save_load import check_route

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler, FourierFeaturesUNet2DModel
from hf_ddpm_ncsn.training import main
from hf_ddpm_ncsn.unets import build_unet, default_unet_config, load_unet_config

EXPONENTS = [3, 4, 5]


def tiny_fourier_unet(channels: int = 1, out_channels: int | None = None, exponents=EXPONENTS):
    config = default_unet_config((8, 16), layers_per_block=1, attention=False)
    config["fourier_feature_exponents"] = exponents
    torch.manual_seed(0)
    return build_unet(config, 8, channels, out_channels or channels)


def plain_twin(model: FourierFeaturesUNet2DModel) -> UNet2DModel:
    """A UNet2DModel with the same weights whose input is the features."""
    config = {k: v for k, v in model.config.items() if k != "fourier_feature_exponents"}
    plain = UNet2DModel.from_config({**config, "in_channels": model.conv_in.in_channels}).eval()
    plain.load_state_dict(model.state_dict())
    return plain


def test_the_features_are_the_sines_and_cosines_of_each_channel():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    features = tiny_fourier_unet(channels=3).input_features(x).double().numpy()
    xs = x.double().numpy()
    angles = [2.0**n * np.pi * xs[:, [c]] for c in range(3) for n in EXPONENTS]
    # channel layout: the sample, then for each channel its K sines, then the same for the cosines
    expected = np.concatenate([xs, *map(np.sin, angles), *map(np.cos, angles)], axis=1)
    assert features.shape == (2, 3 * 7, 4, 4)
    # float32: pi 2^n and its product with x each round by at most 2^-24 relative, sin / cos add about an ulp
    angle = np.abs(np.concatenate([xs, *angles, *angles], axis=1))
    assert (np.abs(features - expected) <= 3 * 2.0**-24 * angle + 2.0**-23).all()


def test_on_the_grid_of_period_two_to_the_one_minus_n_the_feature_is_at_phase_zero():
    # the digits' 17 levels are 0.125 = 2^(1-4) apart in [-1, 1]: the n = 4 feature is (0, 1) on every level
    levels = torch.linspace(-1, 1, 17).view(1, 1, 1, 17)
    features = tiny_fourier_unet().input_features(levels)
    sin4, cos4 = features[:, 1 + EXPONENTS.index(4)], features[:, 1 + len(EXPONENTS) + EXPONENTS.index(4)]
    assert sin4.abs().max() < 1e-5 and (cos4 - 1).abs().max() < 1e-5


def test_the_unet_is_a_unet2dmodel_fed_the_features():
    model = tiny_fourier_unet(out_channels=2).eval()
    plain = plain_twin(model)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 7, 19])
    with torch.no_grad():
        expected = plain(model.input_features(x), t).sample
        got = model(x, t).sample
    assert got.shape == (3, 2, 8, 8) and torch.equal(got, expected)
    assert model.config.in_channels == 1 and model.conv_in.in_channels == 7  # samplers feed images, not features


def test_half_precision_forms_the_angles_in_float32():
    model = tiny_fourier_unet()
    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    half = model.input_features(x.half())
    assert half.dtype == torch.float16
    assert torch.equal(half[:, 1:], model.input_features(x.half().float())[:, 1:].half())


def test_a_half_precision_model_keeps_the_exact_frequencies():
    # a float16 buffer would hold 2^5 pi = 100.53 as 100.5: an error of 0.03 rad per unit of x
    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).half()
    expected = tiny_fourier_unet().input_features(x.float()).half()
    assert torch.equal(tiny_fourier_unet().half().input_features(x), expected)


def test_skip_blocks_are_refused():
    with pytest.raises(ValueError, match="skip blocks"):
        FourierFeaturesUNet2DModel(
            sample_size=8,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "SkipDownBlock2D"),
            up_block_types=("SkipUpBlock2D", "UpBlock2D"),
        )


def test_save_and_reload_keep_the_exponents_and_the_weights(tmp_path):
    model = tiny_fourier_unet()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "FourierFeaturesUNet2DModel" and config["fourier_feature_exponents"] == EXPONENTS
    loaded = FourierFeaturesUNet2DModel.from_pretrained(tmp_path)
    assert loaded.config.fourier_feature_exponents == EXPONENTS
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert load_unet_config(str(tmp_path))["fourier_feature_exponents"] == EXPONENTS  # --model_config_name_or_path


@pytest.mark.parametrize(
    "exponents",
    [[3, 3], [], [17], [-1], [2.5], list(range(9)), "34", [True]],
)
def test_bad_exponents_are_refused_naming_the_key(exponents):
    with pytest.raises(ValueError, match="fourier_feature_exponents"):
        tiny_fourier_unet(exponents=exponents)


def test_an_untrusted_config_is_refused_before_any_weight_is_read(tmp_path):
    tiny_fourier_unet().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "fourier_feature_exponents": list(range(10**6))}))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    with pytest.raises(ValueError, match="fourier_feature_exponents"):
        FourierFeaturesUNet2DModel.from_pretrained(tmp_path)


def test_center_input_sample_is_refused():
    with pytest.raises(ValueError, match="center_input_sample"):
        FourierFeaturesUNet2DModel(sample_size=8, block_out_channels=(8, 16), center_input_sample=True)


def _fourier_ddpm() -> DDPMPosteriorPipeline:
    pipe = DDPMPosteriorPipeline(unet=tiny_fourier_unet(), scheduler=DDPMPosteriorScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
@pytest.mark.parametrize("route", ["own class", "DiffusionPipeline after import", "trust_remote_code without import"])
def test_every_loading_route_gives_the_fourier_unet_and_the_same_images(tmp_path, route):
    pipe = _fourier_ddpm()
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "FourierFeaturesUNet2DModel"]
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    check_route(route, "DDPMPosteriorPipeline", str(folder), tmp_path, expected, env={"HF_HOME": str(tmp_path / "h")})


def test_diffusers_ddpm_pipeline_samples_with_it_as_with_a_unet2dmodel_fed_the_features():
    model = tiny_fourier_unet().eval()
    plain = plain_twin(model)
    theirs = DDPMPipeline(unet=model, scheduler=DDPMScheduler(num_train_timesteps=20))
    theirs.set_progress_bar_config(disable=True)
    got = theirs(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=20, output_type="np")
    # diffusers' loop (DDPMPipeline.__call__) written out with the plain UNet fed the features
    generator, scheduler = torch.Generator().manual_seed(0), DDPMScheduler(num_train_timesteps=20)
    x = randn_tensor((2, 1, 8, 8), generator=generator)
    scheduler.set_timesteps(20)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(plain(model.input_features(x), t).sample, t, x, generator=generator).prev_sample
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert got.images.shape == (2, 8, 8, 1) and np.array_equal(got.images, expected)


def test_the_likelihoods_run_on_it():
    pipe = _fourier_ddpm()
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    elbo = pipe.elbo(images, generator=torch.Generator().manual_seed(0)).bits_per_dim
    ode = pipe.ode_likelihood(images, generator=torch.Generator().manual_seed(0), method="euler", num_steps=4)
    assert torch.isfinite(elbo).all() and torch.isfinite(ode.bits_per_dim).all()


# --- training ---------------------------------------------------------------------------------------------------

TINY_DDPM = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--train_batch_size", "16", "--logger", "none",
    "--num_preview_images", "2", "--lr_warmup_steps", "2", "--ddpm_num_steps", "20",
]  # fmt: skip


def test_training_with_fourier_features_saves_a_fourier_unet_with_its_ema_weights(tmp_path):
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "2", *TINY_DDPM,
            "--fourier_feature_exponents", "3", "4", "5", "--variance_type", "learned_range",
            "--loss_type", "vlb"]  # fmt: skip
    assert main("ddpm", argv) == 0
    pipe = DDPMPosteriorPipeline.from_pretrained(out)
    assert type(pipe.unet) is FourierFeaturesUNet2DModel and pipe.unet.config.fourier_feature_exponents == EXPONENTS
    assert pipe.unet.conv_in.in_channels == 7 and pipe.unet.config.out_channels == 2
    # resuming the same run rebuilds the same model (the checkpoint's UNet config includes the exponents)
    assert main("ddpm", [*argv[:3], "4", *argv[4:], "--resume_from_checkpoint", "latest"]) == 0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--fourier_feature_exponents", "3", "3"], "--fourier_feature_exponents=[3, 3] must be 1 to 8 distinct"),
        (["--fourier_feature_exponents", "20"], "--fourier_feature_exponents=[20] must be 1 to 8 distinct"),
        (["--model_config_name_or_path", "user/unet", "--fourier_feature_exponents", "4"], "cannot be combined"),
    ],
)
def test_bad_exponents_are_named_at_parse_time(tmp_path, capsys, argv, match):
    assert main("ddpm", ["--output_dir", str(tmp_path / "never"), *TINY_DDPM, *argv]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_the_plain_unet_is_unchanged_without_the_flag():
    assert type(tiny_unet()) is UNet2DModel
