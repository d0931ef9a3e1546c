"""Writing the registry: a version's files as an MLflow Model (:mod:`ipt.serving`), its sha256s, its aliases."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipt.modeluri import CHECKPOINT_NAME, FILES_SHA256_TAG
from ipt.tracking import MlflowTracker, TrackingError, client_for, store_error


def register_files(
    tracker: MlflowTracker,
    files: dict[str, str | os.PathLike],
    name: str,
    *,
    tags: dict[str, str] | None = None,
    task: str | None = None,
) -> str:
    """Register ``files`` (artifact name -> local path) as a new version of ``name``: an MLflow Model
    (:mod:`ipt.serving`: ``model.pt`` [and ``base.pt``] under ``data/weights/``, MLmodel, signature, input example,
    pinned requirements) with the other files beside it, logged under the run's ``<name>/`` folder; returns the
    version number. The version records every file's sha256 (``ipt.files_sha256``). ``task``: the task the served
    model restores (None for a multi-task model)."""
    from ipt import serving
    from ipt.fileio import file_sha256

    if CHECKPOINT_NAME not in files:
        raise TrackingError(f"registering {name}: the files must include {CHECKPOINT_NAME}")
    client = tracker.client
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        weights = {k: v for k, v in files.items() if k in serving.WEIGHT_FILES}
        serving.save_model(folder, weights, task=task)
        for artifact, path in files.items():
            if artifact not in weights:
                (folder / artifact).write_bytes(Path(path).read_bytes())
        digests = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        tags = dict(tags or {}) | {FILES_SHA256_TAG: json.dumps(digests)}
        try:
            client.log_artifacts(tracker.run_id, str(folder), artifact_path=name)
        except Exception as e:  # noqa: BLE001 - nothing is registered yet
            raise store_error(e, f"registering {name}: cannot log its files", tracker.tracking_uri) from None
    created = False
    try:
        if not _exists(client, name):
            client.create_registered_model(name)
            created = True
        source = f"{client.get_run(tracker.run_id).info.artifact_uri}/{name}"
        mv = client.create_model_version(name, source=source, run_id=tracker.run_id, tags=tags)
    except Exception as e:  # noqa: BLE001 - leave no empty registered model behind
        if created:
            with contextlib.suppress(Exception):
                client.delete_registered_model(name)
        raise store_error(e, f"registering {name}: nothing was registered", tracker.tracking_uri) from None
    return str(mv.version)


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


@contextlib.contextmanager
def undo_version_on_error(name: str, version: str, tracking_uri: str | None = None) -> Iterator[None]:
    """Around what follows a version's creation (the champion decision): if it fails, the version is deleted
    again, so a failed ``ipt register`` leaves nothing half-registered."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed; the original error is the news
            client, _ = client_for(tracking_uri)
            client.delete_model_version(name, version)
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
        raise


def register_checkpoint(
    tracker: MlflowTracker,
    checkpoint: str | os.PathLike,
    name: str,
    *,
    alias: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``checkpoint`` under the run as ``<name>/model.pt`` and register it as a new version of ``name``."""
    version = register_files(tracker, {CHECKPOINT_NAME: checkpoint}, name, tags=tags)
    if alias:
        set_alias(name, alias, version, tracker.tracking_uri)
    return version


def set_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    client, uri = client_for(tracking_uri)
    try:
        client.set_registered_model_alias(name, alias, version)
    except Exception as e:  # noqa: BLE001
        raise store_error(e, f"setting {name}@{alias} to version {version}", uri) from None
