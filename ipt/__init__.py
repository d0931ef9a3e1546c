"""IPT, the Pre-Trained Image Processing Transformer: strict loading of the released weights, exact inference, and
the training pipeline the official code lacks.

The Python API (imported on first use, so ``import ipt`` costs nothing)::

    import ipt
    restorer = ipt.open_restorer("IPT_sr2.pt", task="sr_x2")        # or "models:/ipt-sr_x2@champion"
    out = restorer(image)                                           # (H, W, 3) uint8 -> (2H, 2W, 3) uint8
    ipt.restore_file("photo.png", "photo_x2.png", restorer)         # read, restore, write a PNG
    model = ipt.load_model("IPT_pretrain.pt")                       # the nn.Module, strictly loaded
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
