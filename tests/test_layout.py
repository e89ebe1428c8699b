"""The package layout: old import paths still reach the moved code, every module imports on its own (no import
cycle whatever is imported first), and the family registry is the one place families are declared."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import hf_ddpm_ncsn
from hf_ddpm_ncsn import DDPMPosteriorPipeline, NCSNPipeline
from hf_ddpm_ncsn.families import FAMILIES, family_of_pipeline, get_family, register_family
from hf_ddpm_ncsn.sharing.model_cards import TEMPLATE_DIR

PACKAGE = Path(hf_ddpm_ncsn.__file__).resolve().parent

# old path -> new home: every public name of the old module must be the very object of the new one
MOVED = {
    "hf_ddpm_ncsn.stratified_elbo": "hf_ddpm_ncsn.likelihood",
    "hf_ddpm_ncsn.training_args": "hf_ddpm_ncsn.training.arguments",
    "hf_ddpm_ncsn.checkpoints": "hf_ddpm_ncsn.training.checkpoints",
    "hf_ddpm_ncsn.metrics": "hf_ddpm_ncsn.evaluation.metrics",
    "hf_ddpm_ncsn.feature_classifier": "hf_ddpm_ncsn.evaluation.feature_classifier",
    "hf_ddpm_ncsn.folder_checks": "hf_ddpm_ncsn.sharing.folder_checks",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_import_paths_reach_the_moved_code(old, new):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert old_module.__all__
    for name in old_module.__all__:
        assert getattr(old_module, name) is getattr(new_module, name), name


def test_the_old_hub_module_reaches_pushes_and_cards():
    from hf_ddpm_ncsn import hub
    from hf_ddpm_ncsn.sharing import hub as sharing_hub
    from hf_ddpm_ncsn.sharing import model_cards

    assert hub.push_folder_to_hub is sharing_hub.push_folder_to_hub and hub.HubPushError is sharing_hub.HubPushError
    assert hub.render_model_card is model_cards.render_model_card


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_without_a_cycle():
    """Each module imported first into a process holding no hf_ddpm_ncsn module (torch and diffusers stay loaded,
    so one interpreter checks them all): a cycle shows as an ImportError for some import order."""
    script = (
        "import importlib, sys, torch, diffusers, transformers\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'hf_ddpm_ncsn' or m.startswith('hf_ddpm_ncsn.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    modules = _modules()
    assert len(modules) > 40 and "hf_ddpm_ncsn.schedulers.noise_process" in modules
    result = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_registry_declares_each_family_once_and_consistently():
    assert list(FAMILIES) == ["ncsn", "ddpm"]
    assert get_family("ncsn").pipeline_class is NCSNPipeline
    assert get_family("ddpm").pipeline_class is DDPMPosteriorPipeline
    for name, family in FAMILIES.items():
        assert family.name == name and family.pipeline_class.model_card_family == name
        assert (TEMPLATE_DIR / f"{name}.md").is_file()
        for loadable in family.pipeline_class.loadable_class_names:
            assert family_of_pipeline(loadable) is family
    assert family_of_pipeline("DDPMPipeline") is get_family("ddpm")  # diffusers' own folders load as DDPM
    with pytest.raises(ValueError, match=r"'ddim'.*accepted values: \('ncsn', 'ddpm'\)"):
        get_family("ddim")
    with pytest.raises(ValueError, match="belongs to no model family"):
        family_of_pipeline("StableDiffusionPipeline")


def test_a_family_must_name_its_pipeline():
    class Mislabelled(get_family("ddpm")):
        name = "ddpm-variant"  # but DDPMPosteriorPipeline.model_card_family is "ddpm"

    with pytest.raises(ValueError, match="model_card_family must be 'ddpm-variant'"):
        register_family(Mislabelled)
    assert "ddpm-variant" not in FAMILIES
