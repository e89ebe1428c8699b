"""Moved to `hf_ddpm_ncsn.sharing.folder_checks`; kept as an import path (README documents its error class)."""

from .sharing.folder_checks import PipelineFolderError, check_pipeline_folder, pipeline_class_name

__all__ = ["PipelineFolderError", "check_pipeline_folder", "pipeline_class_name"]
