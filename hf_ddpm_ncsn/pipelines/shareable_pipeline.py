"""What both pipelines share: safe saving and loading, model cards, pushing to the Hub, output conversion."""

from __future__ import annotations

import copy
import functools
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..images import is_on_8bit_grid, uint8_to_model
from ..likelihood.probability_flow import ODELikelihoodOutput, ode_bpd
from ..plots import image_grid
from ..progress import tqdm_kwargs
from ..sampling import ode_encode, ode_langevin_sample, ode_sample, predictor_corrector_sample
from ..sampling.probability_flow import logsnr_times, time_progress
from ..schedulers.validation import check_choice, check_positive_int
from ..sharing.atomic import atomic_directory, atomic_write_text
from ..sharing.diffusers_loading import finalize_saved_folder, folder_already_checked
from ..sharing.folder_checks import check_pipeline_folder
from ..sharing.hub import push_folder_to_hub
from ..sharing.model_cards import render_model_card
from .guidance import guided_output, null_class, prepare_class_labels
from .inpainting import KnownPixels, StepCallback, image_to_tensors, prepare_known_pixels
from .sampler_arguments import sampler_options

OUTPUT_TYPES = ("pil", "np", "pt")
# arguments of `from_pretrained` that matter for fetching a Hub repo before it is checked
_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "variant")


