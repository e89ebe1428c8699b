"""Model cards and folder pushes (`hf_ddpm_ncsn.sharing`), against the in-process `LocalHubServer`."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
import traceback
import uuid
from pathlib import Path

import pytest
from diffusers import DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import save_file
from support.hub_server import DEFAULT_USER, LocalHubServer

from hf_ddpm_ncsn import DDPMPosteriorScheduler, NCSNScheduler
from hf_ddpm_ncsn.sharing import hub, model_cards
from hf_ddpm_ncsn.sharing.hub import HubPushError, push_folder_to_hub
from hf_ddpm_ncsn.sharing.model_cards import model_card_template, render_model_card

FAKE_TOKEN = "hf_abcdefghijklmnopqrstuvwx"
COMMON_TAGS = ["hf-ddpm-ncsn", "diffusers", "unconditional-image-generation"]
# What a finished training run leaves in its output folder: only the first group may reach the Hub.
SHARED_FILES = {
    "model_index.json",
    "hf_ddpm_ncsn_pipeline.py",
    "README.md",
    "samples.png",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
LOCAL_ONLY_FILES = {
    "checkpoint-10/model.safetensors",
    "checkpoint-10/random_states_0.pkl",
    "logs/train/events.out.tfevents.1700000000.host",
    "x.bin",
    "unet/old_weights.pt",
    "__pycache__/hf_ddpm_ncsn_pipeline.cpython-310.pyc",
    ".ipynb_checkpoints/README-checkpoint.md",
    # what interrupted writes leave (hf_ddpm_ncsn.sharing.atomic) and checkpoints of abandoned runs
    ".unet.k3j2h1g0.old/diffusion_pytorch_model.safetensors",
    ".checkpoint-7.partial/model.safetensors",
    ".checkpoint-3.a1b2c3d4.deleting/model.safetensors",
    "eval/.report.json.x7y8z9.partial",
    "abandoned-checkpoints/20261201T000000-abcd1234/checkpoint-5/model.safetensors",
}


def _unique(prefix: str) -> str:
    return f"{DEFAULT_USER}/{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        time_embedding_type="fourier",
    )


def _ncsn_config() -> dict:
    scheduler = NCSNScheduler(
        num_train_timesteps=232,
        sigma_min=0.005,
        sigma_max=37.5,
        num_langevin_steps=7,
        step_size=3.3e-6,
        denoise_final=False,
        prediction_type="score",
    )
    return dict(scheduler.config)


def _ddpm_config() -> dict:
    scheduler = DDPMPosteriorScheduler(
        num_train_timesteps=1234,
        beta_schedule="linear",
        beta_start=0.00021,
        beta_end=0.0345,
        variance_type="fixed_large",
        clip_sample=False,
    )
    return dict(scheduler.config)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write_run_folder(root: Path, unet: UNet2DModel, repo_id: str) -> Path:
    """A saved NCSN pipeline folder with its card, plus the training leftovers that must stay local."""
    root.mkdir()
    model_index = {
        "_class_name": ["hf_ddpm_ncsn_pipeline", "NCSNPipeline"],
        "_diffusers_version": "0.42.1",
        "scheduler": ["hf_ddpm_ncsn", "NCSNScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    (root / "hf_ddpm_ncsn_pipeline.py").write_text("from hf_ddpm_ncsn import NCSNPipeline  # noqa: F401\n")
    (root / "unet").mkdir()
    save_file(unet.state_dict(), str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    unet.save_config(root / "unet")
    NCSNScheduler(num_train_timesteps=5).save_config(root / "scheduler")
    (root / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    card = render_model_card(
        "ncsn",
        repo_id=repo_id,
        scheduler_config=_ncsn_config(),
        unet_config=dict(unet.config),
        dataset="sklearn-digits",
        training={"learning_rate": 2e-4},
        sample_grid="samples.png",
    )
    card.save(root / "README.md")
    for rel in LOCAL_ONLY_FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"local only " + rel.encode())
    assert set(_hashes(root)) == SHARED_FILES | LOCAL_ONLY_FILES
    return root


def _closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("family", ["ncsn", "ddpm"])
def test_template_lookup(family: str) -> None:
    path = model_card_template(family)
    assert path == Path(model_cards.__file__).resolve().parent.parent / "model_cards" / f"{family}.md"
    assert path.is_file()
    assert "{{ card_data }}" in path.read_text(encoding="utf-8")


def test_template_lookup_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match=r"family='ddim'.*'ncsn', 'ddpm'"):
        model_card_template("ddim")


def test_template_lookup_reports_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_cards, "TEMPLATE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="ncsn.md is missing"):
        model_card_template("ncsn")


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("family", "family_tags"),
    [
        ("ncsn", ["ncsn", "score-matching", "annealed-langevin-dynamics"]),
        ("ddpm", ["ddpm", "diffusion", "score-matching"]),
    ],
)
def test_card_metadata(family: str, family_tags: list[str], unet: UNet2DModel) -> None:
    card = render_model_card(
        family,
        repo_id="someone/tiny-model",
        scheduler_config=_ncsn_config() if family == "ncsn" else _ddpm_config(),
        unet_config=dict(unet.config),
        dataset="sklearn-digits",
        eval_results={"bits_per_dim": 1.25, "classifier_frechet_distance": 3.5},
    )
    data = ModelCard(str(card)).data  # parsed back from the YAML header, as the Hub would
    assert data.library_name == "diffusers"
    assert data.pipeline_tag == "unconditional-image-generation"
    assert data.tags == COMMON_TAGS + family_tags
    assert data.datasets == ["sklearn-digits"]
    assert data.model_name == "tiny-model"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"bits_per_dim", "classifier_frechet_distance"}
    assert results["bits_per_dim"].metric_value == 1.25
    assert results["classifier_frechet_distance"].metric_value == 3.5
    for result in results.values():
        assert result.task_type == "unconditional-image-generation"
        assert result.dataset_type == result.dataset_name == "sklearn-digits"


def test_eval_results_without_dataset_stay_in_the_body(unet: UNet2DModel) -> None:
    card = render_model_card(
        "ddpm",
        repo_id="someone/no-dataset",
        scheduler_config=_ddpm_config(),
        unet_config=dict(unet.config),
        eval_results={"bits_per_dim": 2.5},
    )
    text = str(card)
    data = ModelCard(text).data
    assert data.eval_results is None and data.datasets is None
    assert "model-index" not in text
    assert "| bits_per_dim | 2.5 |" in text


def test_ncsn_card_body(unet: UNet2DModel) -> None:
    repo_id = "someone/ncsn-digits"
    text = str(
        render_model_card(
            "ncsn",
            repo_id=repo_id,
            scheduler_config=_ncsn_config(),
            unet_config=dict(unet.config),
            dataset="sklearn-digits",
            training={"learning_rate": 2e-4, "train_batch_size": 128, "num_epochs": 30},
            eval_results={"classifier_frechet_distance": 0.123},
            sample_grid="samples.png",
        )
    )
    assert "# ncsn-digits: a noise-conditional score network (NCSN)" in text
    assert "Song & Ermon (2019)" in text and "annealed Langevin dynamics" in text
    # The three loading routes, in order.
    routes = [
        "pip install hf-ddpm-ncsn",
        "from hf_ddpm_ncsn import NCSNPipeline",
        f'pipe = NCSNPipeline.from_pretrained("{repo_id}")',
        "import hf_ddpm_ncsn",
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}")',
        "hf_ddpm_ncsn_pipeline.py",
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
        "images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images",
    ]
    positions = [text.index(route) for route in routes]
    assert positions == sorted(positions)
    assert ".elbo(" not in text
    assert (
        "232 noise levels geometric from σ_min = 0.005 to σ_max = 37.5; 7 Langevin steps per level with step size "
        "ε = 3.3e-06 (η_t = ε·σ_t²/σ_min²); prediction type `score`; final denoising step x + σ_min²·s_θ(x, σ_min): "
        "off." in text
    )
    assert (
        "8×8 images with 1 channel(s); 2 resolution levels with 8, 16 channels, 1 ResNet layers per block; "
        "`fourier` time embedding." in text
    )
    assert "| learning_rate | 0.0002 |" in text and "| train_batch_size | 128 |" in text
    assert "Measured on `sklearn-digits`." in text and "| classifier_frechet_distance | 0.123 |" in text
    assert "![samples](samples.png)" in text


def test_ddpm_card_body_and_missing_sections() -> None:
    repo_id = "someone/ddpm-cifar"
    unet_config = {
        "sample_size": [32, 16],
        "in_channels": 3,
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 2,
    }
    text = str(render_model_card("ddpm", repo_id=repo_id, scheduler_config=_ddpm_config(), unet_config=unet_config))
    assert "Ho et al. (2020)" in text and "term by term" in text
    for route in (
        "pip install hf-ddpm-ncsn",
        f'pipe = DDPMPosteriorPipeline.from_pretrained("{repo_id}")',
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}")',
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
        "pipe.elbo(images_tensor_in_minus1_1).bits_per_dim",
    ):
        assert route in text
    assert (
        "1234 steps; `linear` β schedule from β_start = 0.00021 to β_end = 0.0345; variance type `fixed_large`; "
        "prediction type `epsilon`; clip_sample: off." in text
    )
    assert (
        "32×16 images with 3 channel(s); 3 resolution levels with 64, 128, 128 channels, 2 ResNet layers per block."
        in text
    )
    assert "Training details were not recorded." in text
    assert "No evaluation numbers were recorded" in text
    assert "![samples]" not in text


def test_ddpm_card_reads_a_diffusers_ddpm_scheduler_config(unet: UNet2DModel) -> None:
    config = dict(DDPMScheduler(num_train_timesteps=321, beta_schedule="squaredcos_cap_v2").config)
    text = str(render_model_card("ddpm", repo_id="a/b", scheduler_config=config, unet_config=dict(unet.config)))
    assert "321 steps; `squaredcos_cap_v2` β schedule from β_start = 0.0001 to β_end = 0.02;" in text
    assert "variance type `fixed_small`; prediction type `epsilon`; clip_sample: on." in text


def test_card_never_shows_secrets(unet: UNet2DModel, tmp_path: Path) -> None:
    training = {
        "hub_token": FAKE_TOKEN,
        "HF_API_KEY": "plain-value-1",
        "wandb_password": "plain-value-2",
        "client_Secret": "plain-value-3",
        "push_command": f"hf upload me/model out --token {FAKE_TOKEN}",
        "tracker": {"access_token": "plain-value-4", "project": "digits"},
        "extra_args": ["--seed", "0", FAKE_TOKEN],
        "output_dir": Path("/runs/ncsn"),
        "learning_rate": 1e-4,
    }
    card = render_model_card(
        "ncsn", repo_id="a/b", scheduler_config=_ncsn_config(), unet_config=dict(unet.config), training=training
    )
    card.save(tmp_path / "README.md")
    for text in (str(card), (tmp_path / "README.md").read_text(encoding="utf-8")):
        assert FAKE_TOKEN not in text
        assert "plain-value" not in text
        for dropped in ("hub_token", "HF_API_KEY", "wandb_password", "client_Secret", "access_token"):
            assert dropped not in text
        assert "| push_command | hf upload me/model out --token <redacted> |" in text
        assert "| extra_args | --seed, 0, <redacted> |" in text
        assert "| output_dir | /runs/ncsn |" in text
        assert "| learning_rate | 0.0001 |" in text


# ---------------------------------------------------------------------------------------------- pushing


def test_push_uploads_the_pipeline_and_nothing_else(
    hub_server: LocalHubServer, unet: UNet2DModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_id = _unique("push")
    folder = _write_run_folder(tmp_path / "run", unet, repo_id)
    before = _hashes(folder)

    caplog.set_level(logging.INFO, logger="hf_ddpm_ncsn.sharing.hub")
    url = push_folder_to_hub(folder, repo_id, token=FAKE_TOKEN, commit_message="First model")

    remote = hub_server.files(repo_id)
    assert set(remote) == SHARED_FILES
    for rel, data in remote.items():
        assert data == (folder / rel).read_bytes(), rel
    assert url == f"{hub_server.url}/{repo_id}/commit/{hub_server.head(repo_id)}"
    assert hub_server.commit_log(repo_id)[0].title == "First model"
    card = ModelCard(remote["README.md"].decode())
    assert card.data.library_name == "diffusers" and "![samples](samples.png)" in card.text
    assert [r.getMessage() for r in caplog.records if r.name == "hf_ddpm_ncsn.sharing.hub"] == [
        f"Pushed {folder} to {hub_server.url}/{repo_id} (commit {hub_server.head(repo_id)})"
    ]
    assert FAKE_TOKEN not in caplog.text
    assert _hashes(folder) == before

    # Unchanged files: huggingface_hub skips the empty commit and answers with the current head.
    assert push_folder_to_hub(folder, repo_id, token=FAKE_TOKEN, endpoint=hub_server.url) == url
    assert len(hub_server.commit_log(repo_id)) == 2  # the initial commit and ours

    # A changed card pushed as a pull request leaves main alone.
    main_head = hub_server.head(repo_id)
    (folder / "README.md").write_text(remote["README.md"].decode() + "\nRetrained.\n", encoding="utf-8")
    pr_commit_url = push_folder_to_hub(folder, repo_id, token=FAKE_TOKEN, create_pr=True)
    assert hub_server.head(repo_id) == main_head
    pr_head = hub_server.head(repo_id, revision="refs/pr/1")
    assert pr_commit_url == f"{hub_server.url}/{repo_id}/commit/{pr_head}"
    assert hub_server.read_file(repo_id, "README.md", revision="refs/pr/1").endswith(b"Retrained.\n")
    last_log = [r.getMessage() for r in caplog.records if r.name == "hf_ddpm_ncsn.sharing.hub"][-1]
    assert last_log.endswith(f"(pull request {hub_server.url}/{repo_id}/discussions/1)")


def test_push_with_a_bare_name_goes_to_the_token_owner(hub_server: LocalHubServer, tmp_path: Path) -> None:
    name = _unique("bare").split("/")[1]
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    push_folder_to_hub(folder, name, token=FAKE_TOKEN)
    assert set(hub_server.files(f"{DEFAULT_USER}/{name}")) == {"model_index.json"}


def test_failed_commit_raises_hub_push_error(
    hub_server: LocalHubServer, unet: UNet2DModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_id = _unique("fail")
    folder = _write_run_folder(tmp_path / "run", unet, repo_id)
    before = _hashes(folder)
    caplog.set_level(logging.DEBUG)  # the client's own request logs must not leak the token either

    hub_server.fail_next(1, status=500, kinds=("commit",))
    with pytest.raises(HubPushError) as excinfo:
        push_folder_to_hub(folder, repo_id, token=FAKE_TOKEN, endpoint=hub_server.url)

    err = excinfo.value
    message = str(err)
    assert repo_id in message and hub_server.url in message
    assert f"The local folder {folder} is intact and can be pushed again" in message
    assert "500" in message
    assert isinstance(err.__cause__, HfHubHTTPError)
    assert (err.repo_id, err.endpoint, err.folder) == (repo_id, hub_server.url, str(folder))
    assert FAKE_TOKEN not in "".join(traceback.format_exception(err))
    assert FAKE_TOKEN not in caplog.text
    assert hub_server.files(repo_id) == {}  # the repo was created, nothing was committed
    assert _hashes(folder) == before

    # Nothing local changed, so the advice holds: the same call now succeeds.
    push_folder_to_hub(folder, repo_id, token=FAKE_TOKEN, endpoint=hub_server.url)
    assert set(hub_server.files(repo_id)) == SHARED_FILES


def test_unreachable_hub_fails_fast(unet: UNet2DModel, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _write_run_folder(tmp_path / "run", unet, "someone/offline")
    before = _hashes(folder)
    endpoint = _closed_port_endpoint()
    caplog.set_level(logging.DEBUG)

    start = time.perf_counter()
    with pytest.raises(HubPushError) as excinfo:
        push_folder_to_hub(folder, "someone/offline", token=FAKE_TOKEN, endpoint=endpoint)
    elapsed = time.perf_counter() - start

    assert elapsed < 10, f"a refused connection took {elapsed:.1f} s to report"
    message = str(excinfo.value)
    assert "'someone/offline'" in message and endpoint in message
    assert f"The local folder {folder} is intact" in message
    assert FAKE_TOKEN not in "".join(traceback.format_exception(excinfo.value))
    assert FAKE_TOKEN not in caplog.text
    assert _hashes(folder) == before


def test_push_error_redacts_a_token_echoed_by_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real client does not echo tokens today; this pins the redaction for the day an error message does.
    def echo_token(self, *args, **kwargs):
        raise RuntimeError(f"401 for Authorization: Bearer {self.token} (also saw hf_zyxwvutsrqponmlkj)")

    monkeypatch.setattr(hub.HfApi, "create_repo", echo_token)
    with pytest.raises(HubPushError) as excinfo:
        push_folder_to_hub(tmp_path, "someone/x", token=FAKE_TOKEN, endpoint="http://127.0.0.1:9")
    message = str(excinfo.value)
    assert "Bearer <redacted> (also saw <redacted>)" in message
    traceback_text = "".join(traceback.format_exception(excinfo.value))
    assert FAKE_TOKEN not in traceback_text and "hf_zyxwvutsrqponmlkj" not in traceback_text


def test_push_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="not a directory"):
        push_folder_to_hub(tmp_path / "missing", "someone/x", token=FAKE_TOKEN, endpoint=_closed_port_endpoint())


def test_the_model_card_of_a_diffusers_ddpm_folder_is_a_ddpm_card(tmp_path):
    """A folder of diffusers' own DDPMPipeline belongs to the DDPM family (the registry maps its class name)."""
    from diffusers import DDPMPipeline
    from support.tiny_models import tiny_unet

    from hf_ddpm_ncsn.training.model_card import write_model_card

    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(tmp_path)
    write_model_card(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "- ddpm" in text and "- ncsn" not in text
