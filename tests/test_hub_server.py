"""Prove that ``LocalHubServer`` answers the real ``huggingface_hub`` client the way the Hub round-trip tests rely on.

Every test goes through the public client functions (no mocking), so a client upgrade that changes its requests
or their parsing shows up here first rather than as a confusing failure in a push / load test.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from support.hub_server import DEFAULT_USER, LocalHubServer, git_blob_oid

README = "---\nlicense: apache-2.0\ntags:\n- test\n---\n\n# Tiny test repo\n"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _make_folder(root: Path, big_size: int = 64 * 1024) -> dict[str, bytes]:
    """Write a folder like a saved diffusers pipeline; returns ``{relative path: bytes}``."""
    files = {
        "notes.txt": b"hello hub\nsecond line\n",
        "config.json": json.dumps({"_class_name": "Tiny", "sample_size": 8}).encode(),
        "unet/diffusion_pytorch_model.safetensors": os.urandom(big_size),
        "README.md": README.encode(),  # goes through validate-yaml
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def api(hub_server: LocalHubServer) -> HfApi:
    return HfApi(endpoint=hub_server.url, token="hf_dummy")


def test_create_upload_and_download_round_trip(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    name = _unique("roundtrip")
    url = api.create_repo(name)  # no namespace: the server puts it under the token's user
    repo_id = url.repo_id
    assert repo_id == f"{DEFAULT_USER}/{name}"
    # exist_ok=True goes through the 409 answer and reads the URL from its body.
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(repo_id)
    assert excinfo.value.response.status_code == 409

    local = _make_folder(tmp_path / "src")
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", commit_message="Add tiny model")
    assert info.oid == hub_server.head(repo_id)
    assert info.commit_url == f"{hub_server.url}/{repo_id}/commit/{info.oid}"
    assert hub_server.files(repo_id) == local
    assert [c.title for c in hub_server.commit_log(repo_id)] == ["Add tiny model", "initial commit"]

    # Unchanged files: the preupload oids match the local ones, so the client makes no new commit.
    assert api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src").oid == info.oid
    assert len(hub_server.commit_log(repo_id)) == 2

    # What loaders read: model info, file metadata (HEAD), a full snapshot and single files.
    model = api.model_info(repo_id)
    assert model.sha == info.oid and sorted(s.rfilename for s in model.siblings or []) == sorted(local)
    big = local["unet/diffusion_pytorch_model.safetensors"]
    meta = get_hf_file_metadata(hf_hub_url(repo_id, "unet/diffusion_pytorch_model.safetensors"))
    assert (meta.size, meta.etag, meta.commit_hash) == (len(big), git_blob_oid(big), info.oid)
    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))
    assert _read_tree(snapshot) == local and snapshot.name == info.oid
    one = hf_hub_download(repo_id, "config.json", cache_dir=tmp_path / "cache2")
    assert Path(one).read_bytes() == local["config.json"]
    pinned = hf_hub_download(repo_id, "notes.txt", revision=info.oid, cache_dir=tmp_path / "cache2")
    assert Path(pinned).read_bytes() == local["notes.txt"]


def test_a_pull_request_commit_leaves_main_alone(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("pr")).repo_id
    main_head = hub_server.head(repo_id)
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" * 100)

    info = api.upload_file(
        path_or_fileobj=tmp_path / "weights.bin", path_in_repo="w.bin", repo_id=repo_id, create_pr=True
    )

    assert info.pr_revision == "refs/pr/1" and info.pr_url == f"{hub_server.url}/{repo_id}/discussions/1"
    assert hub_server.head(repo_id) == main_head and hub_server.files(repo_id) == {}
    assert hub_server.head(repo_id, revision="refs/pr/1") == info.oid
    assert hub_server.read_file(repo_id, "w.bin", revision="refs/pr/1") == b"\x00\x01" * 100


def test_an_injected_commit_failure_fails_one_push(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("fail")).repo_id
    _make_folder(tmp_path / "src", big_size=4096)
    head_before = hub_server.head(repo_id)

    hub_server.fail_next(1, status=500, kinds=("commit",))  # the client does not retry the commit POST
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src")
    assert excinfo.value.response.status_code == 500 and "Injected failure" in str(excinfo.value)
    assert hub_server.head(repo_id) == head_before

    assert api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src").oid == hub_server.head(repo_id)
    assert hub_server.head(repo_id) != head_before


def test_not_found_errors_are_the_clients_typed_errors(api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("errors")).repo_id
    (tmp_path / "present.txt").write_text("here")
    api.upload_file(path_or_fileobj=tmp_path / "present.txt", path_in_repo="present.txt", repo_id=repo_id)
    cache = tmp_path / "cache"
    missing = f"{DEFAULT_USER}/does-not-exist"

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing, "config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(missing)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(missing, cache_dir=cache)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "present.txt", revision="no-such-branch", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")
    assert Path(hf_hub_download(repo_id, "present.txt", cache_dir=cache)).read_text() == "here"


@pytest.mark.slow
def test_diffusers_push_to_hub_and_from_pretrained(hub_server: LocalHubServer, hub_cache: Path) -> None:
    """diffusers' ``push_to_hub`` calls the module-level ``create_repo`` / ``upload_folder`` (one ``HfApi`` made at
    import), and ``from_pretrained`` the default endpoint and cache: all reach the local server because
    ``conftest.py`` set ``HF_ENDPOINT`` before huggingface_hub was imported."""
    diffusers = pytest.importorskip("diffusers")
    assert huggingface_hub.constants.ENDPOINT == hub_server.url
    name = _unique("scheduler")

    diffusers.DDPMScheduler(num_train_timesteps=123, beta_schedule="linear").push_to_hub(name)

    repo_id = f"{DEFAULT_USER}/{name}"
    assert {"scheduler_config.json", "README.md"} <= set(hub_server.files(repo_id))
    assert diffusers.DDPMScheduler.from_pretrained(repo_id).config.num_train_timesteps == 123
    assert any(hub_cache.iterdir())
