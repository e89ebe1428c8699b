"""Moved to `hf_ddpm_ncsn.sharing` (`sharing.hub` pushes, `sharing.model_cards` renders cards); kept as an import
path."""

from .sharing.hub import HubPushError, push_folder_to_hub
from .sharing.model_cards import model_card_template, render_model_card

__all__ = ["HubPushError", "model_card_template", "push_folder_to_hub", "render_model_card"]
