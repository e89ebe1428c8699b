from .scheduling_ddpm_posterior import DDPMPosteriorScheduler, DDPMPosteriorSchedulerOutput
from .scheduling_ncsn import NCSNScheduler, NCSNSchedulerOutput

__all__ = ["DDPMPosteriorScheduler", "DDPMPosteriorSchedulerOutput", "NCSNScheduler", "NCSNSchedulerOutput"]
