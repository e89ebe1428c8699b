"""Pipelines on the (local, Hub-compatible) test server: push, then load by repo id in fresh processes."""

import uuid

import pytest
import torch
from huggingface_hub import ModelCard
from support.tiny_models import tiny_ddpm, tiny_ncsn
from test_save_load import FACTORIES, ROUTES, check_route

from hf_ddpm_ncsn.hub import HubPushError

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz0123"


def _repo() -> str:
    return f"test-user/pipe-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
def test_push_then_load_by_repo_id_by_every_route_then_offline(hub_server, hub_env, tmp_path, name):
    pipe = FACTORIES[name]()
    repo_id = _repo()
    pipe.push_to_hub(
        repo_id,
        token=TOKEN,
        dataset="digits",
        training={"learning_rate": 1e-3, "hub_token": TOKEN},
        eval_results={"bits_per_dim": 1.5},
        num_grid_images=4,
    )
    files = set(hub_server.files(repo_id))
    assert {
        "model_index.json",
        "hf_ddpm_ncsn_pipeline.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "README.md",
        "samples.png",
    } <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    readme = hub_server.read_file(repo_id, "README.md").decode()
    assert TOKEN not in readme and all(TOKEN.encode() not in hub_server.read_file(repo_id, f) for f in files)
    card = ModelCard(readme)
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert repo_id in card.text and "trust_remote_code=True" in card.text

    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    for route in ROUTES:  # the first route fills the (empty) cache from the server
        check_route(route, name, repo_id, tmp_path, expected, env=hub_env)
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}
    for route in ("own class", "DiffusionPipeline after import"):
        check_route(route, name, repo_id, tmp_path, expected, env=offline)


def test_a_failed_push_raises_and_leaves_the_local_folder_intact(hub_server, tmp_path, caplog):
    pipe = tiny_ddpm()
    folder = tmp_path / "out"
    pipe.save_pretrained(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    hub_server.fail_next(1, status=500, kinds=("commit",))
    with pytest.raises(HubPushError) as err:
        pipe.save_pretrained(folder, push_to_hub=True, repo_id=_repo(), token=TOKEN)
    assert "intact" in str(err.value) and TOKEN not in str(err.value) and TOKEN not in caplog.text
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_push_to_a_server_that_is_down_raises_clearly():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HubPushError, match="test-user/down"):
        tiny_ncsn().push_to_hub("test-user/down", token=TOKEN, num_grid_images=0, endpoint=f"http://127.0.0.1:{port}")
