"""Saving and loading: safetensors only, every loading route in a fresh process, clear errors for broken folders."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from support.tiny_models import tiny_ddpm, tiny_ncsn, tiny_unet

import hf_ddpm_ncsn.pipelines.shareable_pipeline as shareable_pipeline
from hf_ddpm_ncsn import DDPMPosteriorPipeline, NCSNPipeline
from hf_ddpm_ncsn.sharing.folder_checks import PipelineFolderError

FACTORIES = {"NCSNPipeline": tiny_ncsn, "DDPMPosteriorPipeline": tiny_ddpm}


def run_python(code: str, env: dict | None = None, cwd=None) -> str:
    """Run `code` in a fresh interpreter, as a user would; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


@pytest.mark.parametrize("name", FACTORIES)
def test_save_writes_safetensors_configs_and_the_shim(tmp_path, name):
    FACTORIES[name]().save_pretrained(tmp_path)
    assert _files(tmp_path) == {
        "model_index.json",
        "hf_ddpm_ncsn_pipeline.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }
    index = json.loads((tmp_path / "model_index.json").read_text())
    scheduler = name.replace("Pipeline", "Scheduler")
    assert index["_class_name"] == ["hf_ddpm_ncsn_pipeline", name]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", scheduler]
    shim = (tmp_path / "hf_ddpm_ncsn_pipeline.py").read_text()
    assert shim.count("\n") == 1 and shim.startswith("from hf_ddpm_ncsn import ")


@pytest.mark.parametrize("name", FACTORIES)
def test_round_trip_is_bit_identical(tmp_path, name):
    pipe = FACTORIES[name]()
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    for (k, a), (_, b) in zip(pipe.unet.state_dict().items(), loaded.unet.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    a = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = loaded(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(a, b)


def test_pickle_weights_are_never_written():
    with pytest.raises(ValueError, match="safe_serialization=False"):
        tiny_ncsn().save_pretrained("unused", safe_serialization=False)


def test_saving_into_an_existing_folder_keeps_other_entries_and_is_atomic(tmp_path, monkeypatch):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "state.safetensors").write_bytes(b"x")
    pipe = tiny_ncsn()
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "checkpoint-10" / "state.safetensors").exists()
    before = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)}

    def crash(folder, cls):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shareable_pipeline, "finalize_saved_folder", crash)
    pipe.scheduler.register_to_config(num_langevin_steps=7)
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.save_pretrained(tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)} == before
    assert not [p for p in tmp_path.parent.iterdir() if p.name.endswith(".partial")]


# --- every loading route, each in a fresh Python process -----------------------------------------------------

ROUTES = {
    "own class": "from hf_ddpm_ncsn import {cls}\npipe = {cls}.from_pretrained({src!r})",
    "DiffusionPipeline after import": (
        "import hf_ddpm_ncsn\nfrom diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained({src!r})"
    ),
    "trust_remote_code without import": (
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained({src!r}, trust_remote_code=True)\n"
    ),
}

CHECK = """
import torch
torch.set_num_threads(1)  # as in the test process, so that the float reductions run in the same order
pipe.set_progress_bar_config(disable=True)
assert type(pipe).__name__ == {cls!r}, type(pipe)
assert type(pipe.scheduler).__name__ == {cls!r}.replace("Pipeline", "Scheduler"), type(pipe.scheduler)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
torch.save(images, {out!r})
"""


def check_route(route: str, cls: str, src: str, tmp_path, expected: torch.Tensor, env: dict | None = None) -> None:
    out = str(tmp_path / f"{abs(hash(route))}.pt")
    run_python(ROUTES[route].format(cls=cls, src=src) + CHECK.format(cls=cls, out=out), env=env, cwd=tmp_path)
    assert torch.equal(torch.load(out), expected), route


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("route", ROUTES)
def test_every_loading_route_in_a_fresh_process(tmp_path, name, route):
    pipe = FACTORIES[name]()
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    check_route(route, name, str(folder), tmp_path, expected, env={"HF_HOME": str(tmp_path / "hf_home")})


def test_without_the_package_or_trust_diffusers_asks_for_trust_remote_code(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path / "saved")
    code = f"""
    from diffusers import DiffusionPipeline
    try:
        DiffusionPipeline.from_pretrained({str(tmp_path / "saved")!r})
    except ValueError as err:
        print(err)
    """
    assert "trust_remote_code=True" in run_python(code, env={"HF_HOME": str(tmp_path / "hf_home")})


