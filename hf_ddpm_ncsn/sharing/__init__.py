"""Saving, loading and sharing pipelines safely.

- `atomic`: the one atomic writer (a folder or a file is the complete old version or the complete new one).
- `folder_checks`: checks on a folder before anything in it is loaded (safetensors only, bounded configs).
- `diffusers_loading`: the hook that lets every `DiffusionPipeline.from_pretrained` route load our pipelines, with
  the folder checks on the folder diffusers actually loads.
- `model_cards`: the Hub README.md of a trained pipeline, from its family's template.
- `hub`: pushing a folder to the Hub, leaving training leftovers behind; `redaction`: what never leaves the machine.
"""
