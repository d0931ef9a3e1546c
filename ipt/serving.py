"""Registered versions as MLflow Models (pyfunc flavor): ``mlflow models serve`` and ``mlflow.pyfunc.load_model``.

Layout, signature and options: docs/serving.md.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

INPUT_COLUMN = "image"
WEIGHT_FILES = ("model.pt", "base.pt")  # what goes into the model's data/ folder (a refiner's base beside it)
DEFAULT_CONFIG = {"precision": "fp32", "tiling": "overlap", "device": "auto", "batch": 64, "task": None}


class IPTPyfunc:
    """What ``_load_pyfunc`` returns: a restorer per task, and ``predict`` over image files (bytes or base64)."""

    def __init__(self, data: Path, config: dict[str, Any]) -> None:
        unknown = sorted(set(config) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"unknown model_config key(s) {unknown}; known: {sorted(DEFAULT_CONFIG)}")
        self.weights = data / "model.pt" if data.is_dir() else data
        self.config = DEFAULT_CONFIG | config
        self._restorers: dict[str | None, Any] = {}
        from ipt.checkpoint import load_model

        self.tasks = load_model(self.weights).spec.task_names if _kind(self.weights) == "ipt" else ()
        if self.config["task"] or len(self.tasks) <= 1:  # load now: a bad version fails at load, not on a request
            self._restorer(self.config["task"])

    def _restorer(self, task: str | None):
        from ipt.restore import open_restorer

        if task not in self._restorers:
            options = {k: self.config[k] for k in ("precision", "tiling", "device", "batch")}
            self._restorers[task] = open_restorer(self.weights, task, **options)
        return self._restorers[task]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        from ipt.data.images import decode_image, png_bytes
        from ipt.errors import IPTError

        task = (params or {}).get("task") or self.config["task"]
        if task is None and len(self.tasks) > 1:
            raise _bad_request(f"this model holds tasks {list(self.tasks)}: choose one with params {{'task': ...}}")
        images = _column(model_input)
        try:
            restorer = self._restorer(task)
        except IPTError as e:
            raise _bad_request(str(e)) from None
        out = []
        for i, value in enumerate(images):
            data = _image_file(value)
            if not data:
                raise _bad_request(f"row {i}: neither an image file's bytes nor a base64-encoded image file")
            try:
                img, _notes = decode_image(data, f"row {i}")
                out.append(base64.b64encode(png_bytes(restorer(img))).decode("ascii"))
            except IPTError as e:
                raise _bad_request(str(e)) from None
        return out


def _image_file(value: Any) -> bytes | None:
    """A request row as an image file's bytes: a ``str`` is base64 text; ``bytes`` are the file itself, unless the
    whole value is valid base64 text (the old way to send bytes: no PNG, JPEG, BMP, TIFF or WebP file is, as each
    has a byte outside the base64 alphabet in its first 16). None for anything else or bad base64 text."""
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        try:
            return base64.b64decode(value, validate=True) or None
        except (binascii.Error, ValueError):
            return value or None
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True) or None
        except (binascii.Error, ValueError):
            return None
    return None


def _kind(path: Path) -> str | None:
    from ipt.checkpoint import checkpoint_kind

    return checkpoint_kind(path)


def _column(model_input: Any) -> list[Any]:
    """The images of a request: a DataFrame's ``image`` column, a dict of it, or a plain list."""
    if hasattr(model_input, "columns"):
        if INPUT_COLUMN not in model_input.columns:
            raise _bad_request(f"the input has no column {INPUT_COLUMN!r} (columns: {list(model_input.columns)})")
        return list(model_input[INPUT_COLUMN])
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        values = model_input[INPUT_COLUMN]
        return list(values) if isinstance(values, list | tuple) else [values]
    if isinstance(model_input, list | tuple):
        return list(model_input)
    raise _bad_request(f"expected a DataFrame with a column {INPUT_COLUMN!r} of image files (bytes or base64)")


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message.splitlines()[0], error_code=INVALID_PARAMETER_VALUE)  # HTTP 400


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> IPTPyfunc:
    """The pyfunc loader (``loader_module: ipt.serving`` in the version's MLmodel)."""
    return IPTPyfunc(Path(data_path), dict(model_config or {}))


def requirements() -> list[str]:
    """Pinned requirements of a served version: the versions of the environment that registered it. The project
    itself is not on an index: the serving environment has it installed (``pip install .``, or ``make venv``)."""
    import mlflow
    import numpy
    import PIL
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={numpy.__version__}",
        f"pillow=={PIL.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]


def input_example() -> Any:
    """A one-row request: a 16x16 gray PNG file's bytes (its JSON form, serving_input_example.json, is base64)."""
    import numpy as np
    import pandas as pd

    from ipt.data.images import png_bytes

    png = png_bytes(np.full((16, 16, 3), 128, dtype=np.uint8))
    return pd.DataFrame({INPUT_COLUMN: [png]})


def save_model(folder: str | os.PathLike, weights: dict[str, str | os.PathLike], *, task: str | None = None) -> Path:
    """Write the MLflow Model of one version into ``folder`` (which must not exist): MLmodel, the signature, an
    input example, pinned requirements, and ``weights`` (``model.pt`` [, ``base.pt``]) under ``data/``."""
    import logging
    import shutil
    import tempfile

    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),  # bytes; JSON requests send base64, MLflow decodes it
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("task", "string", task or "")]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "weights"
        data.mkdir()
        for name, path in weights.items():
            shutil.copyfile(path, data / name)
        logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "Validating input example ..." on stderr
        mlflow.pyfunc.save_model(
            path=str(folder),
            loader_module="ipt.serving",
            data_path=str(data),
            signature=signature,
            input_example=input_example(),
            pip_requirements=requirements(),
            model_config={"task": task} if task else None,
        )
    return Path(folder)
