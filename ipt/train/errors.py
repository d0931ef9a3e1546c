"""The one exception type of the training engine."""

from __future__ import annotations


class TrainingError(ValueError):
    """A training run cannot start or continue; the message names the file, folder, step or task at fault."""
