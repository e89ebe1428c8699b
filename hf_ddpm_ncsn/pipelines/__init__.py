from .pipeline_ddpm_posterior import DDPMPosteriorPipeline
from .pipeline_ncsn import NCSNPipeline

__all__ = ["DDPMPosteriorPipeline", "NCSNPipeline"]
