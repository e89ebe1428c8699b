"""Class-conditional generation with classifier-free guidance: the guided output against its formula, sampling
against the exact guided distribution of Gaussian classes, training with --class_conditional, and bad inputs."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from PIL import Image
from safetensors.torch import load_file
from support.tiny_models import tiny_ddpm, tiny_ncsn, tiny_unet
from test_save_load import ROUTES, run_python

from hf_ddpm_ncsn import DDPMPosteriorPipeline, DDPMPosteriorScheduler, NCSNPipeline, NCSNScheduler
from hf_ddpm_ncsn.pipelines.guidance import guided_output
from hf_ddpm_ncsn.training import main
from hf_ddpm_ncsn.training.arguments import parse_training_arguments
from hf_ddpm_ncsn.training.conditioning import drop_labels

TINY_DDPM = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--train_batch_size", "16", "--logger", "none",
    "--num_preview_images", "4", "--lr_warmup_steps", "2", "--ddpm_num_steps", "20",
]  # fmt: skip


class GaussianClassModel(ModelMixin, ConfigMixin):
    """The exact noise prediction of a DDPM whose data given class c is N(mu_c, std^2 I): the last class is the
    "null" one, its own Gaussian N(mu_null, std^2 I). x_t | c is N(sqrt(abar_t) mu_c, v_t I) with
    v_t = abar_t std^2 + 1 - abar_t, so eps_c(x, t) = sqrt(1 - abar_t) (x - sqrt(abar_t) mu_c) / v_t."""

    @register_to_config
    def __init__(self, means: list[float], std: float, alphas_cumprod: list[float], sample_size: int = 2):
        super().__init__()
        self.register_buffer("abar", torch.tensor(alphas_cumprod))
        self.register_buffer("mu", torch.tensor(means))
        self.weight = torch.nn.Parameter(torch.zeros(()))  # gives the model a device and a dtype
        self.batch_sizes: list[int] = []

    def forward(self, x, t, class_labels=None):
        self.batch_sizes.append(len(x))
        abar = self.abar[t].reshape(-1, 1, 1, 1)
        mu = self.mu[class_labels].reshape(-1, 1, 1, 1)
        v = abar * self.config.std**2 + 1 - abar
        return UNet2DOutput(sample=(1 - abar).sqrt() * (x - abar.sqrt() * mu) / v)


def gaussian_pipeline(means, std=0.5, steps=1000):
    scheduler = DDPMPosteriorScheduler(num_train_timesteps=steps, clip_sample=False)  # Gaussians are unbounded
    model = GaussianClassModel(means, std, scheduler.alphas_cumprod.tolist())
    # what the pipeline reads of a UNet's config: the channels, the size and the class embeddings
    model.register_to_config(in_channels=1, num_class_embeds=len(means))
    pipe = DDPMPosteriorPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def final_sample(pipe, **call_kwargs):
    """The last step's sample, before the output's clamp to [-1, 1]."""
    chain = {}
    pipe(callback_on_step_end=lambda pipe, i, t, tensors: chain.update(tensors) or {}, **call_kwargs)
    return chain["sample"]


def conditional_ddpm(num_classes=3):
    pipe = DDPMPosteriorPipeline(
        unet=tiny_unet(num_class_embeds=num_classes + 1),
        scheduler=DDPMPosteriorScheduler(num_train_timesteps=20),
        class_names=[f"class {i}" for i in range(num_classes)],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def conditional_ncsn(num_classes=3):
    base = tiny_ncsn(fourier=True)
    pipe = NCSNPipeline(
        unet=tiny_unet(num_class_embeds=num_classes + 1, time_embedding_type="fourier"),
        scheduler=NCSNScheduler.from_config(base.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the guided output ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w", [1.0, 2.5, 7.0])
def test_the_guided_output_is_the_unconditional_plus_w_times_the_difference(w):
    pipe = gaussian_pipeline([-1.0, 2.0, 0.5])
    x, t, labels = torch.randn(4, 1, 2, 2), torch.tensor(500), torch.tensor([0, 1, 1, 0])
    eps_c = pipe.unet(x, t, class_labels=labels).sample
    eps_u = pipe.unet(x, t, class_labels=torch.full((4,), 2)).sample
    expected = eps_c if w == 1 else eps_u + w * (eps_c - eps_u)  # w = 1 is the conditional output itself
    assert torch.equal(pipe.model_output(x, t, labels, guidance_scale=w), expected)


def test_guidance_one_makes_one_call_per_step_without_a_null_batch_and_more_makes_one_doubled_call():
    pipe = gaussian_pipeline([-1.0, 2.0, 0.5], steps=10)
    pipe(batch_size=3, class_labels=1, output_type="pt")
    assert pipe.unet.batch_sizes == [3] * 10
    pipe.unet.batch_sizes.clear()
    pipe(batch_size=3, class_labels=1, guidance_scale=2.0, output_type="pt")
    assert pipe.unet.batch_sizes == [6] * 10


@pytest.mark.parametrize("make", [conditional_ddpm, conditional_ncsn])
def test_one_batched_call_equals_two_separate_calls_of_a_real_unet(make):
    pipe, w = make(), 3.0
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    t = pipe.scheduler.timesteps[1] if isinstance(pipe, NCSNPipeline) else torch.tensor(7)
    unet_t = pipe._unet_timestep(t)
    cond = pipe.unet(x, unet_t, class_labels=labels).sample
    uncond = pipe.unet(x, unet_t, class_labels=torch.full((2,), 3)).sample
    torch.testing.assert_close(pipe.model_output(x, t, labels, w), uncond + w * (cond - uncond))


def test_an_unconditional_pipeline_samples_exactly_as_before():
    pipe = tiny_ddpm()
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    # the chain written out with the UNet alone, as the pipeline ran it before guidance existed
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 1, 8, 8), generator=generator)
    pipe.scheduler.set_timesteps(20)
    for t in pipe.scheduler.timesteps:
        sample = pipe.scheduler.step(pipe.unet(sample, t).sample, t, sample, generator=generator).prev_sample
    assert torch.equal(images, (sample / 2 + 0.5).clamp(0, 1))


def test_a_conditional_model_without_labels_samples_the_null_class():
    pipe = conditional_ddpm()
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 1, 8, 8), generator=generator)
    pipe.scheduler.set_timesteps(20)
    null = torch.full((2,), 3)
    for t in pipe.scheduler.timesteps:
        output = pipe.unet(sample, t, class_labels=null).sample
        sample = pipe.scheduler.step(output, t, sample, generator=generator).prev_sample
    assert torch.equal(images, (sample / 2 + 0.5).clamp(0, 1))


def test_a_learned_variance_is_taken_from_the_conditional_output():
    def model(x, t, labels):  # channels: the prediction, then the variance, each a function of the label
        return torch.cat(
            [x + labels.reshape(-1, 1, 1, 1), 10 * labels.reshape(-1, 1, 1, 1).expand_as(x)], dim=1
        ).float()

    x, labels = torch.zeros(2, 1, 2, 2), torch.tensor([1, 2])
    out = guided_output(model, x, torch.tensor(3), labels, null_label=0, guidance_scale=3.0, guided_channels=1)
    assert torch.equal(out[:, :1], 3.0 * labels.reshape(-1, 1, 1, 1).expand_as(x).float())  # 0 + 3 (c - 0)
    assert torch.equal(out[:, 1:], 10.0 * labels.reshape(-1, 1, 1, 1).expand_as(x).float())


def test_labels_and_guidance_reach_inpainting_and_the_elbo_runs_on_the_null_class():
    pipe = gaussian_pipeline([-1.0, 2.0, 0.5], steps=10)
    image, mask = torch.zeros(1, 1, 2, 2), torch.tensor([[1, 0], [0, 0]])
    out = pipe(batch_size=2, class_labels=1, guidance_scale=2.0, image=image, mask_image=mask, output_type="pt")
    assert pipe.unet.batch_sizes == [4] * 10 and torch.equal(out.images[:, :, 1, :], torch.full((2, 1, 2), 0.5))
    elbo = conditional_ddpm().elbo(torch.full((2, 1, 8, 8), 128, dtype=torch.uint8))
    assert torch.isfinite(elbo.bits_per_dim).all()


# --- Gaussian classes: the guided sampler against the guided distribution in closed form -------------------------


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_guided_samples_of_gaussian_classes_have_the_mean_of_the_guided_score(w):
    # Both classes and the null class share the variance v_t of x_t, so s_u + w (s_c - s_u) is exactly the score
    # of N(sqrt(abar_t) mu_w, v_t) with mu_w = mu_u + w (mu_c - mu_u): guided sampling with the exact eps draws
    # N(mu_w, std^2) up to the sampler's error. For Gaussian data every ancestral step is affine and shrinks the
    # mean's error, which starts at the prior's sqrt(abar_T) |mu_w| (x_T ~ N(0, I)); the rest is sampling error
    # of n draws, below 5 standard errors but once in 3.5 million.
    means, std, n = [-1.0, 2.0, 0.5], 0.5, 4000  # classes 0 and 1, null class 2; n scalars per class
    pipe = gaussian_pipeline(means, std)
    for c in (0, 1):
        x = final_sample(pipe, batch_size=n // 4, class_labels=c, guidance_scale=w, generator=seeded(c))
        mu_w = means[2] + w * (means[c] - means[2])
        prior_error = math.sqrt(pipe.scheduler.alphas_cumprod[-1]) * abs(mu_w)
        tolerance = 5 * x.std().item() / math.sqrt(x.numel()) + prior_error
        assert abs(x.mean().item() - mu_w) < tolerance, (c, x.mean().item(), mu_w)


@pytest.mark.parametrize("make", [conditional_ddpm, conditional_ncsn])
@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_labels_and_guidance_reach_the_predictor_corrector_and_ode_samplers(make, sampler):
    """Every UNet call of the other samplers gets the labels and, with w > 1, the null class beside them (a
    sampler that called the UNet on its own would sample the null class, or fail on a conditional UNet)."""
    pipe, seen = make(), []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    pipe(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, sampler=sampler, num_inference_steps=3,
         output_type="pt")  # fmt: skip
    assert seen and all(labels == [0, 2, 3, 3] for labels in seen)


def test_the_ode_likelihood_of_a_conditional_model_scores_its_null_class():
    pipe, seen = conditional_ddpm(), []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=seeded(0), dtype=torch.uint8)
    out = pipe.ode_likelihood(images, generator=seeded(1), method="euler", num_steps=2)
    assert torch.isfinite(out.bits_per_dim).all() and seen and all(set(labels) == {3} for labels in seen)


def test_numpy_integer_labels_are_accepted_and_a_float_label_is_named():
    pipe = conditional_ddpm()
    pipe.check_inputs(batch_size=2, class_labels=np.int64(1))
    pipe.check_inputs(batch_size=2, class_labels=np.arange(2))
    with pytest.raises(ValueError, match="class_labels must be an int"):
        pipe.check_inputs(batch_size=2, class_labels=3.0)


# --- bad inputs, refused before any UNet call --------------------------------------------------------------------


def _no_unet_calls(pipe):
    def refuse(*args, **kwargs):
        raise AssertionError("the UNet was called before the arguments were checked")

    pipe.unet.forward = refuse
    return pipe


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": 3}, r"class_labels must lie in 0\.\.2"),
        ({"class_labels": [0, -1, 1]}, r"class_labels must lie in 0\.\.2"),
        ({"class_labels": [0, 1]}, "class_labels has 2 labels but batch_size=3"),
        ({"class_labels": torch.zeros(3)}, "class_labels must be an integer tensor"),
        ({"class_labels": [0.5, 1, 1]}, "class_labels must be an int"),
        ({"class_labels": 1, "guidance_scale": 0.5}, "guidance_scale must be a finite number >= 1"),
        ({"class_labels": 1, "guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 1"),
        ({"class_labels": 1, "guidance_scale": float("inf")}, "guidance_scale must be a finite number >= 1"),
        ({"guidance_scale": 2.0}, "guidance_scale=2.0 needs class_labels"),
    ],
)
@pytest.mark.parametrize("make", [conditional_ddpm, conditional_ncsn])
def test_bad_guidance_arguments_are_named_before_any_unet_call(make, kwargs, match):
    pipe = _no_unet_calls(make())
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=3, **kwargs)
    with pytest.raises(ValueError, match=match):
        pipe.check_inputs(batch_size=3, **kwargs)


@pytest.mark.parametrize("make", [tiny_ddpm, tiny_ncsn])
def test_class_labels_on_an_unconditional_unet_are_refused(make):
    with pytest.raises(ValueError, match="class_labels were given but the UNet is unconditional"):
        _no_unet_calls(make())(batch_size=2, class_labels=0)


def test_class_names_must_match_the_class_embeddings():
    with pytest.raises(ValueError, match="class_names has 2 names but the UNet has num_class_embeds=4"):
        DDPMPosteriorPipeline(unet=tiny_unet(num_class_embeds=4), scheduler=DDPMPosteriorScheduler(), class_names="ab")


# --- training --------------------------------------------------------------------------------------------------


def test_null_class_dropout_replaces_labels_at_the_asked_rate():
    labels = torch.arange(100_000) % 10
    torch.manual_seed(0)
    dropped = drop_labels(labels, 10, 0.1)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    # a binomial count: within 5 standard deviations of n p
    n, p = len(labels), 0.1
    assert abs((~kept).sum().item() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert torch.equal(drop_labels(labels, 10, 0.0), labels)
    assert (drop_labels(labels, 10, 1.0) == 10).all()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_class_dropout_prob_outside_zero_one_is_refused_at_parse_time(tmp_path, value):
    with pytest.raises(ValueError, match="--class_dropout_prob must be a finite number in"):
        parse_training_arguments("ddpm", ["--output_dir", str(tmp_path), "--class_dropout_prob", value])


def test_class_conditional_on_a_dataset_without_labels_fails_before_training(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        Image.new("L", (8, 8), color=6 * i).save(images / f"{i}.png")
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--train_data_dir", str(images), "--max_train_steps", "1", "--class_conditional"]
    assert main("ddpm", [*argv, *TINY_DDPM]) == 1
    assert "--class_conditional needs a dataset with labels" in capsys.readouterr().err
    assert not (out / "model_index.json").exists()


def test_a_class_conditional_run_saves_reloads_samples_and_resumes_bit_identically(tmp_path):
    out = tmp_path / "run"
    argv = [*TINY_DDPM, "--class_conditional", "--checkpointing_steps", "4", "--max_train_steps", "8"]
    assert main("ddpm", ["--output_dir", str(out), *argv]) == 0
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 11
    card = (out / "README.md").read_text()
    assert "This model is class-conditional" in card
    assert all(f"| {d} | {d} |" in card for d in range(10))

    pipe = DDPMPosteriorPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.class_names == [str(d) for d in range(10)]
    images = pipe(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()

    # resumed from step 4: the restored RNG draws the same null-class dropouts, timesteps and noise
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-4", resumed / "checkpoint-4")
    assert main("ddpm", ["--output_dir", str(resumed), *argv, "--resume_from_checkpoint", "latest"]) == 0
    expected, got = (load_file(d / "unet" / "diffusion_pytorch_model.safetensors") for d in (out, resumed))
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_class_conditional_ncsn_run_saves_its_classes(tmp_path):
    out = tmp_path / "ncsn"
    argv = [*TINY_DDPM[:-2], "--num_noise_levels", "4", "--num_langevin_steps", "2", "--class_conditional"]
    assert main("ncsn", ["--output_dir", str(out), "--max_train_steps", "2", *argv]) == 0
    pipe = NCSNPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds == 11 and pipe.class_names == [str(d) for d in range(10)]
    assert "This model is class-conditional" in (out / "README.md").read_text()


def test_class_names_survive_every_loading_route(tmp_path):
    conditional_ddpm().save_pretrained(tmp_path / "saved")
    # one fresh process for all routes (startup is most of the cost), the one that must not import the package first
    routes = sorted(ROUTES, key=lambda route: route != "trust_remote_code without import")
    code = "\n".join(
        ROUTES[route].format(cls="DDPMPosteriorPipeline", src=str(tmp_path / "saved")) + "\nprint(pipe.class_names)"
        for route in routes
    )
    printed = run_python(code, env={"HF_HOME": str(tmp_path / "hf_home")}).strip().splitlines()
    assert printed == ["['class 0', 'class 1', 'class 2']"] * len(ROUTES)


@pytest.mark.parametrize("family", ["ddpm", "ncsn"])
def test_the_conditional_recipe_is_the_main_job_plus_class_conditional(tmp_path, family):
    root = Path(__file__).resolve().parent.parent / "configs"
    out = ["--output_dir", str(tmp_path / "out")]
    main_job = parse_training_arguments(family, ["--config", str(root / "main_job" / f"{family}.yaml"), *out])
    recipe = parse_training_arguments(family, ["--config", str(root / "conditional" / f"{family}.yaml"), *out])
    expected = parse_training_arguments(
        family, ["--config", str(root / "main_job" / f"{family}.yaml"), *out, "--class_conditional", "true"]
    )
    assert [vars(a) for a in recipe] == [vars(a) for a in expected] != [vars(a) for a in main_job]
