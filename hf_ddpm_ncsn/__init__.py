"""NCSN and DDPM as first-class diffusers schedulers and pipelines."""

from . import likelihood, losses, ncsnv2
from .fourier_unet import FourierFeaturesUNet2DModel
from .likelihood import ELBOOutput
from .pipelines import DDPMPosteriorPipeline, NCSNPipeline
from .schedulers import DDPMPosteriorScheduler, NCSNScheduler
from .sharing.diffusers_loading import register as _register_with_diffusers
from .sharing.folder_checks import check_pipeline_folder

__version__ = "0.1.0"

_register_with_diffusers(
    {
        "NCSNPipeline": NCSNPipeline,
        "DDPMPosteriorPipeline": DDPMPosteriorPipeline,
        "NCSNScheduler": NCSNScheduler,
        "DDPMPosteriorScheduler": DDPMPosteriorScheduler,
        "FourierFeaturesUNet2DModel": FourierFeaturesUNet2DModel,
    },
    folder_check=lambda folder, pipeline_class, variant: check_pipeline_folder(
        folder, pipeline_class.loadable_class_names, variant=variant
    ),
)

__all__ = [
    "DDPMPosteriorPipeline",
    "DDPMPosteriorScheduler",
    "ELBOOutput",
    "FourierFeaturesUNet2DModel",
    "NCSNPipeline",
    "NCSNScheduler",
    "likelihood",
    "losses",
    "ncsnv2",
]
