import io

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from support.tiny_models import tiny_ddpm, tiny_ncsn, tiny_unet

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.likelihood import elbo_bpd, stratified_elbo_bpd
from hf_ddpm_ncsn.progress import LOG_UPDATE_INTERVAL, tqdm_kwargs


def _seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_output_types_and_channels(make, channels, mode):
    pipe = make(channels=channels)
    pil = pipe(batch_size=2, generator=_seed()).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].mode == mode and pil[0].size == (8, 8)
    arr = pipe(batch_size=2, generator=_seed(), output_type="np").images
    assert arr.shape == (2, 8, 8, channels) and arr.dtype == np.float32 and 0 <= arr.min() <= arr.max() <= 1
    pt = pipe(batch_size=2, generator=_seed(), output_type="pt").images
    assert pt.shape == (2, channels, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]).reshape(8, 8, -1), np.round(arr[0] * 255).astype(np.uint8))
    (tup,) = pipe(batch_size=1, generator=_seed(), output_type="np", return_dict=False)
    assert tup.shape == (1, 8, 8, channels)


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_same_seed_same_images_and_other_sizes(make):
    pipe = make(sample_size=16)
    a = pipe(batch_size=2, generator=_seed(3), output_type="np").images
    b = pipe(batch_size=2, generator=_seed(3), output_type="np").images
    c = pipe(batch_size=2, generator=_seed(4), output_type="np").images
    assert a.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("fourier", [False, True])
def test_ncsn_pipeline_is_the_scheduler_loop(fourier):
    pipe = tiny_ncsn(fourier=fourier)
    fed = []
    pipe.unet.register_forward_pre_hook(lambda module, args: fed.append(args[1]))
    got = pipe(batch_size=2, generator=_seed(), output_type="pt").images
    scheduler = pipe.scheduler
    embedding = "fourier" if fourier else "positional"
    expected_inputs = [scheduler.model_timestep(t, embedding) for t in scheduler.timesteps]
    assert [float(x) for x in fed] == [float(x) for x in expected_inputs]
    if fourier:
        assert float(fed[0]) == pytest.approx(1.0) and float(fed[-1]) == pytest.approx(0.05)
    # the same chain written out by hand
    g = _seed()
    x = scheduler.init_noise_sigma * torch.randn(2, 1, 8, 8, generator=g)
    scheduler.set_timesteps()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = pipe.unet(x, scheduler.model_timestep(t, pipe.unet.config.time_embedding_type)).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
    torch.testing.assert_close(got, (x / 2 + 0.5).clamp(0, 1))


def test_ncsn_overrides_and_callback():
    pipe = tiny_ncsn()
    calls = []

    def callback(p, i, t, tensors):
        calls.append(int(t))
        return {"sample": tensors["sample"] * 0}

    out = pipe(
        batch_size=1,
        num_inference_steps=2,
        num_langevin_steps=3,
        step_size=1e-5,
        callback_on_step_end=callback,
        output_type="np",
    ).images
    assert calls == [3, 3, 3, 0, 0, 0, 0]  # 2 levels x 3 steps + the final denoise
    np.testing.assert_allclose(out, 0.5)  # the callback zeroed the sample after the last step
    assert pipe.scheduler.step_size == 1e-5
    pipe(batch_size=1)  # overrides do not stick
    assert pipe.scheduler.step_size == pipe.scheduler.config.step_size
    assert len(pipe.scheduler.timesteps) == 4 * 2 + 1


def test_ddpm_pipeline_matches_diffusers_ddpm_pipeline():
    unet = tiny_unet()
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100))
    ours = tiny_ddpm(num_train_timesteps=100)
    ours.unet = unet
    theirs.set_progress_bar_config(disable=True)
    a = ours(batch_size=2, generator=_seed(), num_inference_steps=10, output_type="np").images
    b = theirs(batch_size=2, generator=_seed(), num_inference_steps=10, output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_ddpm_pipeline_learned_variance_unet():
    pipe = tiny_ddpm(variance_type="learned_range")
    pipe.unet = tiny_unet(out_channels=2)
    assert pipe(batch_size=2, generator=_seed(), output_type="pt").images.shape == (2, 1, 8, 8)
    assert torch.isfinite(pipe.elbo(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).bits_per_dim).all()


def test_elbo_through_the_pipeline():
    pipe = tiny_ddpm(num_train_timesteps=12)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=_seed())
    out = pipe.elbo(images, generator=_seed(), batch_size=12)
    assert out.terms.shape == (3, 12) and out.prior.shape == (3,)
    torch.testing.assert_close(out.bits_per_dim, out.terms.sum(1) + out.prior)
    assert (out.terms >= 0).all()
    as_float = pipe.elbo(images.float() / 127.5 - 1, generator=_seed(), batch_size=12)
    torch.testing.assert_close(as_float.bits_per_dim, out.bits_per_dim)
    direct = elbo_bpd(lambda x, t: pipe.unet(x, t).sample, pipe.scheduler, images.float() / 127.5 - 1, _seed(), 12)
    torch.testing.assert_close(direct.terms, out.terms)


