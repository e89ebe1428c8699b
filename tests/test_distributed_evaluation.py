"""scripts/evaluate.py under `accelerate launch` with two gloo processes against one process, and the chunking
that makes the two equal (`hf_ddpm_ncsn.evaluation.distributed`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.tiny_models import tiny_ddpm, tiny_ncsn
from test_training import TWO_GLOO_PROCESSES

from hf_ddpm_ncsn.evaluation import distributed, generate_samples, likelihood_report
from hf_ddpm_ncsn.evaluation.distributed import (
    CHUNK_SEED_STRIDE,
    ProcessFailedError,
    Shard,
    main_process_first,
    map_chunks,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"


def _run(launcher: list[str], args: list[str], cache: Path) -> subprocess.CompletedProcess:
    # one thread per process: the same float reduction order in every process, so equal inputs give equal bits
    env = {**os.environ, "HF_DDPM_NCSN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=400, cwd=REPO
    )


# ----------------------------------------------------------------------------------------------------------------
# The chunks: each draws from its own seed, so a chunk's result does not depend on who computes it
def test_each_batch_of_samples_draws_from_its_own_seed():
    pipe = tiny_ddpm(num_train_timesteps=10)
    samples = generate_samples(pipe, 6, 4, seed=3, num_inference_steps=4)

    def alone(seed: int, size: int) -> torch.Tensor:
        images = pipe(batch_size=size, generator=torch.Generator().manual_seed(seed), num_inference_steps=4,
                      output_type="np").images  # fmt: skip
        return (torch.from_numpy(images).permute(0, 3, 1, 2) * 255).round().clamp(0, 255).to(torch.uint8)

    assert samples.shape == (6, 1, 8, 8)
    assert torch.equal(samples[:4], alone(3, 4))  # batch 0: the seed itself, as a one-batch evaluation always had
    assert torch.equal(samples[4:], alone(3 + CHUNK_SEED_STRIDE, 2))


def test_the_likelihood_chunks_are_the_bound_of_each_batch_on_its_own_seed():
    pipe = tiny_ddpm(num_train_timesteps=10)
    images = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    report = likelihood_report(pipe, images, num_strata=0, batch_size=3, seed=7)
    parts = [
        pipe.elbo(chunk, generator=torch.Generator().manual_seed(seed), batch_size=3).bits_per_dim
        for chunk, seed in ((images[:3], 7), (images[3:], 7 + CHUNK_SEED_STRIDE))
    ]
    assert report["bits_per_dim"] == pytest.approx(torch.cat(parts).double().mean().item(), rel=1e-12)


def test_map_chunks_gives_each_process_every_kth_chunk():
    calls = []
    results = map_chunks(Shard(rank=0, world_size=1), 5, lambda chunk: calls.append(chunk) or chunk * 10)
    assert results == [0, 10, 20, 30, 40] and calls == [0, 1, 2, 3, 4]
    assert [chunk for chunk in range(7) if Shard(rank=1, world_size=3).owns(chunk)] == [1, 4]


def _gather_with_process_1(part_of_process_1):
    """A gather of two processes in which process 1 contributed `part_of_process_1`."""
    return lambda objects: [*objects, part_of_process_1]


def test_map_chunks_merges_the_processes_parts_in_chunk_order(monkeypatch):
    monkeypatch.setattr(distributed, "gather_object", _gather_with_process_1(({1: "b", 3: "d"}, None)))
    calls = []
    results = map_chunks(Shard(rank=0, world_size=2), 4, lambda chunk: calls.append(chunk) or "ac"[chunk // 2])
    assert results == ["a", "b", "c", "d"] and calls == [0, 2]


def test_a_failure_in_any_process_stops_every_process(monkeypatch):
    """Process 1 failed in its chunk: process 0 raises too, after the gather, naming it (none is left waiting); a
    process's own failure is raised as it is."""
    monkeypatch.setattr(distributed, "gather_object", _gather_with_process_1(({}, "OSError: disk full")))
    with pytest.raises(ProcessFailedError, match="evaluation process 1 of 2 failed: OSError: disk full"):
        map_chunks(Shard(rank=0, world_size=2), 2, lambda chunk: chunk)

    def fail(chunk):
        raise ValueError("bad chunk")

    monkeypatch.setattr(distributed, "gather_object", _gather_with_process_1(({1: 1}, None)))
    with pytest.raises(ValueError, match="bad chunk"):
        map_chunks(Shard(rank=0, world_size=2), 2, fail)


def test_a_failure_of_the_main_process_first_is_raised_on_the_others(monkeypatch):
    monkeypatch.setattr(distributed, "broadcast_object_list", lambda objects: ["OSError: no space left"])
    calls = []
    with pytest.raises(ProcessFailedError, match="evaluation process 0 of 2 failed: OSError: no space left"):
        main_process_first(Shard(rank=1, world_size=2), lambda: calls.append(1))
    assert calls == []  # the others do not start the work the main process failed at
    monkeypatch.setattr(distributed, "broadcast_object_list", lambda objects: objects)
    assert main_process_first(Shard(rank=1, world_size=2), lambda: "loaded") == "loaded"


