"""Sampling a noise-conditional score network with annealed Langevin dynamics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import ImagePipelineOutput, UNet2DModel

from ..schedulers.scheduling_ncsn import NCSNScheduler
from .guidance import ClassLabels, prepare_class_labels
from .inpainting import check_reconstruction_guidance, ncsn_inpainting_loop, reconstruction_guided
from .sampler_arguments import (
    check_callback_supported,
    check_inpainting_sampler,
    fill_langevin_options,
    sampler_options,
)
from .shareable_pipeline import ShareablePipeline

#: `sampler=` values: annealed Langevin dynamics (the scheduler's chain), predictor-corrector, probability-flow ODE,
#: the ODE over the noisiest levels then annealed Langevin dynamics.
SAMPLERS = ("langevin", "pc", "ode", "ode_langevin")


class NCSNPipeline(ShareablePipeline):
    """Unconditional image generation with an NCSN (Song & Ermon 2019).

    The UNet is either a default `UNet2DModel`, fed the noise-level index, or one with
    `time_embedding_type="fourier"`, fed sigma_t (it embeds log sigma and divides its output by sigma: NCSNv2's
    s(x) / sigma); `NCSNScheduler.model_timestep` picks the value.

    Args:
        unet (`UNet2DModel`): the score (or noise) network.
        scheduler (`NCSNScheduler`): the noise levels and the Langevin sampler.
        class_names (`list[str]`, *optional*): the names of a class-conditional UNet's classes 0..K-1, saved in
            model_index.json.
    """

    model_card_family = "ncsn"
    loadable_class_names = ("NCSNPipeline",)

    def __init__(self, unet: UNet2DModel, scheduler: NCSNScheduler, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._register_class_names(class_names)

    def check_inputs(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        num_langevin_steps: int | None = None,
        step_size: float | None = None,
        output_type: str = "pil",
        callback_on_step_end_tensor_inputs: list[str] = ["sample"],  # noqa: B006 (diffusers' signature)
        image: Any = None,
        mask_image: Any = None,
        sampler: str = "langevin",
        snr: float | None = None,
        num_corrector_steps: int | None = None,
        ode_method: str | None = None,
        ode_rtol: float | None = None,
        ode_atol: float | None = None,
        callback_on_step_end: Callable | None = None,
        class_labels: ClassLabels | None = None,
        guidance_scale: float = 1.0,
        reconstruction_guidance_scale: float = 0.0,
        latents: torch.Tensor | None = None,
        num_ode_steps: int | None = None,
        ode_time_spacing: str | None = None,
    ) -> dict:
        """Raise a `ValueError` naming the argument for anything `__call__` would refuse, without sampling (the
        arguments are those of `__call__`); return the sampler's checked options."""
        self._check_call_arguments(batch_size, generator, output_type, callback_on_step_end_tensor_inputs)
        self._known_pixels(image, mask_image, batch_size)
        check_reconstruction_guidance(reconstruction_guidance_scale, image)
        self._check_latents(latents, batch_size)
        check_inpainting_sampler(image, sampler, SAMPLERS[0])
        options = sampler_options(
            sampler,
            SAMPLERS,
            num_langevin_steps=num_langevin_steps,
            step_size=step_size,
            snr=snr,
            num_corrector_steps=num_corrector_steps,
            ode_method=ode_method,
            ode_rtol=ode_rtol,
            ode_atol=ode_atol,
            num_ode_steps=num_ode_steps,
            ode_time_spacing=ode_time_spacing,
        )
        check_callback_supported(sampler, SAMPLERS[0], callback_on_step_end)
        self._check_ode_sampler(sampler)
        prepare_class_labels(class_labels, guidance_scale, self.unet.config, batch_size)
        self._check_timesteps(
            num_inference_steps=num_inference_steps, num_langevin_steps=num_langevin_steps, step_size=step_size
        )
        if sampler == "ode_langevin":
            num_levels = num_inference_steps or self.scheduler.config.num_train_timesteps
            config = self.scheduler.config
            fill_langevin_options(options, num_levels, config.num_langevin_steps, config.step_size)
        return options

    def _sampler_levels(self, num_inference_steps: int | None) -> list[int]:
        """The levels the default chain visits, each once: noisiest (sigma_max) first, sigma_min last."""
        self.scheduler.set_timesteps(num_inference_steps, 1, device=self._execution_device)
        return self.scheduler.timesteps[: self.scheduler.num_inference_steps].tolist()

    def _unet_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The level index, or sigma for a `time_embedding_type="fourier"` UNet (`NCSNScheduler.model_timestep`), on
        the timestep's device (the chain's timesteps are on the execution device already)."""
        return self.scheduler.model_timestep(timestep, self.unet.config.time_embedding_type)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        num_langevin_steps: int | None = None,
        step_size: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["sample"],  # noqa: B006 (diffusers' signature)
        image: Any = None,
        mask_image: Any = None,
        sampler: str = "langevin",
        snr: float | None = None,
        num_corrector_steps: int | None = None,
        ode_method: str | None = None,
        ode_rtol: float | None = None,
        ode_atol: float | None = None,
        class_labels: ClassLabels | None = None,
        guidance_scale: float = 1.0,
        reconstruction_guidance_scale: float = 0.0,
        latents: torch.Tensor | None = None,
        num_ode_steps: int | None = None,
        ode_time_spacing: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Draw samples by annealed Langevin dynamics (default), predictor-corrector or the probability-flow ODE, or
        inpaint `image` where `mask_image` is white (annealed Langevin).

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or a list of them, *optional*): makes sampling reproducible.
            num_inference_steps (`int`, *optional*): number of noise levels to visit (default: all trained ones;
                fewer keeps a subset evenly spread in log sigma).
            num_langevin_steps (`int`, *optional*): Langevin updates per level (default: the scheduler's), also of
                `"ode_langevin"`.
            step_size (`float`, *optional*): eps of eta_t = eps sigma_t^2 / sigma_min^2 (default: the scheduler's).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` ((B, H, W, C) in [0, 1]) or `"pt"`
                ((B, C, H, W) in [0, 1]).
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, tensors)` after each
                step; may return `{"sample": ...}` to replace the sample.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["sample"]`): tensors passed to it.
            image (PIL image, NumPy array or tensor, *optional*): the image to inpaint, one for the batch or one per
                sample: PIL ("L"/"RGB", converted to the UNet's channels), NumPy (H, W), (H, W, C) or (B, H, W, C)
                uint8 in [0, 255] or float in [0, 1], torch (C, H, W) or (B, C, H, W) float in [-1, 1] or uint8.
                Needs `mask_image`. Its known pixels come back exactly.
            mask_image (PIL image, NumPy array or tensor, *optional*): white (1) = regenerate, black (0) = keep: a
                PIL "L" (0/255) or "1" image, or an (H, W) / (B, 1, H, W) array of 0 and 1. The known pixels are
                replaced by x_0 + sigma_t z, one z per noise level, before every Langevin step of that level (Song
                & Ermon 2019, sec. 5; see `hf_ddpm_ncsn.pipelines.inpainting`).
            sampler (`str`, defaults to `"langevin"`): `"langevin"` (the scheduler's annealed Langevin chain),
                `"pc"` (predictor-corrector: reverse-diffusion predictor between the levels, Langevin corrector;
                `num_inference_steps * (num_corrector_steps + 1)` UNet calls), `"ode"` (deterministic, the
                probability-flow ODE from sigma_max to sigma_min, then Tweedie's denoise) or `"ode_langevin"`
                (Heun's ODE step over the `num_ode_steps` noisiest levels, then annealed Langevin dynamics with
                `num_langevin_steps` and `step_size` on the rest); see `hf_ddpm_ncsn.sampling`.
            snr (`float`, *optional*, defaults to 0.16): `"pc"` only: the corrector's signal-to-noise ratio.
            num_corrector_steps (`int`, *optional*, defaults to 1): `"pc"` only: Langevin updates per level (0 to
                1,000).
            ode_method (`str`, *optional*, defaults to `"ddim"`): `"ode"` only: `"ddim"` (Euler in sigma, one call
                per level), `"heun"` (Heun's second order in sigma, two calls per step, Karras et al. 2022),
                `"dpmpp_2m"` (DPM-Solver++(2M), second order in log sigma, one call per level, Lu et al. 2022b),
                `"euler"`, `"midpoint"`, `"rk4"` on the levels, or the adaptive `"dopri5"`, `"bosh3"`,
                `"adaptive_heun"`.
            ode_rtol (`float`, *optional*, defaults to 1e-5), ode_atol (`float`, *optional*, defaults to 1e-5):
                the adaptive `ode_method`'s tolerances.
            class_labels (`int`, list of `int` or `torch.Tensor`, *optional*): the class of every sample (one int)
                or of each (batch_size of them), for a class-conditional UNet (`num_class_embeds` = classes + 1; the
                names are `pipe.class_names`). Default: the null class, i.e. unconditional samples of a conditional
                model (and the plain model of an unconditional UNet, which refuses labels).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance weight w >= 1 (Ho & Salimans 2022):
                the output is out_u + w (out_c - out_u) of the null-class and the conditional calls, batched in one
                UNet call; 1 is the conditional model alone, one call per step. Needs `class_labels`.
            reconstruction_guidance_scale (`float`, defaults to 0.0): with `image`: w >= 0 of reconstruction
                guidance, which adds w grad log N(y; x0_hat(x_t), r_t^2) of the known pixels y to the score at every
                step, the gradient taken through the UNet (about three times the cost of a step); 0 is plain
                replacement. See `hf_ddpm_ncsn.pipelines.inpainting.reconstruction_guided`.
            latents (`torch.Tensor`, *optional*): (batch_size, C, H, W) standard-normal noise to start from instead
                of a draw from `generator`, multiplied by `scheduler.init_noise_sigma` (diffusers' convention);
                `pipe.encode(images)` gives the latents that `sampler="ode"` decodes back to the images.
            num_ode_steps (`int`, *optional*): `"ode_langevin"` only: Heun steps of the probability-flow ODE down
                the noisiest levels before annealed Langevin dynamics takes over (0 to levels - 1; default half the
                intervals); `2 num_ode_steps + (levels - num_ode_steps) num_langevin_steps + 1` UNet calls.
            ode_time_spacing (`str`, *optional*, defaults to `"levels"`): `"ode"` only: step on the levels laid out,
                or `"logsnr"`: as many times from the noisiest training time to the last level, uniformly spaced
                in log-SNR (DPM-Solver's grid; fractional times of the continuous extension).
        """
        options = self.check_inputs(
            batch_size,
            generator,
            num_inference_steps,
            num_langevin_steps,
            step_size,
            output_type,
            callback_on_step_end_tensor_inputs,
            image,
            mask_image,
            sampler,
            snr,
            num_corrector_steps,
            ode_method,
            ode_rtol,
            ode_atol,
            callback_on_step_end,
            class_labels,
            guidance_scale,
            reconstruction_guidance_scale,
            latents,
            num_ode_steps,
            ode_time_spacing,
        )
        known = self._known_pixels(image, mask_image, batch_size)
        device = self._execution_device
        labels = prepare_class_labels(class_labels, guidance_scale, self.unet.config, batch_size, device)
        model = self.guided_model(labels, guidance_scale)
        if known is not None:
            self.scheduler.set_timesteps(num_inference_steps, num_langevin_steps, device=device, step_size=step_size)
            sample = self._initial_noise(batch_size, generator, self.scheduler.init_noise_sigma, latents)
            if reconstruction_guidance_scale > 0:
                model = reconstruction_guided(model, self.scheduler, known, reconstruction_guidance_scale)
            sample = ncsn_inpainting_loop(
                model,
                self.scheduler,
                sample,
                known,
                generator,
                progress_bar=self.progress_bar,
                callback=self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs),
            )
        elif sampler == "langevin":
            self.scheduler.set_timesteps(num_inference_steps, num_langevin_steps, device=device, step_size=step_size)
            sample = self._initial_noise(batch_size, generator, self.scheduler.init_noise_sigma, latents)
            sample = self._denoising_loop(
                sample, generator, callback_on_step_end, callback_on_step_end_tensor_inputs, model
            )
        else:
            levels = self._sampler_levels(num_inference_steps)
            sample = self._initial_noise(batch_size, generator, self.scheduler.init_noise_sigma, latents)
            sample = self._run_sampler(sampler, options, levels, sample, generator, labels, guidance_scale)
        images = self._to_output(sample, output_type, known)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
