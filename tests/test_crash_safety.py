"""Crash safety, by deterministic fault injection: every filesystem mutation of a write is a crash point, and at
each one the folder must hold the old version or the new one (`fault_injection.py`, `save_crash_harness.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.fault_injection import crash_points
from support.tiny_models import tiny_ncsn

import hf_ddpm_ncsn.sharing.atomic as atomic
from hf_ddpm_ncsn import NCSNPipeline
from hf_ddpm_ncsn.checkpoints import (
    ABANDONED_DIR,
    STATE_FILE,
    in_lineage,
    list_checkpoints,
    move_aside_other_lineages,
    new_lineage,
    prune,
    publish_checkpoint,
    read_state,
    recover,
    staging_path,
    write_state,
)

TESTS = Path(__file__).resolve().parent


# --- save_pretrained: SIGKILL at every mutation --------------------------------------------------------------


def _run_harness(tmp_path: Path, mode: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(TESTS / "support" / "save_crash_harness.py"), str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_save_pretrained_over_a_pipeline_leaves_the_old_or_the_new_one_at_every_kill_point(tmp_path):
    results = _run_harness(tmp_path, "exchange")
    kills = [r for r in results if r["killed"]]
    assert len(kills) > 10 and results[-1] == {**results[-1], "killed": False, "exit_code": 0}
    seen = set()
    for r in kills:
        after = r["after_kill"]
        assert after["state"] in ("old", "new"), r  # never nothing, never a mix
        assert after["extras_intact"], r  # the checkpoint and the model card of the folder are kept
        seen.add(after["state"])
        # the next save removes what the kill left (staging folder beside, backups inside) and publishes the new one
        assert r["after_next_save"] == {"state": "new", "extras_intact": True, "leftovers": []}, r
    assert seen == {"old", "new"}  # kill points before and after the switch were both visited


@pytest.mark.slow
def test_without_an_atomic_exchange_the_one_unsafe_instant_is_repaired_at_the_next_write(tmp_path):
    # filesystems without renameat2(RENAME_EXCHANGE): the old folder is renamed aside, then the new one in; a kill
    # between the two leaves no folder for an instant, and the clean-up every write starts with puts the old back
    kills = [r for r in _run_harness(tmp_path, "no-exchange") if r["killed"]]
    missing = [r for r in kills if r["after_kill"]["state"] not in ("old", "new")]
    assert len(missing) == 1, missing
    assert any(name.endswith(".old") for name in missing[0]["after_kill"]["leftovers"])
    for r in kills:
        assert r["after_clean_up"]["state"] in ("old", "new") and r["after_clean_up"]["extras_intact"], r
        assert r["after_next_save"] == {"state": "new", "extras_intact": True, "leftovers": []}, r


def test_leftovers_of_an_earlier_crash_are_removed_at_the_next_save(tmp_path):
    target = tmp_path / "pipe"
    tiny_ncsn().save_pretrained(target)
    # what the previous implementation's crashes left: a backup inside, a staging folder beside
    (target / ".unet.k3j2h1.old" / "unet").mkdir(parents=True)
    (target / ".unet.k3j2h1.old" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"old")
    (tmp_path / ".pipe.abc123.partial" / "unet").mkdir(parents=True)
    (target / "checkpoint-3").mkdir()
    tiny_ncsn().save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    assert sorted(p.name for p in target.iterdir()) == [
        "checkpoint-3",
        "hf_ddpm_ncsn_pipeline.py",
        "model_index.json",
        "scheduler",
        "unet",
    ]
    assert isinstance(NCSNPipeline.from_pretrained(target), NCSNPipeline)


def test_saving_keeps_the_folder_mode_and_refuses_a_file(tmp_path):
    target = tmp_path / "pipe"
    target.mkdir(mode=0o750)
    os.chmod(target, 0o750)
    tiny_ncsn().save_pretrained(target)
    assert (target.stat().st_mode & 0o777) == 0o750
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        tiny_ncsn().save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


# --- checkpoints: every mutation of publishing, pruning and moving aside ---------------------------------------


def _checkpoint(root: Path, step: int, run_id: str, lineage: list | None = None, staged: bool = False) -> Path:
    folder = staging_path(root, step) if staged else root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(run_id.encode() * 64)
    (folder / "random_states_0.pkl").write_bytes(b"rng" * 10)
    write_state(folder, {"global_step": step, "run_id": run_id, "lineage": lineage or [[run_id, 0]]})
    return folder


def _run_of(folder: Path) -> str:
    return read_state(folder)["run_id"]


def _assert_every_checkpoint_folder_is_complete(root: Path) -> None:
    folders = [p for p in root.iterdir() if p.name.startswith("checkpoint-")]
    assert sorted(folders) == sorted(list_checkpoints(root)), [p.name for p in folders]


def test_a_crash_while_publishing_over_an_existing_checkpoint_never_loses_a_complete_one(tmp_path):
    root = tmp_path / "out"

    def setup():
        atomic._remove(root)
        _checkpoint(root, 10, "A")
        _checkpoint(root, 20, "A")
        _checkpoint(root, 20, "B", staged=True)  # complete, about to replace checkpoint-20

    for at in crash_points(setup, lambda: publish_checkpoint(staging_path(root, 20), root, 20)):
        _assert_every_checkpoint_folder_is_complete(root)
        assert "checkpoint-10" in [p.name for p in list_checkpoints(root)], at  # latest is always complete
        recover(root)  # what the next start does first
        _assert_every_checkpoint_folder_is_complete(root)
        assert [p.name for p in list_checkpoints(root)] == ["checkpoint-10", "checkpoint-20"], at
        # the staged (newer) checkpoint is checkpoint-20; the one it replaced is kept aside, never deleted
        assert _run_of(root / "checkpoint-20") == "B", at
        (replaced,) = (root / ABANDONED_DIR).rglob("checkpoint-20")
        assert _run_of(replaced) == "A", at
        assert not [p for p in root.iterdir() if p.name.startswith(".")], at


def test_a_crash_while_the_limit_deletes_leaves_no_half_deleted_checkpoint(tmp_path):
    root = tmp_path / "out"

    def setup():
        atomic._remove(root)
        for step in (10, 20, 30, 40):
            _checkpoint(root, step, "A")

    for at in crash_points(setup, lambda: prune(root, 2)):
        _assert_every_checkpoint_folder_is_complete(root)  # a folder being deleted is hidden first
        assert {"checkpoint-30", "checkpoint-40"} <= {p.name for p in list_checkpoints(root)}, at
        recover(root)
        assert not [p for p in root.iterdir() if p.name.startswith(".")], at  # the next start finishes the delete
        prune(root, 2)
        assert [p.name for p in list_checkpoints(root)] == ["checkpoint-30", "checkpoint-40"], at


def test_a_complete_staged_checkpoint_is_published_at_the_next_start_and_an_incomplete_one_removed(tmp_path):
    root = tmp_path / "out"
    _checkpoint(root, 10, "A")
    _checkpoint(root, 20, "A", staged=True)  # the crash came between the state file and the rename
    incomplete = staging_path(root, 30)
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"half")
    damaged = _checkpoint(root, 40, "A", staged=True)
    (damaged / "model.safetensors").write_bytes(b"truncated")  # its size no longer matches the state file
    recover(root)
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-10", "checkpoint-20"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def test_a_checkpoint_with_a_missing_or_resized_file_is_not_complete(tmp_path):
    folder = _checkpoint(tmp_path, 10, "A")
    assert read_state(folder)["files"] == {"model.safetensors": 64, "random_states_0.pkl": 30}
    (folder / "random_states_0.pkl").unlink()  # a checkpoint half-deleted by the previous implementation
    assert read_state(folder) is None and list_checkpoints(tmp_path) == []
    (folder / "random_states_0.pkl").write_bytes(b"rng" * 10)
    (folder / STATE_FILE).write_text('{"global_step": 11}')  # names another step than the folder
    assert list_checkpoints(tmp_path) == []


def test_a_state_without_a_complete_run_record_is_refused_not_a_key_error():
    from hf_ddpm_ncsn.checkpoints import FORMAT_VERSION, resume_problems

    current = {"family": "ddpm", "num_processes": 1, "arguments": {}}
    for state in ({"global_step": 2}, {"format": FORMAT_VERSION, "global_step": 2, "family": "ddpm"}):
        mismatches, changes = resume_problems(state, current)
        assert mismatches and "records no run" in mismatches[0] and changes == []


def test_starting_a_run_moves_the_checkpoints_of_other_lineages_aside_atomically(tmp_path):
    root = tmp_path / "out"
    resumed = {"run_id": "A", "global_step": 20, "lineage": [["A", 0]]}
    lineage = new_lineage(resumed, 20)
    assert lineage[0] == ["A", 0] and lineage[1][1] == 20 and lineage[1][0] != "A"

    def setup():
        atomic._remove(root)
        for step in (10, 20, 30, 40):  # run A; the new run resumes from 20, so 30 and 40 are an abandoned future
            _checkpoint(root, step, "A")
        _checkpoint(root, 5, "X")  # another run altogether

    for at in crash_points(setup, lambda: move_aside_other_lineages(root, lineage)):
        _assert_every_checkpoint_folder_is_complete(root)
        assert {"checkpoint-10", "checkpoint-20"} <= {p.name for p in list_checkpoints(root)}, at
        moved = list((root / ABANDONED_DIR).rglob("checkpoint-*"))
        assert len(moved) + len(list_checkpoints(root)) == 5, at  # moved or in place: none lost
    move_aside_other_lineages(root, lineage)
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-10", "checkpoint-20"]
    assert all(in_lineage(read_state(p), lineage) for p in list_checkpoints(root))
    assert not in_lineage({"run_id": "A", "global_step": 30}, lineage)
    assert not in_lineage({"global_step": 10}, lineage)  # written before checkpoints recorded their run


def test_remove_tree_hides_the_folder_before_deleting_it(tmp_path):
    folder = _checkpoint(tmp_path, 10, "A")

    def setup():
        atomic._remove(tmp_path)
        _checkpoint(tmp_path, 10, "A")

    for at in crash_points(setup, lambda: atomic.remove_tree(folder)):
        assert not folder.exists() or read_state(folder) is not None, at
        atomic.clean_stale(folder)
        assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["checkpoint-10"]), at


def test_saving_the_folder_this_process_works_in_keeps_the_working_directory_usable(tmp_path, monkeypatch):
    target = tmp_path / "pipe"
    tiny_ncsn().save_pretrained(target)
    (target / "logs").mkdir()
    monkeypatch.chdir(target / "logs")
    tiny_ncsn().save_pretrained(target)  # the folder is replaced by another one: this process follows it
    assert Path(os.getcwd()) == (target / "logs").resolve()
    Path("written-after.txt").write_text("x")  # a relative write lands in the published folder
    assert (target / "logs" / "written-after.txt").read_text() == "x"


def test_only_the_leftovers_of_this_folder_are_cleaned_not_those_of_a_sibling_with_a_longer_name(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    # pipe.v2's backup after a crash between the two renames of a filesystem without exchange: its only copy
    sibling_backup = tmp_path / ".pipe.v2.0a1b2c3d.old"
    sibling_backup.mkdir()
    (sibling_backup / "checkpoint-5").mkdir()
    tiny_ncsn().save_pretrained(tmp_path / "pipe")
    atomic.clean_stale(tmp_path / "pipe")
    assert (sibling_backup / "checkpoint-5").is_dir()
    atomic.clean_stale(tmp_path / "pipe.v2")  # its own clean-up puts it back
    assert (tmp_path / "pipe.v2" / "checkpoint-5").is_dir() and not sibling_backup.exists()


def test_a_switch_that_fails_leaves_the_old_folder_and_no_staging(tmp_path, monkeypatch):
    target = tmp_path / "pipe"
    tiny_ncsn().save_pretrained(target)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def busy(*args):
        raise OSError(16, "Device or resource busy")  # what renaming a mount point answers

    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real_rename = os.rename
    monkeypatch.setattr(
        os, "rename", lambda a, b: busy() if Path(b).name == "pipe" and ".partial" in str(a) else real_rename(a, b)
    )
    with pytest.raises(OSError, match="busy"):
        tiny_ncsn().save_pretrained(target)
    monkeypatch.undo()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # backup renamed back
    assert isinstance(NCSNPipeline.from_pretrained(target), NCSNPipeline)


def test_a_mount_point_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == tmp_path.resolve())
    with pytest.raises(ValueError, match="is a mount point.*use a folder inside it"):
        tiny_ncsn().save_pretrained(tmp_path)
    from hf_ddpm_ncsn.training import main

    assert main("ddpm", ["--output_dir", str(tmp_path), "--max_train_steps", "1"]) == 2
