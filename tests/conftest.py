"""Shared pytest fixtures.

The Hub fixtures point ``huggingface_hub`` at an in-process ``LocalHubServer`` (see ``hub_server.py``)
so push / download tests run offline against the real client code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

try:  # tests/ is on sys.path with pytest's default "prepend" import mode (no tests/__init__.py)
    from hub_server import LocalHubServer
except ImportError:  # tests/ turned into a package
    from tests.hub_server import LocalHubServer

# The suite's tensors are tiny: extra intra-op threads only add synchronisation cost on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seeded_global_generators() -> None:
    """Every test starts from the same global random state, whatever ran before it: an input drawn without an
    explicit generator (``torch.randn(...)``, a pipeline called without ``generator=``) is the same on every run,
    so no assertion passes or fails by luck."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (the legacy global state is what unseeded numpy code draws from)
    torch.manual_seed(0)


#: Any non-empty token works with the local server; having one lets ``whoami`` and ``create_repo`` run.
DUMMY_HF_TOKEN = "hf_local_test_token_not_a_secret"


def _client_env(url: str, hf_home: Path) -> dict[str, str]:
    """Environment a ``huggingface_hub`` process needs to talk to the local server only.

    Every cache path is spelled out (not just ``HF_HOME``) because an outer ``HF_HUB_CACHE`` /
    ``HF_XET_CACHE`` would otherwise win over the fresh ``HF_HOME``. ``HF_HUB_OFFLINE=0`` overrides an
    outer offline setting (the endpoint is local); callers that want offline mode must put their
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


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHubServer]:
    """Start a ``LocalHubServer`` and point this process's ``huggingface_hub`` at it for the session.

    Setting ``HF_ENDPOINT`` alone is not enough once ``huggingface_hub`` is imported: its constants
    (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` used by ``hf_hub_url``, ``HF_HUB_DISABLE_XET``, cache
    paths, ...) are read at import time, and the module-level ``HfApi`` behind ``huggingface_hub.create_repo``
    / ``upload_folder`` (what diffusers' ``push_to_hub`` calls) captured its endpoint then. So both the env
    (for subprocesses and late imports) and those module attributes are patched, and restored afterwards.

    The server is shared by the whole session: use unique repo names (or call ``hub_server.reset()``).
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api

    hf_home = tmp_path_factory.mktemp("hf_home")
    with LocalHubServer() as server, pytest.MonkeyPatch.context() as mp:
        url = server.url
        for name, value in _client_env(url, hf_home).items():
            mp.setenv(name, value)
        mp.setattr(constants, "ENDPOINT", url)
        mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        mp.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
        # Xet off: uploads take the single-commit path whose commit POST is not retried on 5xx.
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        # Telemetry off: otherwise the first request also fetches {ENDPOINT}/api/agent-harnesses.
        mp.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_HOME", str(hf_home))
        mp.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        mp.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hf_home / "hub"))
        mp.setattr(constants, "HF_ASSETS_CACHE", str(hf_home / "assets"))
        mp.setattr(constants, "HF_XET_CACHE", str(hf_home / "xet"))
        mp.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
        mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
        mp.setattr(constants, "AGENT_HARNESSES_PATH", str(hf_home / ".agent_harnesses.json"))
        mp.setattr(hf_api.api, "endpoint", url)
        yield server


@pytest.fixture
def hub_cache(hub_server: LocalHubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``HF_HUB_CACHE`` for this test, so a download really goes through the server.

    Patches ``huggingface_hub.constants.HF_HUB_CACHE`` (read at call time when ``cache_dir`` is None,
    e.g. by diffusers' ``from_pretrained``) and the env var (for subprocesses).
    """
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_hub_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
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