@pytest.mark.slow
def test_our_ddpm_folder_loads_its_unet_and_scheduler_in_plain_diffusers(tmp_path):
    tiny_ddpm().save_pretrained(tmp_path)
    code = f"""
    import sys
    from diffusers import DDPMScheduler, UNet2DModel
    unet = UNet2DModel.from_pretrained({str(tmp_path)!r}, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained({str(tmp_path)!r}, subfolder="scheduler")
    assert "hf_ddpm_ncsn" not in sys.modules
    print(scheduler.config.num_train_timesteps, unet.config.sample_size)
    """
    assert run_python(code).split() == ["20", "8"]


# --- broken folders ---------------------------------------------------------------------------------------------


def test_missing_weights_file_is_named(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PipelineFolderError, match="unet has no weights file .*re-save or re-download"):
        NCSNPipeline.from_pretrained(tmp_path)


def test_truncated_weights_file_is_named(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.safetensors is truncated"):
        NCSNPipeline.from_pretrained(tmp_path)
    weights.write_bytes(b"\x01")
    with pytest.raises(PipelineFolderError, match="truncated"):
        NCSNPipeline.from_pretrained(tmp_path)


def test_the_diffusion_pipeline_route_checks_the_folder_too(tmp_path):
    from diffusers import DiffusionPipeline

    tiny_ncsn().save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PipelineFolderError, match="truncated"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_wrong_pipeline_class_is_named(tmp_path):
    tiny_ddpm().save_pretrained(tmp_path)
    with pytest.raises(PipelineFolderError, match="describes a 'DDPMPosteriorPipeline' pipeline.*NCSNPipeline"):
        NCSNPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        NCSNPipeline.from_pretrained(tmp_path / "unet")


def test_pickle_only_weights_need_an_explicit_opt_in(tmp_path):
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        tmp_path, safe_serialization=False
    )
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.bin is a pickle file.*allow_pickle=True"):
        DDPMPosteriorPipeline.from_pretrained(tmp_path)
    pipe = DDPMPosteriorPipeline.from_pretrained(tmp_path, allow_pickle=True)
    pipe.save_pretrained(tmp_path / "converted")
    assert (tmp_path / "converted" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert isinstance(DDPMPosteriorPipeline.from_pretrained(tmp_path / "converted").unet, UNet2DModel)


# --- unsafe folders through every route that can return our classes --------------------------------------------


def _pickle_only(folder, class_name) -> None:
    """A saved NCSN folder whose UNet weights are a pickle file, with `class_name` as model_index's _class_name."""
    pipe = tiny_ncsn()
    pipe.save_pretrained(folder)
    torch.save(pipe.unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))


def test_diffusion_pipeline_refuses_pickle_weights_whatever_the_form_of_class_name(tmp_path):
    from diffusers import DiffusionPipeline

    plain = tmp_path / "plain"
    _pickle_only(plain, "NCSNPipeline")  # no shim in the name: diffusers finds diffusers.NCSNPipeline
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.bin is a pickle file"):
        DiffusionPipeline.from_pretrained(plain)
    # the shim path points into a decoy sub-folder holding a clean pipeline: the folder loaded is still checked
    decoy = tmp_path / "decoy"
    _pickle_only(decoy, ["clean/hf_ddpm_ncsn_pipeline", "NCSNPipeline"])
    tiny_ncsn().save_pretrained(decoy / "clean")
    with pytest.raises(PipelineFolderError, match=f"{decoy / 'unet'}.*pickle file"):
        DiffusionPipeline.from_pretrained(decoy)
    # the opt-in of our own class still works, and is the only way in
    assert isinstance(NCSNPipeline.from_pretrained(plain, allow_pickle=True), NCSNPipeline)


def test_a_hub_repo_with_pickle_weights_and_a_plain_class_name_is_refused(tmp_path, hub_server, hub_cache):
    import uuid

    from diffusers import DiffusionPipeline
    from huggingface_hub import HfApi

    _pickle_only(tmp_path / "repo", "NCSNPipeline")
    repo_id = f"test-user/pickled-{uuid.uuid4().hex[:8]}"
    api = HfApi()
    api.create_repo(repo_id)
    api.upload_folder(folder_path=str(tmp_path / "repo"), repo_id=repo_id)
    with pytest.raises(PipelineFolderError, match="pickle file"):
        DiffusionPipeline.from_pretrained(repo_id)


