"""Prove that ``LocalHubServer`` speaks enough of the Hub API for the real ``huggingface_hub`` client.

Every test goes through the public client functions (no mocking), so a client upgrade that changes
requests or parsing shows up here first rather than as a confusing failure in a push/load test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from hub_server import DEFAULT_USER, LocalHubServer, git_blob_oid
except ImportError:
    from tests.hub_server import DEFAULT_USER, LocalHubServer, git_blob_oid

README = """---
license: apache-2.0
tags:
- test
---

# Tiny test repo
"""


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _make_folder(root: Path, big_size: int = 2 * 1024 * 1024) -> dict[str, bytes]:
    """Write a folder like a saved diffusers component; returns ``{relative path: bytes}``."""
    files = {
        "notes.txt": b"hello hub\nsecond line\n",
        "config.json": json.dumps({"_class_name": "Tiny", "sample_size": 8}, indent=2).encode(),
        "unet/diffusion_pytorch_model.safetensors": os.urandom(big_size),
        "README.md": README.encode(),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def api(hub_server: LocalHubServer) -> HfApi:
    return HfApi(endpoint=hub_server.url, token="hf_dummy")


def test_whoami_and_create_repo(api: HfApi, hub_server: LocalHubServer) -> None:
    assert api.whoami()["name"] == DEFAULT_USER

    name = _unique("create")
    url = api.create_repo(name)  # no namespace: the server puts it under the token's user
    assert url.repo_id == f"{DEFAULT_USER}/{name}"
    assert hub_server.repo_exists(url.repo_id)
    assert api.repo_exists(url.repo_id)

    # exist_ok=True goes through the 409 branch and still returns the URL from the 409 body.
    again = api.create_repo(url.repo_id, exist_ok=True)
    assert again.repo_id == url.repo_id
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(url.repo_id)
    assert excinfo.value.response.status_code == 409

    org_url = api.create_repo(f"some-org/{name}", repo_type="dataset", private=True)
    assert (org_url.repo_id, org_url.repo_type) == (f"some-org/{name}", "dataset")
    assert api.dataset_info(org_url.repo_id).private is True


def test_upload_folder_then_download(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("roundtrip")).repo_id
    local = _make_folder(tmp_path / "src")
    hub_server.clear_requests()

    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", commit_message="Add tiny model")

    assert info.oid == hub_server.head(repo_id)
    assert info.commit_url == f"{hub_server.url}/{repo_id}/commit/{info.oid}"
    assert hub_server.files(repo_id) == local
    kinds = [r.kind for r in hub_server.requests]
    # README.md is validated twice (upload_folder then create_commit), then one preupload + one commit.
    assert "validate-yaml" in kinds and kinds[-2:] == ["preupload", "commit"]
    assert hub_server.commit_log(repo_id)[0].title == "Add tiny model"

    # Metadata calls used by loaders.
    model = api.model_info(repo_id)
    assert model.sha == info.oid
    assert sorted(s.rfilename for s in model.siblings or []) == sorted(local)
    assert sorted(api.list_repo_files(repo_id)) == sorted(local)
    assert api.file_exists(repo_id, "unet/diffusion_pytorch_model.safetensors")
    assert not api.file_exists(repo_id, "missing.bin")
    meta = get_hf_file_metadata(hf_hub_url(repo_id, "unet/diffusion_pytorch_model.safetensors"))
    big = local["unet/diffusion_pytorch_model.safetensors"]
    assert (meta.size, meta.etag, meta.commit_hash) == (len(big), git_blob_oid(big), info.oid)

    # Full snapshot into an empty cache reproduces every byte.
    snapshot = snapshot_download(repo_id, cache_dir=tmp_path / "cache")
    assert _read_tree(Path(snapshot)) == local
    assert Path(snapshot).name == info.oid

    # Single file into another empty cache, at a branch and at the commit sha.
    one = hf_hub_download(repo_id, "config.json", cache_dir=tmp_path / "cache2")
    assert Path(one).read_bytes() == local["config.json"]
    pinned = hf_hub_download(repo_id, "notes.txt", revision=info.oid, cache_dir=tmp_path / "cache2")
    assert Path(pinned).read_bytes() == local["notes.txt"]


def test_reupload_skips_unchanged_files_and_deletes(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("reupload")).repo_id
    src = tmp_path / "src"
    _make_folder(src, big_size=1024)
    first = api.upload_folder(repo_id=repo_id, folder_path=src)

    # Identical content: the preupload oids match, so the client makes no new commit.
    hub_server.clear_requests()
    same = api.upload_folder(repo_id=repo_id, folder_path=src)
    assert same.oid == first.oid
    assert "commit" not in [r.kind for r in hub_server.requests]

    (src / "notes.txt").write_text("changed\n")
    (src / "config.json").unlink()
    changed = api.upload_folder(repo_id=repo_id, folder_path=src, delete_patterns=["*.json"])
    files = hub_server.files(repo_id)
    assert changed.oid != first.oid
    assert files["notes.txt"] == b"changed\n"
    assert "config.json" not in files
    # The old commit is still downloadable by sha.
    old = hf_hub_download(repo_id, "config.json", revision=first.oid, cache_dir=tmp_path / "cache")
    assert json.loads(Path(old).read_text())["_class_name"] == "Tiny"


def test_create_pr_and_url_encoded_revision(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("pr")).repo_id
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"\x00\x01" * 100)

    info = api.upload_folder(repo_id=repo_id, folder_path=src, create_pr=True)

    assert info.pr_revision == "refs/pr/1"
    assert "weights.bin" not in hub_server.files(repo_id)  # main untouched
    # "refs/pr/1" travels as "refs%2Fpr%2F1" in resolve URLs.
    path = hf_hub_download(repo_id, "weights.bin", revision="refs/pr/1", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"\x00\x01" * 100


def test_failed_push_raises_and_leaves_repo_unchanged(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = api.create_repo(_unique("fail")).repo_id
    src = tmp_path / "src"
    _make_folder(src, big_size=4096)
    head_before = hub_server.head(repo_id)

    hub_server.fail_next(1, status=500)  # the commit POST is not retried by the client
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=repo_id, folder_path=src)
    assert excinfo.value.response.status_code == 500
    assert "Injected failure" in str(excinfo.value)
    assert hub_server.head(repo_id) == head_before

    # A 4xx on preupload fails fast too (5xx there would be retried with backoff).
    with hub_server.failing(403, kinds=["preupload"]), pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=repo_id, folder_path=src)
    assert excinfo.value.response.status_code == 403

    # Rules are consumed / scoped: the next push goes through.
    assert api.upload_folder(repo_id=repo_id, folder_path=src).oid == hub_server.head(repo_id) != head_before


def test_not_found_errors(api: HfApi, hub_server: LocalHubServer, tmp_path: Path) -> None:
    repo_id = hub_server.create_repo(_unique("errors"))
    hub_server.commit(repo_id, {"present.txt": "here"})
    cache = tmp_path / "cache"

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{DEFAULT_USER}/does-not-exist", "config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{DEFAULT_USER}/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(f"{DEFAULT_USER}/does-not-exist", cache_dir=cache)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "present.txt", revision="no-such-branch", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")
    assert Path(hf_hub_download(repo_id, "present.txt", cache_dir=cache)).read_text() == "here"


def test_unnamespaced_canonical_repo(hub_server: LocalHubServer, tmp_path: Path) -> None:
    name = _unique("canonical")
    oid = hub_server.add_repo(name, {"config.json": "{}", "sub/dir/file.txt": "x"})
    assert Path(hf_hub_download(name, "sub/dir/file.txt", cache_dir=tmp_path)).read_text() == "x"
    snapshot = snapshot_download(name, cache_dir=tmp_path)
    assert Path(snapshot).name == oid
    assert _read_tree(Path(snapshot)) == {"config.json": b"{}", "sub/dir/file.txt": b"x"}


def test_module_level_functions_like_push_to_hub(hub_server: LocalHubServer, tmp_path: Path) -> None:
    """Mirror diffusers' ``PushToHubMixin``: module-level ``create_repo(exist_ok=True)`` + ``upload_folder``.

    These go through ``huggingface_hub.hf_api.api``, whose endpoint was fixed at import time; the
    ``hub_server`` fixture re-points it.
    """
    name = _unique("push")
    repo_id = huggingface_hub.create_repo(name, exist_ok=True).repo_id
    assert huggingface_hub.create_repo(name, exist_ok=True).repo_id == repo_id == f"{DEFAULT_USER}/{name}"
    local = _make_folder(tmp_path / "save", big_size=64 * 1024)

    info = huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=tmp_path / "save",
        commit_message="Upload scheduler",
        create_pr=False,
        path_in_repo=None,
    )
    assert info.pr_url is None
    assert hub_server.files(repo_id) == local
    # Default cache (HF_HUB_CACHE patched by the fixture) works too.
    assert Path(huggingface_hub.hf_hub_download(repo_id, "config.json")).read_bytes() == local["config.json"]


@pytest.mark.slow
def test_diffusers_push_to_hub_and_from_pretrained(hub_server: LocalHubServer, hub_cache: Path) -> None:
    """The real diffusers round trip: ``push_to_hub`` (model card lookup, create, upload) then load back."""
    diffusers = pytest.importorskip("diffusers")
    name = _unique("scheduler")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=123, beta_schedule="linear")

    scheduler.push_to_hub(name)

    repo_id = f"{DEFAULT_USER}/{name}"
    assert {"scheduler_config.json", "README.md"} <= set(hub_server.files(repo_id))
    loaded = diffusers.DDPMScheduler.from_pretrained(repo_id)
    assert loaded.config.num_train_timesteps == 123
    assert any(hub_cache.iterdir())


def test_subprocess_download_then_offline(hub_server: LocalHubServer, hub_env: dict[str, str], tmp_path: Path) -> None:
    """A fresh process configured only by env vars downloads, then re-loads with ``HF_HUB_OFFLINE=1``.

    Offline mode must be set before import (``constants.HF_HUB_OFFLINE`` is read once), hence subprocesses.
    """
    repo_id = hub_server.create_repo(_unique("offline"))
    local = _make_folder(tmp_path / "src", big_size=256 * 1024)
    hub_server.commit(repo_id, local)
    script = (
        "import hashlib, json, sys\n"
        "from pathlib import Path\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "repo = sys.argv[1]\n"
        "snap = Path(snapshot_download(repo))\n"
        "one = Path(hf_hub_download(repo, 'config.json'))\n"
        "files = {p.relative_to(snap).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()\n"
        "         for p in snap.rglob('*') if p.is_file()}\n"
        "print(json.dumps({'files': files, 'config': one.read_text()}))\n"
    )
    expected = {path: hashlib.sha256(data).hexdigest() for path, data in local.items()}

    def run(extra_env: dict[str, str]) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", script, repo_id],
            env={**os.environ, **hub_env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    online = run({})
    assert online["files"] == expected
    assert online["config"] == local["config.json"].decode()

    hub_server.clear_requests()
    offline = run({"HF_HUB_OFFLINE": "1"})
    assert offline == online
    assert hub_server.requests == []  # served from the cache only


def test_server_lifecycle_and_ranges() -> None:
    """A standalone server (no fixture) starts on a free port, serves byte ranges, and stops cleanly."""
    import httpx2

    with LocalHubServer() as hub:
        repo_id = "owner/ranges"
        hub.add_repo(repo_id, {"blob.bin": bytes(range(256))})
        url = f"{hub.url}/{repo_id}/resolve/main/blob.bin"
        response = httpx2.get(url, headers={"Range": "bytes=10-19"})
        assert response.status_code == 206
        assert response.content == bytes(range(10, 20))
        assert response.headers["Content-Range"] == "bytes 10-19/256"
        head = httpx2.head(url)
        assert head.headers["Content-Length"] == "256"
        assert head.headers["X-Repo-Commit"] == hub.head(repo_id)
        assert head.headers["ETag"] == f'"{git_blob_oid(bytes(range(256)))}"'
        missing = httpx2.head(f"{hub.url}/owner/nope/resolve/main/x")
        assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "RepoNotFound")
        url_after_stop = f"{hub.url}/api/whoami-v2"
    with pytest.raises(httpx2.ConnectError):  # the listening socket is closed by stop()
        httpx2.get(url_after_stop, timeout=2)