def test_stratified_elbo_through_the_pipeline():
    pipe = tiny_ddpm(num_train_timesteps=12)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=_seed())
    out = pipe.stratified_elbo(images, num_strata=4, generator=_seed())
    assert out.terms.shape == (3, 4) and out.stratum_sizes.sum() == 12
    direct = stratified_elbo_bpd(lambda x, t: pipe.unet(x, t).sample, pipe.scheduler, images.float() / 127.5 - 1, 4,
                                 generator=_seed())  # fmt: skip
    torch.testing.assert_close(out.bits_per_dim, direct.bits_per_dim, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [({"num_strata": 13}, "num_strata must lie in"),
                                           ({"num_strata": 3, "spacing": "cubic"}, "spacing")])  # fmt: skip
def test_stratified_elbo_refuses_bad_strata_before_calling_the_unet(kwargs, match):
    pipe = tiny_ddpm(num_train_timesteps=12)
    pipe.unet.forward = None  # any UNet call would fail with a TypeError
    with pytest.raises(ValueError, match=match):
        pipe.stratified_elbo(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), **kwargs)


def test_pipeline_stratified_elbo_passes_spacing_and_progress_through():
    pipe = tiny_ddpm(num_train_timesteps=12)
    calls = []
    pipe.progress_bar = lambda iterable=None, total=None: calls.append(len(iterable)) or iterable
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=_seed())
    out = pipe.stratified_elbo(images, num_strata=4, generator=_seed(), spacing="linear")
    assert out.stratum_sizes.tolist() == [3, 3, 3, 3]  # log spacing would give t = 0 its own stratum
    direct = stratified_elbo_bpd(lambda x, t: pipe.unet(x, t).sample, pipe.scheduler, images.float() / 127.5 - 1, 4,
                                 generator=_seed(), spacing="linear")  # fmt: skip
    torch.testing.assert_close(out.bits_per_dim, direct.bits_per_dim, rtol=0, atol=0)
    assert calls == [4]  # the progress bar wraps the K chunks (default batch_size = B: one stratum per call)


@pytest.mark.parametrize("method", ["elbo", "stratified_elbo"])
@pytest.mark.parametrize("generator", [0, "seed", [torch.Generator()]])
def test_pipeline_likelihoods_refuse_anything_but_one_generator(method, generator):
    pipe = tiny_ddpm(num_train_timesteps=12)
    pipe.unet.forward = None  # refused before any UNet call
    kwargs = {"num_strata": 3} if method == "stratified_elbo" else {}
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        getattr(pipe, method)(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), generator=generator, **kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_bad_batch_size_is_refused_before_the_generator_is_used(batch_size):
    pipe = tiny_ddpm(num_train_timesteps=12)
    g = _seed(5)
    state = g.get_state()
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        pipe.stratified_elbo(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 3, generator=g, batch_size=batch_size)
    assert torch.equal(g.get_state(), state)


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bars_update_rarely_when_stderr_is_a_log(monkeypatch):
    assert tqdm_kwargs(_Stream(True)) == {}
    assert tqdm_kwargs(_Stream(False))["mininterval"] == LOG_UPDATE_INTERVAL
    monkeypatch.setattr("sys.stderr", _Stream(False))
    pipe = tiny_ddpm()
    del pipe._progress_bar_config  # as a freshly loaded pipeline, never configured
    pipe.progress_bar(range(2))
    assert pipe._progress_bar_config["mininterval"] == LOG_UPDATE_INTERVAL
    pipe.set_progress_bar_config(disable=True)  # a caller's own configuration wins
    pipe.progress_bar(range(2))
    assert pipe._progress_bar_config == {"disable": True}


