"""IPT, the Pre-Trained Image Processing Transformer: strict loading of the released weights, exact inference, and
the training pipeline the official code lacks. Python API (lazy: ``import ipt`` costs nothing): docs/usage.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it (a table, not imports: a pipeline stage that imports `ipt` loads none of them)
_API = {
    "open_restorer": "ipt.restore",
    "restore_file": "ipt.restore",
    "Restorer": "ipt.restore",
    "load_model": "ipt.checkpoint",
    "save_checkpoint": "ipt.checkpoint",
    "ModelSpec": "ipt.config",
    "build_ipt": "ipt.model",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ipt' has no attribute {name!r}")