def check_generator(generator, batch_size: int) -> None:
    """`generator` must be None, a `torch.Generator`, or a list of `batch_size` of them (one per image)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list | tuple) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size={batch_size}: pass one "
                "generator, or one per image"
            )
        return
    raise ValueError(
        f"generator must be a torch.Generator or a list of batch_size of them, got {type(generator).__name__}"
    )


def as_likelihood_input(images: torch.Tensor, unet_config) -> torch.Tensor:
    """8-bit images of the UNet's shape as float in [-1, 1]: uint8 is scaled, float must already lie on the
    256-bin grid."""
    size = unet_config.sample_size
    expected = (unet_config.in_channels, *((size, size) if isinstance(size, int) else size))
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, {', '.join(map(str, expected))}) tensor for this UNet, got {got}")
    if len(images) == 0:
        raise ValueError("images is empty: pass at least one image")
    if images.dtype == torch.uint8:
        return uint8_to_model(images)
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    if not is_on_8bit_grid(images):
        raise ValueError(
            "images must be 8-bit data scaled to [-1, 1] (x = uint8 / 127.5 - 1): the likelihood is over 256 bins"
        )
    return images


class ShareablePipeline(DiffusionPipeline):
    """A `DiffusionPipeline` that writes safetensors only, refuses unsafe or broken folders with a clear error,
    and shares itself on the Hub with a model card.

    Subclasses set `model_card_family` (the template in `model_cards/`) and `loadable_class_names` (the
    `model_index.json` classes their `from_pretrained` accepts).
    """

    model_card_family: str
    loadable_class_names: tuple[str, ...]
    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["sample"]

    # ----------------------------------------------------------------------------------------------------------
    # Loading and saving
    def _register_class_names(self, class_names: list[str] | None) -> None:
        """Record a class-conditional UNet's class names in the pipeline config (model_index.json, which every
        loading route reads back into `__init__`); an unconditional pipeline's config is left as it was."""
        if class_names is None:
            return
        num_class_embeds = self.unet.config.num_class_embeds
        names = [str(name) for name in class_names]
        if num_class_embeds is None or len(names) != num_class_embeds - 1:
            raise ValueError(
                f"class_names has {len(names)} names but the UNet has num_class_embeds={num_class_embeds} (the "
                "classes and one null class)"
            )
        self.register_to_config(class_names=names)

    @property
    def class_names(self) -> list[str] | None:
        """The names of the classes 0..K-1 of a class-conditional pipeline (None when not recorded)."""
        return self.config.get("class_names")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, allow_pickle: bool = False, **kwargs):
        """Load from a folder or a Hub repo id, after checking the weights files.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a saved folder or a Hub repo id.
            allow_pickle (`bool`, defaults to `False`): accept pickle (`.bin`) weights when a component has no
                safetensors file. Pickle files can run arbitrary code: opt in only for files you trust. Without it,
                only safetensors files are loaded (`use_safetensors=False` is refused).
            kwargs: passed to `DiffusionPipeline.from_pretrained` (components, `torch_dtype`, `revision`,
                `variant`, ...).
        """
        if kwargs.get("use_safetensors") is False and not allow_pickle:
            raise ValueError("use_safetensors=False loads pickle weights; pass allow_pickle=True if you trust them")
        if not allow_pickle:
            kwargs["use_safetensors"] = True  # diffusers would fall back to a pickle file next to a missing one
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            folder = cls.download(folder, **{k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs})
        variant = kwargs.get("variant")
        check_pipeline_folder(folder, cls.loadable_class_names, allow_pickle=allow_pickle, variant=variant)
        with folder_already_checked(folder):
            return super().from_pretrained(folder, **cls._components_for_foreign_folder(folder, kwargs))

    @classmethod
    def _components_for_foreign_folder(cls, folder: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Components to pass when `folder` was saved by another pipeline class (none by default)."""
        return kwargs

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Save safetensors weights, configs and the loader shim, atomically (see `atomic_directory`): at every
        instant `save_directory` holds the complete old pipeline or the complete new one.

        Other entries of an existing `save_directory` (checkpoints, logs, a model card) are kept.

        Args:
            save_directory (`str` or `os.PathLike`): destination folder.
            safe_serialization (`bool`, defaults to `True`): must stay `True`: pickle weights are never written.
            variant (`str`, *optional*): weights file variant, e.g. `"fp16"`.
            max_shard_size (`int` or `str`, *optional*): shard large weights.
            push_to_hub (`bool`, defaults to `False`): then push the folder with `repo_id` (default: the folder
                name), `token`, `private`, `commit_message`, `create_pr` taken from `kwargs`.
        """
        if not safe_serialization:
            raise ValueError(
                "safe_serialization=False would write pickle weights; hf_ddpm_ncsn saves safetensors only"
            )
        with atomic_directory(save_directory) as staging:
            self.write_pipeline_files(staging, variant=variant, max_shard_size=max_shard_size)
        if push_to_hub:
            push_folder_to_hub(
                save_directory,
                kwargs.pop("repo_id", None) or Path(save_directory).name,
                token=kwargs.pop("token", None),
                private=kwargs.pop("private", None),
                commit_message=kwargs.pop("commit_message", "Upload pipeline"),
                create_pr=kwargs.pop("create_pr", False),
            )

    def write_pipeline_files(
        self, folder: str | os.PathLike, variant: str | None = None, max_shard_size: int | str | None = None
    ) -> None:
        """Write the safetensors weights, configs and loader shim into the empty `folder`, as they are: for callers
        that publish a folder of their own in one switch (`save_pretrained`, the training script's output folder,
        `push_to_hub`'s staging).

        Args:
            folder (`str` or `os.PathLike`): an empty folder.
            variant (`str`, *optional*): weights file variant, e.g. `"fp16"`.
            max_shard_size (`int` or `str`, *optional*): shard large weights.
        """
        super().save_pretrained(folder, safe_serialization=True, variant=variant, max_shard_size=max_shard_size)
        finalize_saved_folder(folder, type(self))

    # ----------------------------------------------------------------------------------------------------------
    # Sharing
    def sample_grid(self, num_images: int = 16, seed: int = 0, **call_kwargs) -> PIL.Image.Image:
        """A legible grid (`plots.image_grid`) of `num_images` samples, seeded with `seed`."""
        images = self(
            batch_size=num_images, generator=torch.Generator().manual_seed(seed), output_type="pil", **call_kwargs
        ).images
        return image_grid(images)

    def save_model_card(
        self,
        save_directory: str | os.PathLike,
        *,
        repo_id: str | None = None,
        dataset: str | None = None,
        training: dict[str, Any] | None = None,
        eval_results: dict[str, float] | None = None,
        sample_grid: PIL.Image.Image | None = None,
    ) -> None:
        """Write README.md (the model card, from `model_cards/<family>.md`) and samples.png into the folder.

        Args:
            save_directory (`str` or `os.PathLike`): the saved pipeline folder.
            repo_id (`str`, *optional*): the Hub repo the card describes (default: the folder name).
            dataset (`str`, *optional*): training dataset name.
            training (`dict`, *optional*): training arguments and results to list (secrets are dropped).
            eval_results (`dict[str, float]`, *optional*): evaluation numbers.
            sample_grid (`PIL.Image.Image`, *optional*): a grid of samples, saved as samples.png.
        """
        folder = Path(save_directory)
        if sample_grid is not None:
            sample_grid.save(folder / "samples.png")
        card = render_model_card(
            self.model_card_family,
            repo_id=repo_id or folder.name,
            scheduler_config=dict(self.scheduler.config),
            unet_config=dict(self.unet.config),
            dataset=dataset,
            training=training,
            eval_results=eval_results,
            sample_grid="samples.png" if sample_grid is not None else None,
            class_names=self.class_names,
        )
        atomic_write_text(folder / "README.md", str(card))

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str = "Upload pipeline",
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        *,
        revision: str | None = None,
        dataset: str | None = None,
        training: dict[str, Any] | None = None,
        eval_results: dict[str, float] | None = None,
        sample_grid: PIL.Image.Image | None = None,
        num_grid_images: int = 16,
        grid_kwargs: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> str:
        """Upload safetensors weights, configs, the loader shim, a model card and a sample grid to `repo_id`.

        Everything is staged in a temporary folder first; a failed upload raises `HubPushError` and changes
        nothing local. The token is never written to the card, the configs or the logs.

        Args:
            repo_id (`str`): target repo, e.g. `"user/ncsn-digits"`.
            commit_message (`str`, defaults to `"Upload pipeline"`): commit message.
            private (`bool`, *optional*): create the repo as private.
            token (`str`, *optional*): Hub token (default: the logged-in one).
            create_pr (`bool`, defaults to `False`): open a pull request instead of committing to the branch.
            revision (`str`, *optional*): branch to push to.
            dataset, training, eval_results: what the model card reports, see `save_model_card`.
            sample_grid (`PIL.Image.Image`, *optional*): the grid to show; default: `num_grid_images` fresh samples.
            num_grid_images (`int`, defaults to 16): size of the default grid (0 for none).
            grid_kwargs (`dict`, *optional*): extra `__call__` arguments for the default grid (e.g. fewer steps).
            endpoint (`str`, *optional*): Hub endpoint (default: `HF_ENDPOINT` or huggingface.co).
        """
        if sample_grid is None and num_grid_images:
            sample_grid = self.sample_grid(num_grid_images, **(grid_kwargs or {}))
        with tempfile.TemporaryDirectory() as staging:
            self.write_pipeline_files(staging)
            self.save_model_card(
                staging,
                repo_id=repo_id,
                dataset=dataset,
                training=training,
                eval_results=eval_results,
                sample_grid=sample_grid,
            )
            return push_folder_to_hub(
                staging,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
                endpoint=endpoint,
            )

    # ----------------------------------------------------------------------------------------------------------
    # Sampling helpers
    def _check_call_arguments(
        self, batch_size: int, generator, output_type: str, callback_on_step_end_tensor_inputs: list[str]
    ) -> None:
        check_positive_int("batch_size", batch_size)
        check_generator(generator, batch_size)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; accepted values: {self._callback_tensor_inputs}"
            )

    def _known_pixels(self, image, mask_image, batch_size: int) -> KnownPixels | None:
        """The inpainting inputs checked and shaped for the UNet (`inpainting.prepare_known_pixels`), or None."""
        _, channels, height, width = self._sample_shape(batch_size)
        return prepare_known_pixels(
            image,
            mask_image,
            batch_size,
            channels,
            height,
            width,
            device=self._execution_device,
            dtype=self.unet.dtype,
        )

    def _step_callback(
        self, callback_on_step_end: Callable | None, callback_on_step_end_tensor_inputs: list[str]
    ) -> StepCallback | None:
        """`callback_on_step_end` as the sampling loops call it: (step index, timestep, sample) -> sample."""
        if callback_on_step_end is None:
            return None

        def callback(i: int, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            tensors = {"sample": sample}
            outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
            return outputs.pop("sample", sample)

        return callback

    def _check_timesteps(self, **set_timesteps_kwargs) -> None:
        """Lay out the chain on a copy of the scheduler: a bad step count fails here, before any sampling."""
        copy.deepcopy(self.scheduler).set_timesteps(**set_timesteps_kwargs)

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (batch_size, self.unet.config.in_channels, height, width)

    def _check_latents(self, latents: torch.Tensor | None, batch_size: int) -> None:
        if latents is None:
            return
        shape = self._sample_shape(batch_size)
        if not isinstance(latents, torch.Tensor) or not torch.is_floating_point(latents):
            raise ValueError(f"latents must be a float torch.Tensor of shape {shape}, got {type(latents).__name__}")
        if tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (batch_size, channels, height, width), got {tuple(latents.shape)}"
            )
        if not torch.isfinite(latents).all():
            raise ValueError("latents must be finite")

    def _initial_noise(
        self, batch_size: int, generator, scale: float, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_T = scale * (`latents`, or a standard normal draw from `generator`), as diffusers' pipelines do with
        `init_noise_sigma`."""
        device, dtype = self._execution_device, self.unet.dtype
        if latents is None:
            latents = randn_tensor(self._sample_shape(batch_size), generator=generator, device=device, dtype=dtype)
        return scale * latents.to(device=device, dtype=dtype)

    def _sampler_levels(self, num_inference_steps: int | None) -> list[int]:
        """The levels the samplers of `hf_ddpm_ncsn.sampling` visit, noisiest first (each pipeline lays them out)."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(
        self,
        image: Any,
        num_inference_steps: int | None = None,
        ode_method: str | None = None,
        ode_rtol: float | None = None,
        ode_atol: float | None = None,
        class_labels: Any = None,
        guidance_scale: float = 1.0,
        ode_time_spacing: str | None = None,
    ) -> torch.Tensor:
        """The latents of `image` under the probability-flow ODE: the inverse of `sampler="ode"` with the same
        arguments, so `pipe(batch_size=len(latents), latents=latents, sampler="ode", ...)` decodes them back to the
        image, up to the solver's accuracy and the final Tweedie denoise that sampling applies at the last level
        (see `hf_ddpm_ncsn.sampling.ode_encode`). Like diffusers' `latents=`, they are in units of
        `scheduler.init_noise_sigma` (standard normal for data from the model).

        Args:
            image (PIL image, NumPy array or tensor): the images, in any form `image=` of inpainting accepts (a
                torch tensor (B, C, H, W) in [-1, 1], the model's range, is taken as is).
            num_inference_steps (`int`, *optional*), ode_method (`str`, *optional*, defaults to `"ddim"`),
                ode_rtol (`float`, *optional*), ode_atol (`float`, *optional*): as for `sampler="ode"`.
            class_labels (*optional*), guidance_scale (`float`, defaults to 1.0): as for sampling a
                class-conditional UNet.
            ode_time_spacing (`str`, *optional*, defaults to `"levels"`): as for `sampler="ode"`.

        Returns:
            `torch.Tensor`: (B, C, H, W) latents.
        """
        options = sampler_options(
            "ode",
            ("ode",),
            ode_method=ode_method,
            ode_rtol=ode_rtol,
            ode_atol=ode_atol,
            ode_time_spacing=ode_time_spacing,
        )
        self._check_ode_sampler("ode")
        x0, _ = image_to_tensors(image, self.unet.config.in_channels)
        shape = self._sample_shape(len(x0))
        if tuple(x0.shape) != shape:
            raise ValueError(f"image has shape {tuple(x0.shape)} but the UNet takes {shape[1:]} images")
        labels = prepare_class_labels(class_labels, guidance_scale, self.unet.config, len(x0), self._execution_device)
        levels = self._ode_times(self._sampler_levels(num_inference_steps), options["ode_time_spacing"])
        score = functools.partial(self.model_score, class_labels=labels, guidance_scale=guidance_scale)
        x = x0.to(device=self._execution_device, dtype=self.unet.dtype)
        latents, _ = ode_encode(
            score,
            self.scheduler.noise_process,
            x,
            levels,
            method=options["ode_method"],
            rtol=options["ode_rtol"],
            atol=options["ode_atol"],
        )
        return latents / self.scheduler.init_noise_sigma

    def model_output(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        class_labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The UNet's output at (sample, scheduler timestep index): what the scheduler's `step`, the likelihoods
        and the losses take. The timestep is passed as the UNet expects it (`_unet_timestep`).

        Args:
            sample (`torch.Tensor`): (B, C, H, W) inputs.
            timestep (`int` or `torch.Tensor`): the scheduler's timestep index.
            class_labels (`torch.Tensor`, *optional*): (B,) labels of a class-conditional UNet, checked by
                `guidance.prepare_class_labels` (default: the null class, the unconditional model).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance weight w (`guidance.guided_output`).
        """
        return self._unet_output(sample, self._unet_timestep(timestep), class_labels, guidance_scale)

    def _unet_output(
        self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The UNet at its own timestep input, with the class labels and guidance of a conditional UNet, in the
        sample's dtype (a half-precision `time_embedding_type="fourier"` UNet divides its output by a float32 sigma:
        the float32 result would then meet its half-precision weights at the next call)."""
        null = null_class(self.unet.config)
        if null is None:
            return self.unet(sample, timestep).sample.to(sample.dtype)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if class_labels is None:
            class_labels = torch.full((len(sample),), null, dtype=torch.long, device=sample.device)
        return guided_output(
            lambda x, t, labels: self.unet(x, t, class_labels=labels).sample,
            sample,
            timestep,
            class_labels,
            null,
            guidance_scale,
            guided_channels=self.unet.config.in_channels,
        ).to(sample.dtype)

    def guided_model(self, class_labels: torch.Tensor | None, guidance_scale: float) -> Callable:
        """`model_output` with the labels and the guidance weight bound: the (sample, timestep) callable the
        sampling loops take."""
        if class_labels is None:
            return self.model_output
        return functools.partial(self.model_output, class_labels=class_labels, guidance_scale=guidance_scale)

    def model_score(
        self,
        sample: torch.Tensor,
        t: int | float,
        class_labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The score grad log q_t(sample) the UNet implies at scheduler time t (an int level, or a float time of
        the continuous extension), one t for the whole batch: what `hf_ddpm_ncsn.sampling` takes. `class_labels`
        and `guidance_scale` are those of `model_output` (the guided eps and the guided score agree: s = -eps /
        sigma_t is linear)."""
        timestep = self.scheduler.model_timestep(t, self.unet.config.time_embedding_type).to(sample.device)
        output = self._unet_output(sample, timestep.expand(len(sample)), class_labels, guidance_scale)
        return self.scheduler.score_from_model_output(output, t, sample)

    def _run_sampler(
        self,
        sampler: str,
        options: dict[str, Any],
        levels: list[int],
        sample: torch.Tensor,
        generator,
        class_labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Draw samples with one of `hf_ddpm_ncsn.sampling`'s samplers from `sample` at levels[0] down `levels`."""
        process = self.scheduler.noise_process
        score = functools.partial(self.model_score, class_labels=class_labels, guidance_scale=guidance_scale)
        if sampler == "pc":
            return predictor_corrector_sample(
                score,
                process,
                sample,
                levels,
                snr=options["snr"],
                num_corrector_steps=options["num_corrector_steps"],
                generator=generator,
                progress=self.progress_bar,
            )
        if sampler in ("langevin", "ode_langevin"):  # annealed Langevin is the hybrid with no ODE step (tested)
            return ode_langevin_sample(
                score,
                process,
                sample,
                levels,
                num_ode_steps=options.get("num_ode_steps", 0),
                num_steps=options["num_langevin_steps"],
                step_size=options["step_size"],
                generator=generator,
                progress=self.progress_bar,
            )
        times = self._ode_times(levels, options["ode_time_spacing"])
        bar = self.progress_bar(total=math.floor(times[0] - times[-1]))
        on_time = time_progress(bar, times[0], times[-1])
        try:
            sample, _ = ode_sample(
                score,
                process,
                sample,
                times,
                method=options["ode_method"],
                rtol=options["ode_rtol"],
                atol=options["ode_atol"],
                on_time=on_time,
            )
            on_time(times[-1])  # a fixed-step method's last evaluation is before the end
        finally:
            bar.close()
        return sample

    def _ode_times(self, levels: list[int], spacing: str) -> list[float]:
        """The ODE's times, noisiest first: the levels, or (`"logsnr"`) as many times uniform in log-SNR from the
        process's noisiest time T - 1, where the prior holds (a respaced DDPM chain may start below it), to the
        last level."""
        times = [float(t) for t in levels]
        if spacing != "logsnr" or len(times) < 2:  # a single level stays where the chain puts it
            return times
        process = self.scheduler.noise_process
        return logsnr_times(process, [float(process.num_levels - 1), *times[1:]])

    def _check_ode_sampler(self, sampler: str) -> None:
        """The ODE samplers step in x / alpha at real-valued times: refuse a schedule or UNet without them."""
        if sampler not in ("ode", "ode_langevin"):
            return
        if not self.scheduler.noise_process.alphas.min() > 0:
            raise ValueError(
                f"sampler={sampler!r} steps in x / alpha_t, which needs alpha_t > 0 at every level; this schedule "
                "ends at alpha_T = 0 (zero terminal SNR, rescale_betas_zero_snr=True): use the default sampler"
            )
        if self.unet.config.time_embedding_type == "learned":
            raise ValueError(
                f"sampler={sampler!r} evaluates the UNet at real-valued times; its time_embedding_type='learned' is "
                "a table of the trained timesteps: use sampler='pc' or the default sampler"
            )

    def _unet_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The UNet's timestep input at a scheduler timestep index (the index itself by default)."""
        return timestep

    def _likelihood_inputs(self, images: torch.Tensor, generator, batch_size: int | None) -> torch.Tensor:
        """Check the likelihood arguments (before any UNet call) and return the images on the execution device, as
        float32.

        The likelihoods' state (the 8-bit images, x_t, the noise, the ODE's path and integral) stays float32 whatever
        the UNet's dtype, and only the UNet calls are cast (`_likelihood_unet_output`): a bfloat16 x_0 is off the
        256-bin grid (8 significant bits), and a float64 one would draw different noise from the same generator."""
        x0 = as_likelihood_input(images, self.unet.config)
        x0 = x0.to(device=self._execution_device, dtype=torch.float32)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return x0

    def _likelihood_unet_output(self, x: torch.Tensor, unet_timestep: torch.Tensor) -> torch.Tensor:
        """The UNet's output at its own timestep input for the unconditional model (the null class of a
        class-conditional UNet), on x cast to the UNet's dtype, returned in x's dtype (the likelihoods' float32)."""
        return self._unet_output(x.to(self.unet.dtype), unet_timestep, None, 1.0).to(x.dtype)

    def ode_likelihood(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        *,
        exact_trace: bool = False,
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        num_steps: int | None = None,
        dequantize: bool = True,
    ) -> ODELikelihoodOutput:
        """Negative log-likelihood of each image in bits/dim through the probability-flow ODE of the model (see
        `hf_ddpm_ncsn.likelihood.ode_bpd`, whose arguments these are): of the 8-bit bins under uniform
        dequantization, a bound in the same currency as the DDPM's ELBO.

        Args:
            images (`torch.Tensor`): (B, C, H, W) 8-bit images, as uint8 or as float scaled to [-1, 1].
            generator (`torch.Generator`, *optional*): draws the dequantization noise and the probes.
            batch_size (`int`, *optional*): images per ODE solve (default: all).
            exact_trace (`bool`, defaults to `False`): exact divergence instead of Hutchinson's estimate.
            num_probes (`int`, defaults to 1): Rademacher probes per image.
            rtol (`float`, defaults to 1e-5), atol (`float`, defaults to 1e-5): adaptive solver tolerances.
            method (`str`, defaults to `"dopri5"`): torchdiffeq solver (`"rk4"` etc. with `num_steps`).
            num_steps (`int`, *optional*): steps of a fixed-step method.
            dequantize (`bool`, defaults to `True`): `False` gives the continuous density at the images.
        """
        # a class-conditional UNet is scored on its null class, as the ELBO is
        x0 = self._likelihood_inputs(images, generator, batch_size)
        return ode_bpd(
            self._likelihood_unet_output,
            self.scheduler,
            x0,
            time_embedding_type=self.unet.config.time_embedding_type,
            dequantize=dequantize,
            exact_trace=exact_trace,
            num_probes=num_probes,
            rtol=rtol,
            atol=atol,
            generator=generator,
            batch_size=batch_size,
            method=method,
            num_steps=num_steps,
            progress=self.progress_bar,
        )

    def progress_bar(self, iterable=None, total=None):
        """diffusers' progress bar, with few updates when stderr is not a terminal (`progress.tqdm_kwargs`) unless
        `set_progress_bar_config` was called."""
        if not hasattr(self, "_progress_bar_config"):
            self.set_progress_bar_config(**tqdm_kwargs())
        return super().progress_bar(iterable=iterable, total=total)

    def _denoising_loop(
        self,
        sample: torch.Tensor,
        generator,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
        model: Callable | None = None,
    ) -> torch.Tensor:
        """Run the scheduler's `step` over its timesteps with a progress bar and callbacks; `model` is the
        (sample, timestep) -> output callable (default: `model_output`)."""
        model = model or self.model_output
        callback = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sample = self.scheduler.step(model(sample, t), t, sample, generator=generator).prev_sample
            if callback is not None:
                sample = callback(i, t, sample)
        return sample

    def _to_output(self, sample: torch.Tensor, output_type: str, known: KnownPixels | None = None):
        """Map samples in [-1, 1] to "pt" (B, C, H, W) or "np" (B, H, W, C) in [0, 1], or PIL images; the known
        pixels of an inpainting are the input image's as given (no round trip through [-1, 1])."""
        images = (sample / 2 + 0.5).clamp(0, 1)
        if known is not None:
            images = known.paste(images, known.image_01.to(images.dtype))
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)
