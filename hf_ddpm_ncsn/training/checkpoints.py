"""Training checkpoints on disk: each one complete or absent, every one in the output folder of one lineage, and
each one recording the run it belongs to.

A checkpoint is `<output_dir>/checkpoint-<step>/`: accelerate's saved state plus `training_state.json`, written
last. The state file records the step, the run (family, UNet and scheduler configs, arguments, world size), the
lineage of runs it descends from, and the size of every other file in the checkpoint, so a damaged checkpoint is
never taken for a complete one. Checkpoints are written into `.checkpoint-<step>.partial` and published with one
rename; the limit deletes by renaming aside first (`atomic.remove_tree`). Nothing here deletes a complete
checkpoint except the limit: whatever stands in the way is moved into `abandoned-checkpoints/`.

Lineage. Every start of the training script is a run with a fresh id; its lineage is the lineage of the checkpoint
it resumed from plus `[run_id, start_step]`. When a run starts, checkpoints of the output folder that are not its
ancestors (a fresh start's predecessors, or those an abandoned run wrote past the resume point) are moved into
`abandoned-checkpoints/<time>-<run>/` before the first new one is written, so `latest` and
`--checkpoints_total_limit` only ever see the current lineage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..json_utils import dumps, to_json_value
from ..sharing.atomic import atomic_write_text, remove_tree

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
ABANDONED_DIR = "abandoned-checkpoints"
FORMAT_VERSION = 1
_MAX_STATE_BYTES = 16 * 2**20
_NAME = re.compile(r"^checkpoint-(\d+)$")
_HIDDEN = re.compile(r"^\.checkpoint-(\d+)\.(?:.+\.)?(partial|deleting)$")

# Arguments whose change makes a resumed run a different run: the data order (exact resume), the objective, and
# the optimizer/EMA hyperparameters that load_state would silently restore from the checkpoint anyway.
RUN_DEFINING_ARGUMENTS = (
    "dataset_name",
    "dataset_config_name",
    "train_data_dir",
    "image_column",
    "resolution",
    "center_crop",
    "random_flip",
    "train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "mixed_precision",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "use_ema",
    "ema_inv_gamma",
    "ema_power",
    "ema_max_decay",
    "loss_type",
    "vlb_weight",
    "timestep_sampler",
    "class_conditional",
    "class_dropout_prob",
)
# Arguments that only say where things go or which checkpoint to start from: not worth a log line when they change.
_LOCATION_ARGUMENTS = ("output_dir", "resume_from_checkpoint", "cache_dir", "model_config_name_or_path")


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` path, or None for any other name."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def read_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The state file of a checkpoint folder, or None when the checkpoint is incomplete or damaged (no state file,
    unreadable JSON, a file missing or of another size than recorded)."""
    path = Path(folder) / STATE_FILE
    try:
        if path.stat().st_size > _MAX_STATE_BYTES:
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return None
    for name, size in (state.get("files") or {}).items():
        try:
            if (Path(folder) / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return state


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (`checkpoint-<step>` whose state file is intact and names that step), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step = checkpoint_step(path)
        state = read_state(path) if step is not None and path.is_dir() else None
        if state is not None and state["global_step"] == step:
            found.append(path)
    return sorted(found, key=checkpoint_step)


def write_state(staging: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Record the size of every file of the staged checkpoint, then write the state file (last, atomically)."""
    staging = Path(staging)
    files = {
        p.relative_to(staging).as_posix(): p.stat().st_size
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }
    atomic_write_text(staging / STATE_FILE, dumps({"format": FORMAT_VERSION, **state, "files": files}, indent=2))


def staging_path(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is published (the same name on every process)."""
    return Path(output_dir) / f".{CHECKPOINT_PREFIX}{step}.partial"


def publish_checkpoint(staging: str | os.PathLike, output_dir: str | os.PathLike, step: int) -> Path:
    """Rename a complete staged checkpoint to `checkpoint-<step>`. A folder already holding that name (a checkpoint
    of another lineage) is first moved into `abandoned-checkpoints/`: nothing is deleted, and in between `latest`
    resolves to the previous complete checkpoint."""
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    if os.path.lexists(final):
        _move_aside([final], Path(output_dir), "replaced")
    os.rename(staging, final)
    return final


def prune(output_dir: str | os.PathLike, limit: int | None) -> None:
    """Keep the newest `limit` checkpoints (all of the current lineage, see the module docstring)."""
    if not limit:
        return
    for old in list_checkpoints(output_dir)[:-limit]:
        remove_tree(old)
        logger.info("Removed %s (--checkpoints_total_limit %d)", old.name, limit)


def recover(output_dir: str | os.PathLike) -> None:
    """Finish what a crash interrupted, before anything reads the checkpoints: a complete staged checkpoint (the
    crash came between its state file and its rename) is published, as the newest version of its step; incomplete
    staging folders and folders being deleted are removed (they are hidden, so nothing took them for checkpoints)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        match = _HIDDEN.match(path.name)
        if match is None:
            continue
        step, kind = int(match.group(1)), match.group(2)
        state = read_state(path) if kind == "partial" else None
        if state is not None and state["global_step"] == step:
            publish_checkpoint(path, root, step)
            logger.warning("Recovered %s%d, left complete by an interrupted run", CHECKPOINT_PREFIX, step)
        else:
            shutil.rmtree(path, ignore_errors=True)


def new_lineage(resumed_state: Mapping[str, Any] | None, start_step: int) -> list[list[Any]]:
    """The lineage of a run starting now, from the state of the checkpoint it resumes (None: a fresh start)."""
    parents = list(resumed_state["lineage"]) if resumed_state is not None else []
    return [*parents, [uuid.uuid4().hex, start_step]]


def in_lineage(state: Mapping[str, Any] | None, lineage: list[list[Any]]) -> bool:
    """Whether a checkpoint is an ancestor of the run with `lineage`: written by a run of the lineage, no later
    than the step at which the next run of the lineage resumed."""
    if not state or not isinstance(state.get("run_id"), str):
        return False
    for (run_id, _), successor in zip(lineage, [*lineage[1:], None], strict=True):
        if state["run_id"] == run_id:
            return successor is None or state["global_step"] <= successor[1]
    return False


def move_aside_other_lineages(output_dir: str | os.PathLike, lineage: list[list[Any]]) -> list[Path]:
    """Move every `checkpoint-<step>` folder that is not an ancestor of the run with `lineage` into
    `abandoned-checkpoints/`; returns where they went."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    strays = [p for p in root.iterdir() if checkpoint_step(p) is not None and not in_lineage(read_state(p), lineage)]
    moved = _move_aside(sorted(strays, key=checkpoint_step), root, lineage[-1][0][:8])
    if moved:
        logger.warning(
            "Moved %d checkpoint(s) of another run (%s) to %s: they are not ancestors of this run, so `latest` and "
            "--checkpoints_total_limit must not see them. Delete the folder when you no longer need them.",
            len(moved),
            ", ".join(p.name for p in moved),
            moved[0].parent,
        )
    return moved


def _move_aside(paths: list[Path], root: Path, tag: str) -> list[Path]:
    """Rename each of `paths` (one atomic rename each) into `<root>/abandoned-checkpoints/<UTC time>-<tag>/`."""
    if not paths:
        return []
    (root / ABANDONED_DIR).mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    folder = Path(tempfile.mkdtemp(prefix=f"{stamp}-{tag}-", dir=root / ABANDONED_DIR))  # unique even twice a second
    for path in paths:
        os.rename(path, folder / path.name)
    return [folder / path.name for path in paths]


# ------------------------------------------------------------------------------------------------------------
# What a checkpoint records about its run, and whether a new run may resume it
def resume_problems(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    sampling_only_keys: Iterable[str] = (),
    argument_defaults: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Differences between the run a checkpoint recorded and the run about to resume it.

    Args:
        saved (`Mapping`): the checkpoint's state (`family`, `unet_config`, `scheduler_config`, `num_processes`,
            `arguments`).
        current (`Mapping`): the same keys for the new run; `unet_config` and `scheduler_config` may be missing
            (not built yet), and are then not compared.
        sampling_only_keys (`Iterable[str]`): scheduler config keys that only affect sampling (they may change).
        argument_defaults (`Mapping`, *optional*): each argument's default, which stands in for an argument the
            checkpoint does not record: it was written before the argument existed, and ran as its default does.

    Returns:
        `tuple`: (mismatches that forbid resuming, legitimate changes to log), each a list of readable lines.
    """
    recorded = ("family", "num_processes", "arguments", "unet_config", "scheduler_config", "run_id", "lineage")
    if saved.get("format") != FORMAT_VERSION or not all(key in saved for key in recorded):
        return ["the checkpoint records no run (it was written by an older hf_ddpm_ncsn), so it cannot be checked"], []
    saved, current = to_json_value(dict(saved)), to_json_value(dict(current))
    if saved["family"] != current["family"]:
        return [f"family: the checkpoint is a {saved['family']} run, this is a {current['family']} run"], []
    mismatches = []
    for key, label in (("unet_config", "UNet config"), ("scheduler_config", "scheduler config")):
        if key not in current:
            continue
        ignored = set(sampling_only_keys) if key == "scheduler_config" else set()
        for name in sorted(set(saved[key]) | set(current[key])):
            before, after = saved[key].get(name), current[key].get(name)
            if not name.startswith("_") and name not in ignored and before != after:
                mismatches.append(f"{label} {name}: checkpoint {_brief(before)}, now {_brief(after)}")
    if saved["num_processes"] != current["num_processes"]:
        mismatches.append(f"processes: checkpoint {saved['num_processes']}, now {current['num_processes']}")
    changes = []
    defaults = to_json_value(dict(argument_defaults or {}))
    for name in sorted(set(saved["arguments"]) | set(current["arguments"])):
        before = saved["arguments"].get(name, defaults.get(name))
        after = current["arguments"].get(name)
        if before == after or name in _LOCATION_ARGUMENTS:
            continue
        line = f"--{name}: checkpoint {_brief(before)}, now {_brief(after)}"
        (mismatches if name in RUN_DEFINING_ARGUMENTS else changes).append(line)
    return mismatches, changes


def _brief(value: Any, limit: int = 8) -> str:
    """`repr(value)`, with a long list (a schedule's `trained_betas`) cut to its ends and its length."""
    if isinstance(value, list) and len(value) > limit:
        return f"[{value[0]!r}, {value[1]!r}, ..., {value[-1]!r}] ({len(value)} values)"
    return repr(value)
