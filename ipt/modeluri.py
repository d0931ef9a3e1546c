"""``models:/<name>@<alias>`` and ``models:/<name>/<version>``: a registered version's files, downloaded once.

:func:`resolve_model_uri` caches a version's artifact folder (an MLflow Model, docs/serving.md) and returns its file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ipt.tracking import TrackingError, client_for, is_unreachable, mask_uri, store_error

MODEL_URI_PREFIX = "models:/"
CHECKPOINT_NAME = "model.pt"
FILES_SHA256_TAG = "ipt.files_sha256"  # on a registered version: {artifact file: sha256}, checked on download


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the local path of its ``model.pt``."""
    if not uri.startswith(MODEL_URI_PREFIX):
        raise TrackingError(f"{uri}: not a models:/ URI")
    client, tracking = client_for(tracking_uri, existing=True)
    ref = uri[len(MODEL_URI_PREFIX) :]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            if number == "latest":
                found = client.search_model_versions(f"name = '{name}'")
                if not found:
                    raise TrackingError(f"registered model {name!r} has no versions")
                version = max(found, key=lambda v: int(v.version))
            else:
                version = client.get_model_version(name, number)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001
        if is_unreachable(e):
            raise store_error(e, f"looking up {uri}", tracking) from None
        first = mask_uri((str(e).splitlines() or [type(e).__name__])[0])
        raise TrackingError(f"{uri}: no such registered model version at {mask_uri(tracking)} ({first})") from None
    folder = _cached_version(tracking, name, version)
    found = sorted(folder.rglob(CHECKPOINT_NAME))
    if not found:
        raise TrackingError(f"{uri}: version {version.version} ({version.source}) holds no {CHECKPOINT_NAME}")
    return found[0]


MODEL_CACHE_ENV = "IPT_MODEL_CACHE"


def model_cache_root() -> Path:
    """Where registered versions are kept once downloaded: ``$IPT_MODEL_CACHE``, else ``~/.cache/ipt/models``."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "ipt" / "models")


VERSION_FILE = ".ipt-version.json"  # in a cached version's folder: which registered version it is a copy of


def _identity(version: Any) -> dict[str, Any]:
    """What tells one registered version from another one with the same name and number (a store recreated at the
    same URI numbers its versions from 1 again): the run that made it, its creation time and its source."""
    return {
        "run_id": version.run_id,
        "created": int(version.creation_timestamp or 0),
        "source": str(version.source),
        "files_sha256": (dict(version.tags or {})).get(FILES_SHA256_TAG),
    }


def _cached_version(tracking: str, name: str, version: Any) -> Path:
    """The artifact folder of one registered version, downloaded once into the cache and reused only while the
    store still holds that very version (:func:`_identity`; else it is downloaded again). A download lands in a
    scratch folder renamed into place, so a reader never sees half of one; files the version recorded sha256s for
    (``ipt.files_sha256``, set by :func:`register_files`) are checked on download."""
    import hashlib
    import shutil

    from mlflow.artifacts import download_artifacts

    number, identity = str(version.version), _identity(version)
    store = hashlib.sha256(tracking.encode()).hexdigest()[:12]
    final = model_cache_root() / store / name / number
    if final.is_dir():
        try:
            if json.loads((final / VERSION_FILE).read_text()) == identity:
                return final
        except (OSError, ValueError):
            pass
        stale = final.with_name(f".stale-{number}-{os.getpid()}")  # another store's version under the same number
        with contextlib.suppress(OSError):
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{number}.", dir=final.parent))
    try:
        download_artifacts(artifact_uri=version.source, dst_path=str(scratch), tracking_uri=tracking)
        _check_files(scratch, identity["files_sha256"], f"{MODEL_URI_PREFIX}{name}/{number}")
        (scratch / VERSION_FILE).write_text(json.dumps(identity))
        try:
            os.rename(scratch, final)
        except OSError:  # another process put it there first: use theirs
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _check_files(folder: Path, recorded: str | None, what: str) -> None:
    if not recorded:
        return  # registered before versions recorded their files' sha256s
    from ipt.fileio import file_sha256

    for rel, sha in json.loads(recorded).items():
        found = [folder / rel] if (folder / rel).is_file() else sorted(folder.rglob(rel))
        if not found or file_sha256(found[0]) != sha:
            raise TrackingError(f"{what}: the downloaded {rel} is not the registered file (sha256 differs or missing)")


def alias_version(name: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """``{"version", "tags"}`` of the version ``name@alias`` points at, or None if the model or alias is absent."""
    from mlflow.exceptions import MlflowException

    client, uri = client_for(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and not is_unreachable(e):
            return None  # no such model or alias
        raise store_error(e, f"reading {name}@{alias}", uri) from None
    return {"version": str(mv.version), "tags": dict(mv.tags or {})}


def version_tags(name: str, version: str, tracking_uri: str | None = None) -> dict[str, str]:
    client, _ = client_for(tracking_uri)
    return dict(client.get_model_version(name, version).tags or {})
