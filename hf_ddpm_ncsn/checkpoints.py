"""The old import path of `hf_ddpm_ncsn.training.checkpoints` (the checkpoint folders on disk), kept working.

A re-export: patching a name here does not change what the training loop calls; patch the module that calls it.
"""

from .training.checkpoints import (
    ABANDONED_DIR,
    CHECKPOINT_PREFIX,
    FORMAT_VERSION,
    RUN_DEFINING_ARGUMENTS,
    STATE_FILE,
    checkpoint_step,
    in_lineage,
    list_checkpoints,
    move_aside_other_lineages,
    new_lineage,
    prune,
    publish_checkpoint,
    read_state,
    recover,
    resume_problems,
    staging_path,
    write_state,
)

__all__ = [
    "ABANDONED_DIR",
    "CHECKPOINT_PREFIX",
    "FORMAT_VERSION",
    "RUN_DEFINING_ARGUMENTS",
    "STATE_FILE",
    "checkpoint_step",
    "in_lineage",
    "list_checkpoints",
    "move_aside_other_lineages",
    "new_lineage",
    "prune",
    "publish_checkpoint",
    "read_state",
    "recover",
    "resume_problems",
    "staging_path",
    "write_state",
]
