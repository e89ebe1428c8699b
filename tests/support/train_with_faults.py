"""Run a training script with a deterministic fault when the checkpoint of a given step is published (renamed into
place), whatever the machine's speed: SIGKILL just before or just after it, or an OSError instead of it (on the
main process only, the one that publishes).

    python tests/support/train_with_faults.py {before,after,fail} STEP SCRIPT [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

import hf_ddpm_ncsn.training.saving as saving  # the module whose save_checkpoint calls publish_checkpoint

when, step, script, *argv = sys.argv[1:]
publish = saving.publish_checkpoint


def publish_with_a_crash(staging, output_dir, global_step):
    if when == "before" and global_step == int(step):
        os.kill(os.getpid(), signal.SIGKILL)  # the staged checkpoint is complete, its state file written
    if when == "fail" and global_step == int(step):
        raise OSError(28, "injected: no space left on device")
    final = publish(staging, output_dir, global_step)
    if when == "after" and global_step == int(step):
        os.kill(os.getpid(), signal.SIGKILL)
    return final


saving.publish_checkpoint = publish_with_a_crash
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