def test_too_few_batches_for_the_processes_is_a_clear_error():
    Shard(rank=0, world_size=3).check_chunks("--num_samples 5 samples", 5, 2)  # 3 batches, 3 processes: accepted
    with pytest.raises(ValueError, match=r"--num_samples 4 samples in batches of --batch_size 4 make 1 batch\(es\)"):
        Shard(rank=0, world_size=2).check_chunks("--num_samples 4 samples", 4, 4)
    Shard(rank=0, world_size=2).check_chunks("--num_samples 3 samples", 3, 2)  # the largest batch size suggested
    with pytest.raises(ValueError, match=r"use --batch_size 2 or less, or at most 1 process\(es\)"):
        Shard(rank=0, world_size=2).check_chunks("--num_samples 3 samples", 3, 4)
    with pytest.raises(ValueError, match=r"use --batch_size 1 or less, or at most 3 process\(es\)"):
        Shard(rank=0, world_size=4).check_chunks("--num_samples 5 samples", 5, 2)
    with pytest.raises(ValueError, match=r"use at most 2 process\(es\)"):
        Shard(rank=0, world_size=3).check_chunks("2 held-out images", 2, 1)


# ----------------------------------------------------------------------------------------------------------------
# Two processes for real
@pytest.mark.slow
@pytest.mark.parametrize("family", ["ddpm", "ncsn"])
def test_two_gloo_processes_report_the_numbers_of_one_process(tmp_path: Path, family: str):
    """Sampling, the ELBO, its stratified estimate and the ODE likelihood shared by two processes give the one-process
    report to the bit: each batch has the same inputs and seed, and one thread per process sums in the same order.
    3 sample batches and 3 likelihood chunks: process 0 does two of each, process 1 one."""
    folder = tmp_path / family
    (tiny_ddpm(num_train_timesteps=10) if family == "ddpm" else tiny_ncsn()).save_pretrained(folder)
    sampling = ["--num_inference_steps", "4"] if family == "ddpm" else ["--num_langevin_steps", "1"]
    args = ["--pipeline", str(folder), "--num_samples", "10", "--batch_size", "4", "--num_elbo_images", "9",
            "--elbo_strata", "3", "--ode_rtol", "1e-3", "--ode_atol", "1e-3",
            *sampling]  # fmt: skip
    # two processes first, on an empty cache: the main process trains the classifier, the other loads it
    two = _run(TWO_GLOO_PROCESSES, [*args, "--output_dir", str(tmp_path / "two")], tmp_path / "cache")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run([sys.executable], [*args, "--output_dir", str(tmp_path / "one")], tmp_path / "cache")
    assert one.returncode == 0, one.stderr[-3000:]
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    assert [report["num_processes"] for report in reports] == [1, 2]
    assert reports[0]["model_card_metrics"] == reports[1]["model_card_metrics"]  # every headline number, exactly
    assert (tmp_path / "one" / "samples.png").read_bytes() == (tmp_path / "two" / "samples.png").read_bytes()
    assert reports[0]["ode_likelihood"]["nfe"] == reports[1]["ode_likelihood"]["nfe"]
    if family == "ddpm":
        one_bound, two_bound = (report["likelihood"] for report in reports)
        assert one_bound["terms_mean_per_timestep"] == two_bound["terms_mean_per_timestep"]
        untimed = {"seconds": 0}
        assert one_bound["stratified"] | untimed == two_bound["stratified"] | untimed
    assert two.stdout.count("wrote ") == 1  # the main process alone prints and writes


@pytest.mark.slow
def test_two_processes_refuse_work_that_leaves_one_idle_before_sampling(tmp_path: Path):
    folder = tmp_path / "ddpm"
    tiny_ddpm(num_train_timesteps=10).save_pretrained(folder)
    base = ["--pipeline", str(folder), "--batch_size", "4", "--num_inference_steps", "4",
            "--output_dir", str(tmp_path)]  # fmt: skip
    cache = tmp_path / "cache"
    few_samples = _run(TWO_GLOO_PROCESSES, [*base, "--num_samples", "4"], cache)
    assert few_samples.returncode != 0
    assert "--num_samples 4 samples in batches of --batch_size 4 make 1 batch(es) for 2 processes" in (
        few_samples.stderr
    )
    few_images = _run(TWO_GLOO_PROCESSES, [*base, "--num_samples", "8", "--num_elbo_images", "3"], cache)
    assert few_images.returncode != 0
    assert "3 held-out images (--num_elbo_images) in batches of --batch_size 4 make 1 batch(es)" in few_images.stderr
    assert not (tmp_path / "report.json").exists() and not cache.exists()  # refused before the classifier