def test_zero_inference_steps_is_an_error_not_the_full_chain():
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_ddpm()(num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_ncsn()(num_inference_steps=0)


def test_elbo_rejects_data_off_the_8bit_grid():
    pipe = tiny_ddpm()
    with pytest.raises(ValueError, match="8-bit data scaled to \\[-1, 1\\]"):
        pipe.elbo(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"output_type": "latent"}, "output_type.*'pil', 'np', 'pt'"),
        ({"batch_size": 0}, "batch_size"),
        ({"callback_on_step_end_tensor_inputs": ["latents"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_bad_call_arguments_are_named(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make()(**kwargs)


def test_a_ddpm_folder_saved_by_diffusers_loads_and_gets_bits_per_dim(tmp_path):
    from hf_ddpm_ncsn import DDPMPosteriorPipeline

    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path)
    pipe = DDPMPosteriorPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.scheduler, DDPMPosteriorScheduler)
    assert pipe.scheduler.config.num_train_timesteps == 10
    pipe.set_progress_bar_config(disable=True)
    out = pipe.elbo(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    assert out.terms.shape == (1, 10) and torch.isfinite(out.bits_per_dim).all()


@pytest.mark.parametrize("sigma_max", [5.0, 0.3])
def test_the_ncsn_chain_starts_from_noise_of_std_sigma_max(sigma_max):
    pipe = tiny_ncsn()
    pipe.scheduler = NCSNScheduler(num_train_timesteps=3, sigma_min=0.05, sigma_max=sigma_max, num_langevin_steps=1)
    first = []
    pipe.unet.register_forward_pre_hook(lambda module, args: first.append(args[0].clone()) if not first else None)
    pipe(batch_size=64, generator=_seed(), output_type="pt")
    # 4,096 values: the sample std is within 3 standard errors (sigma / sqrt(2 n) each) of sigma_max
    assert first[0].std().item() == pytest.approx(sigma_max, abs=3 * sigma_max / (2 * first[0].numel()) ** 0.5)


@pytest.mark.parametrize("make", [tiny_ncsn, tiny_ddpm])
def test_generators_are_checked_before_sampling(make):
    pipe = make()
    with pytest.raises(ValueError, match="list of 1 generators but batch_size=2"):
        pipe(batch_size=2, generator=[_seed()])
    with pytest.raises(ValueError, match="generator must be a torch.Generator.*got int"):
        pipe(batch_size=2, generator=0)
    a = pipe(batch_size=2, generator=[_seed(1), _seed(2)], output_type="pt").images
    b = pipe(batch_size=2, generator=[_seed(1), _seed(2)], output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # one generator per image works, reproducibly


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.full((1, 1, 8, 8), float("nan")), "8-bit data scaled"),
        (torch.zeros(0, 1, 8, 8, dtype=torch.uint8), "images is empty"),
        (
            torch.zeros(2, 8, 8, dtype=torch.uint8),
            "\\(B, 1, 8, 8\\) tensor for this UNet, got torch.uint8 \\(2, 8, 8\\)",
        ),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "\\(B, 1, 8, 8\\) tensor for this UNet"),
        (torch.zeros(2, 3, 8, 8), "\\(B, 1, 8, 8\\) tensor for this UNet"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "uint8 or float"),
        (np.zeros((2, 1, 8, 8), dtype=np.uint8), "got ndarray"),
    ],
)
def test_elbo_refuses_images_it_cannot_score(images, match):
    with pytest.raises(ValueError, match=match):
        tiny_ddpm().elbo(images)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_elbo_refuses_a_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        tiny_ddpm().elbo(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), batch_size=batch_size)


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (tiny_ncsn, {"num_inference_steps": 5}, "cannot exceed the 4 trained noise levels"),
        (tiny_ncsn, {"num_langevin_steps": 0}, "num_langevin_steps"),
        (tiny_ncsn, {"step_size": float("inf")}, "step_size"),
        (tiny_ddpm, {"num_inference_steps": 21}, "cannot exceed num_train_timesteps=20"),
        (tiny_ddpm, {"generator": "seed"}, "generator must be"),
    ],
)
def test_check_inputs_refuses_what_the_call_would_without_sampling(make, kwargs, match):
    pipe = make()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=match):
        pipe.check_inputs(batch_size=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=2, **kwargs)
    assert not calls
