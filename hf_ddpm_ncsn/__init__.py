"""NCSN and DDPM as first-class diffusers schedulers and pipelines."""

from . import likelihood, losses, ncsnv2
from .likelihood import ELBOOutput
from .schedulers import DDPMPosteriorScheduler, NCSNScheduler

__version__ = "0.1.0"

__all__ = ["DDPMPosteriorScheduler", "ELBOOutput", "NCSNScheduler", "likelihood", "losses", "ncsnv2"]
