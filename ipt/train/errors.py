"""The one exception type of the training engine."""

from __future__ import annotations

from ipt.errors import IPTError


class TrainingError(IPTError):
    """A training run cannot start or continue; the message names the file, folder, step or task at fault."""