def test_a_variant_safetensors_file_does_not_make_pickle_weights_safe(tmp_path):
    _pickle_only(tmp_path, ["hf_ddpm_ncsn_pipeline", "NCSNPipeline"])
    # diffusers loads the .bin when the plain safetensors file is missing, whatever variants exist
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(_safetensors_bytes())
    with pytest.raises(PipelineFolderError, match="pickle file"):
        NCSNPipeline.from_pretrained(tmp_path)


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"x": torch.zeros(2)})


def _write_header(path, header) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(8))


@pytest.mark.parametrize(
    "header",
    [
        [1, 2, 3],  # a JSON list
        {"w": 5},  # an int where a tensor entry should be
        {"w": {"dtype": "F32", "shape": [2]}},  # no data_offsets
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},  # offsets that do not cover the data
        {"__metadata__": {"x": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
    ],
)
@pytest.mark.parametrize("route", ["own class", "DiffusionPipeline"])
def test_malformed_safetensors_headers_are_a_folder_error(tmp_path, header, route):
    from diffusers import DiffusionPipeline

    tiny_ncsn().save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    _write_header(weights, header)
    loader = NCSNPipeline if route == "own class" else DiffusionPipeline
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.safetensors is truncated or not a valid"):
        loader.from_pretrained(tmp_path)


def test_a_config_asking_for_an_unbounded_allocation_fails_fast_naming_the_key(tmp_path):
    tiny_ncsn().save_pretrained(tmp_path)
    config = tmp_path / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_langevin_steps": 50_000_000}))
    with pytest.raises(ValueError, match="num_langevin_steps must be an integer <= 100000"):
        NCSNPipeline.from_pretrained(tmp_path)
    config.write_text(" " * (17 * 2**20) + "{}")  # 17 MB of padding: refused before it is parsed
    with pytest.raises(PipelineFolderError, match="a config file may hold at most 16777216 bytes"):
        NCSNPipeline.from_pretrained(tmp_path)


@pytest.mark.slow
def test_the_remote_code_route_without_the_package_imported_refuses_pickle_weights_too(tmp_path):
    _pickle_only(tmp_path / "saved", ["hf_ddpm_ncsn_pipeline", "NCSNPipeline"])
    code = f"""
    import sys
    from diffusers import DiffusionPipeline
    assert "hf_ddpm_ncsn" not in sys.modules
    try:
        DiffusionPipeline.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
    except ValueError as err:
        print(type(err).__name__, "pickle file" in str(err))
    """
    assert run_python(code, env={"HF_HOME": str(tmp_path / "hf_home")}).split() == ["PipelineFolderError", "True"]


def test_pickle_weights_of_a_variant_or_asked_for_with_use_safetensors_false_are_refused(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = tiny_ncsn()
    pipe.save_pretrained(tmp_path)
    pickled = {k: v + 1 for k, v in pipe.unet.state_dict().items()}  # other weights: we see which file loaded
    torch.save(pickled, tmp_path / "unet" / "diffusion_pytorch_model.fp16.bin")
    torch.save(pickled, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    # the variant's safetensors file is missing, so diffusers would fall back to its pickle file
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.fp16.safetensors"):
        NCSNPipeline.from_pretrained(tmp_path, variant="fp16")
    with pytest.raises(PipelineFolderError, match="diffusion_pytorch_model.fp16.safetensors"):
        DiffusionPipeline.from_pretrained(tmp_path, variant="fp16")
    with pytest.raises(ValueError, match="use_safetensors=False loads pickle weights; pass allow_pickle=True"):
        NCSNPipeline.from_pretrained(tmp_path, use_safetensors=False)
    # through diffusers' loader the hook loads safetensors whatever the caller asked for
    loaded = DiffusionPipeline.from_pretrained(tmp_path, use_safetensors=False)
    for name, value in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], value), name


def test_the_loader_hook_fails_closed_when_diffusers_does_not_say_which_folder_it_loads():
    from diffusers.pipelines import pipeline_utils

    with pytest.raises(RuntimeError, match="cannot check this folder"):
        pipeline_utils.load_sub_model(
            library_name="diffusers", class_name="UNet2DModel", importable_classes={}, pipelines=None,
            is_pipeline_module=False, pipeline_class=NCSNPipeline, dtype=torch.float32, provider=None,
            sess_options=None, device_map=None, max_memory=None, offload_folder=None, offload_state_dict=False,
            model_variants={}, name="unet", variant=None, low_cpu_mem_usage=True, cached_folder=None,
            use_safetensors=None, provider_options=None, disable_mmap=False,
        )  # fmt: skip
