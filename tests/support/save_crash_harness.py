"""Kill `save_pretrained` with SIGKILL at each of its filesystem mutations, in a forked child, and report what the
folder held after each kill, after the clean-up the next write starts with, and after the next save. Run by
test_crash_safety.py in a fresh process (no server threads to fork beside):

    python tests/support/save_crash_harness.py WORK_DIR {exchange,no-exchange}

prints one JSON list, an entry per kill point.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from fault_injection import fault_at
from tiny_models import tiny_ncsn

import hf_ddpm_ncsn.sharing.atomic as atomic
from hf_ddpm_ncsn import NCSNPipeline

# what else a training output folder holds, another writer's staging folder included: all must survive
EXTRAS = {
    "checkpoint-10/state.safetensors": b"training state",
    "README.md": b"model card",
    ".checkpoint-20.partial/model.safetensors": b"a checkpoint being written",
}
PIPELINE_ENTRIES = {"model_index.json", "hf_ddpm_ncsn_pipeline.py", "unet", "scheduler"}


def fingerprint(pipe: NCSNPipeline) -> tuple[int, float]:
    return pipe.scheduler.config.num_langevin_steps, round(float(sum(p.sum() for p in pipe.unet.parameters())), 4)


def describe(target: Path, versions: dict[str, tuple]) -> dict:
    leftovers = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))
    if target.is_dir():
        leftovers += sorted(
            f"{target.name}/{p.name}" for p in target.iterdir() if atomic._leftover_of(p.name, PIPELINE_ENTRIES)
        )
    try:
        found = fingerprint(NCSNPipeline.from_pretrained(target))
        state = next((name for name, value in versions.items() if value == found), f"mixed {found}")
    except Exception as err:  # noqa: BLE001 (the report says what a user would have seen)
        state = f"unloadable: {type(err).__name__}: {str(err)[:200]}"
    extras = all((target / rel).is_file() and (target / rel).read_bytes() == data for rel, data in EXTRAS.items())
    return {"state": state, "extras_intact": extras, "leftovers": leftovers}


def main(work: Path, exchange_supported: bool) -> list[dict]:
    torch.set_num_threads(1)
    if not exchange_supported:  # a filesystem without an atomic exchange of two folders
        atomic.exchange = lambda a, b: False
    old, new = tiny_ncsn(), tiny_ncsn()
    new.scheduler.register_to_config(num_langevin_steps=5)
    with torch.no_grad():
        for p in new.unet.parameters():
            p.add_(0.5)
    versions = {"old": fingerprint(old), "new": fingerprint(new)}
    pristine, target = work / "pristine", work / "pipe"
    old.save_pretrained(pristine)
    for rel, data in EXTRAS.items():
        (pristine / rel).parent.mkdir(parents=True, exist_ok=True)
        (pristine / rel).write_bytes(data)

    results = []
    for at in range(1, 1000):
        for path in [target, *work.glob(f".{target.name}.*")]:
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(pristine, target, symlinks=True)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                with fault_at(at, kill=True):
                    new.save_pretrained(target)
            except BaseException:  # noqa: BLE001
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status)
        entry = {"at": at, "killed": killed, "exit_code": None if killed else os.WEXITSTATUS(status)}
        entry["after_kill"] = describe(target, versions)
        if not target.exists():  # something re-creates the folder empty before the clean-up (os.makedirs)
            target.mkdir()
        atomic.clean_stale(target)  # what the next write does first
        entry["after_clean_up"] = describe(target, versions)
        new.save_pretrained(target)
        entry["after_next_save"] = describe(target, versions)
        results.append(entry)
        if not killed:
            break
    return results


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2] == "exchange")))
