"""Models: builders and inspection."""

from nntune.models.builders import build_model
from nntune.models.inspect import freeze, summary, unfreeze

__all__ = ["build_model", "freeze", "summary", "unfreeze"]
