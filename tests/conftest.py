"""Shared pytest fixtures, and the local Hub that every Hub call of the session goes to.

``pytest_configure`` starts a ``LocalHubServer`` (see ``hub_server.py``) and points ``HF_ENDPOINT`` and a fresh
``HF_HOME`` at it *before any test module imports huggingface_hub*: the client reads its settings once, at import,
so the pytest process and every subprocess it starts then talk to the local server only, with no patching of
client internals. A stray Hub call in any test gets a fast 404 instead of reaching huggingface.co.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support.hub_server import LocalHubServer

# The suite's tensors are tiny: extra intra-op threads only add synchronisation cost on a 2-core machine.
torch.set_num_threads(1)

#: Any non-empty token works with the local server; having one lets ``create_repo`` run.
DUMMY_HF_TOKEN = "hf_local_test_token_not_a_secret"

_HUB_SERVER = pytest.StashKey[LocalHubServer]()


def _client_env(url: str, hf_home: Path) -> dict[str, str]:
    """Environment a ``huggingface_hub`` process needs to talk to the local server only.

    Every cache path is spelled out (not just ``HF_HOME``) because an outer ``HF_HUB_CACHE`` / ``HF_XET_CACHE``
    would otherwise win over the fresh ``HF_HOME``. Xet off: uploads take the single-commit path whose commit POST
    is not retried on 5xx. Telemetry off: it would add a request to every first call. ``HF_HUB_OFFLINE=0``
    overrides an outer offline setting (the endpoint is local); callers that want offline mode put their
    ``HF_HUB_OFFLINE=1`` *after* this dict when merging.
    """
    return {
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN": DUMMY_HF_TOKEN,
    }


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's Hub and set the client's environment before test modules import huggingface_hub."""
    if "huggingface_hub" in sys.modules:
        raise pytest.UsageError(
            "huggingface_hub was imported before tests/conftest.py could set HF_ENDPOINT; keep it (and diffusers, "
            "datasets, hf_ddpm_ncsn) out of conftest's and plugins' top-level imports"
        )
    server = LocalHubServer().start()
    hf_home = Path(tempfile.mkdtemp(prefix="hf_home_"))
    saved = {name: os.environ.get(name) for name in _client_env(server.url, hf_home)}
    os.environ.update(_client_env(server.url, hf_home))
    config.stash[_HUB_SERVER] = server

    def restore() -> None:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(hf_home, ignore_errors=True)

    config.add_cleanup(restore)


@pytest.fixture(autouse=True)
def seeded_global_generators() -> None:
    """Every test starts from the same global random state, whatever ran before it: an input drawn without an
    explicit generator (``torch.randn(...)``, a pipeline called without ``generator=``) is the same on every run,
    so no assertion passes or fails by luck."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (the legacy global state is what unseeded numpy code draws from)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def hub_server(pytestconfig: pytest.Config) -> LocalHubServer:
    """The session's ``LocalHubServer``: ``huggingface_hub`` in this process and in subprocesses already uses it.

    It is shared by the whole session: use unique repo names.
    """
    return pytestconfig.stash[_HUB_SERVER]


@pytest.fixture
def hub_cache(hub_server: LocalHubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``HF_HUB_CACHE`` for this test, so a download really goes through the server.

    The environment variable is only read at import, so this process needs the public constant
    ``huggingface_hub.constants.HF_HUB_CACHE`` switched too: the client reads it at call time when no
    ``cache_dir`` is passed, as diffusers' ``from_pretrained`` and ``hf_ddpm_ncsn.evaluation.evaluate`` do.
    """
    import huggingface_hub.constants

    cache = tmp_path / "hf_hub_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub_env(hub_server: LocalHubServer, tmp_path: Path) -> dict[str, str]:
    """Env vars for a fresh Python process that must use the local server, with an empty ``HF_HOME``.

    Usage: ``subprocess.run(cmd, env={**os.environ, **hub_env, "HF_HUB_OFFLINE": "1"})`` (overrides last).
    The cache is ``hub_env["HF_HUB_CACHE"]``; it is shared by all processes of the same test.
    """
    hf_home = tmp_path / "hf_home_subprocess"
    hf_home.mkdir()
    return _client_env(hub_server.url, hf_home)
