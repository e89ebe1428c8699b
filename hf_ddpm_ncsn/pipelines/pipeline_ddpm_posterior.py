"""DDPM ancestral sampling and the exact ELBO, term by term."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import ImagePipelineOutput, UNet2DModel

from ..likelihood import ELBOOutput, StratifiedELBOOutput, elbo_bpd, stratified_elbo_bpd, stratum_bounds
from ..schedulers.scheduling_ddpm_posterior import DDPMPosteriorScheduler
from ..sharing.folder_checks import pipeline_class_name
from .guidance import ClassLabels, prepare_class_labels
from .inpainting import check_reconstruction_guidance, check_resampling, ddpm_inpainting_loop, reconstruction_guided
from .sampler_arguments import (
    check_callback_supported,
    check_inpainting_sampler,
    fill_langevin_options,
    sampler_options,
)
from .shareable_pipeline import ShareablePipeline

#: `sampler=` values: ancestral sampling (the scheduler's chain), predictor-corrector ("DDPM + Langevin
#: corrector"), annealed Langevin dynamics of the eps model (s = -eps / sigma_t), the probability-flow ODE, the
#: ODE over the noisiest timesteps then annealed Langevin dynamics.
SAMPLERS = ("ancestral", "pc", "langevin", "ode", "ode_langevin")
#: `sampler="langevin"`'s defaults: one update per timestep, NCSNScheduler's step size.
DEFAULT_LANGEVIN_STEPS = 1
DEFAULT_LANGEVIN_STEP_SIZE = 4e-5


class DDPMPosteriorPipeline(ShareablePipeline):
    """Unconditional image generation with a DDPM, and its likelihood through the ELBO.

    Folders saved by diffusers' own `DDPMPipeline` (`UNet2DModel` + `DDPMScheduler`, the layout of the public DDPM
    checkpoints) load too: their scheduler config becomes a `DDPMPosteriorScheduler`.

    Args:
        unet (`UNet2DModel`): the noise (or x_0, or v) network; 2C output channels for learned variances.
        scheduler (`DDPMPosteriorScheduler`): the diffusion.
        class_names (`list[str]`, *optional*): the names of a class-conditional UNet's classes 0..K-1, saved in
            model_index.json.
    """

    model_card_family = "ddpm"
    loadable_class_names = ("DDPMPosteriorPipeline", "DDPMPipeline")

    def __init__(self, unet: UNet2DModel, scheduler: DDPMPosteriorScheduler, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._register_class_names(class_names)

    @classmethod
    def _components_for_foreign_folder(cls, folder: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if pipeline_class_name(folder) == "DDPMPipeline" and "scheduler" not in kwargs:
            kwargs = {**kwargs, "scheduler": DDPMPosteriorScheduler.from_pretrained(folder, subfolder="scheduler")}
        return kwargs

    def _num_steps(self, num_inference_steps: int | None) -> int:
        return self.scheduler.config.num_train_timesteps if num_inference_steps is None else num_inference_steps

    def _sampler_levels(self, num_inference_steps: int | None) -> list[int]:
        """The respaced timesteps of `timestep_spacing`, noisiest first."""
        self.scheduler.set_timesteps(self._num_steps(num_inference_steps), device=self._execution_device)
        return self.scheduler.timesteps.tolist()

    def check_inputs(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        callback_on_step_end_tensor_inputs: list[str] = ["sample"],  # noqa: B006 (diffusers' signature)
        image: Any = None,
        mask_image: Any = None,
        jump_length: int = 10,
        jump_n_sample: int = 1,
        sampler: str = "ancestral",
        snr: float | None = None,
        num_corrector_steps: int | None = None,
        num_langevin_steps: int | None = None,
        step_size: float | None = None,
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
        prepare_class_labels(class_labels, guidance_scale, self.unet.config, batch_size)
        check_resampling(jump_length, jump_n_sample)
        check_inpainting_sampler(image, sampler, SAMPLERS[0])
        options = sampler_options(
            sampler,
            SAMPLERS,
            snr=snr,
            num_corrector_steps=num_corrector_steps,
            num_langevin_steps=num_langevin_steps,
            step_size=step_size,
            ode_method=ode_method,
            ode_rtol=ode_rtol,
            ode_atol=ode_atol,
            num_ode_steps=num_ode_steps,
            ode_time_spacing=ode_time_spacing,
        )
        check_callback_supported(sampler, SAMPLERS[0], callback_on_step_end)
        self._check_ode_sampler(sampler)
        self._check_timesteps(num_inference_steps=self._num_steps(num_inference_steps))
        if sampler in ("langevin", "ode_langevin"):
            num_levels = self._num_steps(num_inference_steps)
            fill_langevin_options(options, num_levels, DEFAULT_LANGEVIN_STEPS, DEFAULT_LANGEVIN_STEP_SIZE)
        return options

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["sample"],  # noqa: B006 (diffusers' signature)
        image: Any = None,
        mask_image: Any = None,
        jump_length: int = 10,
        jump_n_sample: int = 1,
        sampler: str = "ancestral",
        snr: float | None = None,
        num_corrector_steps: int | None = None,
        num_langevin_steps: int | None = None,
        step_size: float | None = None,
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
        """Draw samples by ancestral sampling (default), predictor-corrector, annealed Langevin dynamics or the
        probability-flow ODE, or inpaint `image` where `mask_image` is white (ancestral sampling).

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or a list of them, *optional*): makes sampling reproducible.
            num_inference_steps (`int`, *optional*): sampling steps (default: all training steps); fewer steps
                respace the chain with the scheduler's `timestep_spacing`.
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
                replaced by a draw of q(x_t | x_0) before the step at every timestep t.
            jump_length (`int`, defaults to 10): RePaint's jump, used with `image`: steps to go back up the chain at
                each resampling.
            jump_n_sample (`int`, defaults to 1): RePaint's passes over each stretch of `jump_length` steps, used
                with `image`; 1 is plain replacement, r costs about r times the network calls (see
                `hf_ddpm_ncsn.pipelines.inpainting.resampling_schedule`).
            sampler (`str`, defaults to `"ancestral"`): `"ancestral"` (the scheduler's chain), `"pc"`
                (predictor-corrector: reverse-diffusion predictor, Langevin corrector), `"langevin"` (annealed
                Langevin dynamics with the score -eps / sigma_t), `"ode"` (deterministic, the probability-flow
                ODE, then Tweedie's denoise) or `"ode_langevin"` (Heun's ODE step over the `num_ode_steps` noisiest
                timesteps, then annealed Langevin dynamics); all visit the timesteps `num_inference_steps` lays
                out. See `hf_ddpm_ncsn.sampling`.
            snr (`float`, *optional*, defaults to 0.16): `"pc"` only: the corrector's signal-to-noise ratio.
            num_corrector_steps (`int`, *optional*, defaults to 1): `"pc"` only: Langevin updates per timestep.
            num_langevin_steps (`int`, *optional*, defaults to 1): `"langevin"` / `"ode_langevin"` only: updates
                per timestep.
            step_size (`float`, *optional*, defaults to 4e-5): `"langevin"` / `"ode_langevin"` only: eps of eta_t
                = eps sigma_t^2 / sigma_min^2 (sigma_min: the last timestep's).
            ode_method (`str`, *optional*, defaults to `"ddim"`): `"ode"` only: `"ddim"` (DDIM with eta = 0,
                one call per timestep), `"heun"` (Heun's second order in sigma / alpha, two calls per step),
                `"dpmpp_2m"` (DPM-Solver++(2M), second order in log-SNR, one call per timestep, Lu et al. 2022b),
                `"euler"`, `"midpoint"`, `"rk4"` on the timesteps, or the adaptive
                `"dopri5"`, `"bosh3"`, `"adaptive_heun"` between the first and the last.
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
            output_type,
            callback_on_step_end_tensor_inputs,
            image,
            mask_image,
            jump_length,
            jump_n_sample,
            sampler,
            snr,
            num_corrector_steps,
            num_langevin_steps,
            step_size,
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
        self.scheduler.set_timesteps(self._num_steps(num_inference_steps), device=device)
        sample = self._initial_noise(batch_size, generator, self.scheduler.init_noise_sigma, latents)
        if known is not None:
            if reconstruction_guidance_scale > 0:
                model = reconstruction_guided(model, self.scheduler, known, reconstruction_guidance_scale)
            sample = ddpm_inpainting_loop(
                model,
                self.scheduler,
                sample,
                known,
                generator,
                jump_length,
                jump_n_sample,
                progress_bar=self.progress_bar,
                callback=self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs),
            )
        elif sampler == "ancestral":
            sample = self._denoising_loop(
                sample, generator, callback_on_step_end, callback_on_step_end_tensor_inputs, model
            )
        else:
            levels = self._sampler_levels(num_inference_steps)
            sample = self._run_sampler(sampler, options, levels, sample, generator, labels, guidance_scale)
        images = self._to_output(sample, output_type, known)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def elbo(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> ELBOOutput:
        """Negative ELBO of each image in bits/dim, with every term (see `hf_ddpm_ncsn.likelihood`).

        Args:
            images (`torch.Tensor`): (B, C, H, W) 8-bit images, as uint8 or as float scaled to [-1, 1].
            generator (`torch.Generator`, *optional*): random generator of the per-timestep noise.
            batch_size (`int`, *optional*): largest number of UNet inputs per call; timesteps are batched together
                up to it (default: one timestep per call).
        """
        x0 = self._likelihood_inputs(images, generator, batch_size)
        return elbo_bpd(
            self._likelihood_unet_output,  # the timestep is the UNet's input as it is
            self.scheduler,
            x0,
            generator=generator,
            batch_size=batch_size,
            progress=self.progress_bar,
        )

    @torch.no_grad()
    def stratified_elbo(
        self,
        images: torch.Tensor,
        num_strata: int,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        spacing: str = "log",
    ) -> StratifiedELBOOutput:
        """Unbiased estimate of each image's negative ELBO in bits/dim from `num_strata` stratified timesteps
        instead of all T (see `hf_ddpm_ncsn.likelihood.stratified_elbo_bpd`).

        Args:
            images (`torch.Tensor`): (B, C, H, W) 8-bit images, as uint8 or as float scaled to [-1, 1].
            num_strata (`int`): K, between 1 and the number of training timesteps.
            generator (`torch.Generator`, *optional*): a CPU generator for the timesteps and the noise.
            batch_size (`int`, *optional*): largest number of UNet inputs per call (default: B).
            spacing (`str`, defaults to `"log"`): `"log"` or `"linear"` strata.
        """
        x0 = self._likelihood_inputs(images, generator, batch_size)
        stratum_bounds(self.scheduler.config.num_train_timesteps, num_strata, spacing)  # checks K and spacing
        return stratified_elbo_bpd(
            self._likelihood_unet_output,  # the timestep is the UNet's input as it is
            self.scheduler,
            x0,
            num_strata,
            generator=generator,
            batch_size=batch_size,
            progress=self.progress_bar,
            spacing=spacing,
        )
