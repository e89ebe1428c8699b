"""The old import path of `hf_ddpm_ncsn.training.arguments` (the training scripts' arguments), kept working."""

from .training.arguments import DDPMArguments, NCSNArguments, TrainingArguments, parse_training_arguments

__all__ = ["DDPMArguments", "NCSNArguments", "TrainingArguments", "parse_training_arguments"]
