"""Experiment tracking at the boundary: the only module that imports mlflow.

Every call goes to an explicit ``run_id`` through ``MlflowClient`` (the fluent API's active run is thread-local and
breaks under Prefect's thread pools). The tracking URI defaults to a local sqlite store, ``sqlite:///<cwd>/mlflow.db``,
which needs no server; ``$MLFLOW_TRACKING_URI`` or ``--tracking-uri`` override it.

Registry convention (read by :func:`resolve_model_uri`): a model version's ``source`` is an artifact folder holding
one project checkpoint ``model.pt``; ``models:/ipt-sr_x2@champion`` downloads that folder and returns the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ipt.errors import IPTError

MODEL_URI_PREFIX = "models:/"
CHECKPOINT_NAME = "model.pt"
# MLflow 3's UI opens an experiment without a kind on its GenAI overview (traces, tokens: empty here); this kind
# opens the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
FILES_SHA256_TAG = "ipt.files_sha256"  # on a registered version: {artifact file: sha256}, checked on download


class TrackingError(IPTError):
    """A tracking URI, run or registered model cannot be used; the message says which."""


def mask_uri(uri: str) -> str:
    """``uri`` with the password of any ``user:password@`` part replaced by ``***``: what every message shows."""
    return re.sub(r"(//[^/@:\s]*:)[^/@\s]*@", r"\1***@", str(uri))


_UNREACHABLE = ("connectionerror", "max retries exceeded", "connection refused", "failed to establish")


def _unreachable(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) says the tracking server could not be reached."""
    seen: BaseException | None = e
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}".lower()
        if any(
            k in text for k in ("connectionerror", "max retries exceeded", "connection refused", "failed to establish")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _store_error(e: BaseException, what: str, uri: str) -> TrackingError:
    """A one-line TrackingError for a failed store call: an unreachable server says so; credentials are masked."""
    first = mask_uri((str(e).strip().splitlines() or [type(e).__name__])[0])[:300]
    if _unreachable(e):
        return TrackingError(f"cannot reach the MLflow tracking server at {mask_uri(uri)} ({what}): {first}")
    return TrackingError(f"{what} at {mask_uri(uri)}: {first}")


def mlflow_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


class Tracker(Protocol):
    """What pipeline code may call: stages receive one, tests pass :class:`NullTracker`."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_image(self, image: np.ndarray, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Accepts everything, records nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store live beside its database (``<db dir>/mlartifacts/<experiment>``), not in
    whatever the current directory happens to be; other stores keep their server's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri()


def _client(tracking_uri: str | None, *, existing: bool = False):
    """(client, uri). ``existing``: for lookups only; a sqlite store whose file is missing is an error, not a new
    empty database left behind in the working directory."""
    uri = tracking_uri or default_tracking_uri()
    if existing and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise TrackingError(
                f"no MLflow store at {db} (tracking URI {mask_uri(uri)}); point MLFLOW_TRACKING_URI or "
                "--tracking-uri at the store that holds the runs and models"
            )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # an unreachable server fails in seconds, not after MLflow's default 7 retries with doubling waits (~2 minutes)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per models:/ download otherwise
    if not mlflow_installed():
        raise TrackingError(
            "MLflow is not installed (a tracking URI or models:/ needs it): pip install 'ipt-pipeline[pipeline]'"
        )
    from mlflow.tracking import MlflowClient

    # "Creating initial MLflow database tables..." on every fresh sqlite store is noise on a CLI's stderr.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


class MlflowTracker:
    """Logs to one existing run, by id, through ``MlflowClient``."""

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        self.client, self.tracking_uri = _client(tracking_uri, existing=True)
        try:
            self.client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MlflowException and store errors alike
            raise _store_error(e, f"MLflow run {run_id!r} not found", self.tracking_uri) from None
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        parent_run_id: str | None = None,
    ) -> MlflowTracker:
        """Create a run (a child of ``parent_run_id`` if given) in ``experiment`` (created if needed)."""
        client, uri = _client(tracking_uri)
        try:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                location = artifact_location_for(uri, experiment)
                exp_id = client.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
            else:
                exp_id = exp.experiment_id
                for k, v in EXPERIMENT_TAGS.items():  # an experiment made before the kind was set
                    if exp.tags.get(k) != v:
                        client.set_experiment_tag(exp_id, k, v)
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            run = client.create_run(exp_id, run_name=run_name, tags=tags)
        except Exception as e:  # noqa: BLE001 - the store's own errors, a server that is not there
            raise _store_error(e, f"cannot start a run in experiment {experiment!r}", uri) from None
        return cls(run.info.run_id, uri)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def run_scope(tracker: MlflowTracker | None, owned: bool) -> Iterator[MlflowTracker | None]:
    """A command's run ends, whatever happens: FINISHED when the block returns, FAILED on an error, KILLED on an
    interrupt; a run the command did not open (``owned`` false) is left to its owner."""
    try:
        yield tracker
    except BaseException as e:
        if owned and tracker is not None:
            with contextlib.suppress(Exception):  # the store may be what failed: the original error is the news
                tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED")
        raise
    if owned and tracker is not None:
        tracker.finish()


# Environment that links a stage's run to the pipeline run that launched it (set by flows/pipeline.py).
RUN_ID_ENV = "IPT_MLFLOW_RUN_ID"  # log into this existing run
PARENT_RUN_ENV = "IPT_MLFLOW_PARENT_RUN_ID"  # a new run is a child of this one
PIPELINE_RUN_ENV = "IPT_PIPELINE_RUN_ID"  # the Prefect flow run (or any id) that launched the stage
TRACKING_ENV = "IPT_TRACKING"  # "off": stages start no run of their own (the test suite's default)
RUN_FILE = "mlflow_run.json"  # written into a training run's folder: which MLflow run made it


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def dvc_versions(folders: dict[str, str | os.PathLike], lock: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """``{key: md5}`` for each folder that ``lock`` (a dvc.lock; paths in it are relative to its folder) records as
    a stage output: the DVC data version of that folder (``<md5>.dir``) as the last ``dvc repro``/``dvc commit``
    left it. Folders DVC does not track, or no readable lock, are left out."""
    import yaml

    lock = Path(lock)
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    outs: dict[Path, str] = {}
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                outs[(lock.parent / out["path"]).resolve()] = str(out["md5"])
    found = {key: outs.get(Path(folder).resolve()) for key, folder in folders.items()}
    return {key: md5 for key, md5 in found.items() if md5}


def stage_run(
    experiment: str,
    run_name: str,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    required: bool = False,
) -> tuple[MlflowTracker | None, bool]:
    """The run a pipeline stage logs to, and whether the stage owns it (and must ``finish`` it).

    ``run_id`` (or ``$IPT_MLFLOW_RUN_ID``): that existing run, not owned. Otherwise a new run in ``experiment``
    (a child of ``$IPT_MLFLOW_PARENT_RUN_ID`` when set), tagged with the stage, the pipeline run and the git commit,
    unless ``$IPT_TRACKING`` is ``off`` (then no run at all, except for a stage that cannot work without one,
    ``required``: registering). One experiment per stage and the same metric names in every run of it, so the UI's
    compare view lines runs up.
    """
    run_id = run_id or os.environ.get(RUN_ID_ENV)
    if run_id:
        return MlflowTracker(run_id, tracking_uri), False
    if not required and os.environ.get(TRACKING_ENV, "on").lower() in ("off", "0", "false", "no"):
        return None, False
    if not required and not mlflow_installed():  # a core install (pip install ipt-pipeline): nothing to log to
        import sys

        print(f"note: MLflow is not installed: no {experiment} run is logged", file=sys.stderr)
        return None, False
    tracker = MlflowTracker.start(
        experiment, run_name=run_name, tracking_uri=tracking_uri, parent_run_id=os.environ.get(PARENT_RUN_ENV)
    )
    all_tags = dict(tags or {})
    if os.environ.get(PIPELINE_RUN_ENV):
        all_tags["ipt.pipeline_run"] = os.environ[PIPELINE_RUN_ENV]
    commit = _git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    tracker.set_tags(all_tags)
    return tracker, True


def write_run_file(folder: str | os.PathLike, tracker: MlflowTracker) -> Path:
    """Record in ``folder`` which run made it, so ``ipt register`` can link the model version to that run."""
    import json

    path = Path(folder) / RUN_FILE
    exp = tracker.client.get_run(tracker.run_id).info.experiment_id
    path.write_text(json.dumps({"run_id": tracker.run_id, "experiment_id": exp}, indent=1) + "\n")
    return path


def run_from_file(folder: str | os.PathLike, tracking_uri: str | None = None) -> MlflowTracker | None:
    """The run recorded by :func:`write_run_file` in ``folder`` if this tracking store has it, else None."""
    import json

    path = Path(folder) / RUN_FILE
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        return MlflowTracker(run_id, tracking_uri)
    except TrackingError:  # another machine's store (a `dvc pull`ed folder): the caller starts its own run
        return None


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the local path of its ``model.pt``."""
    if not uri.startswith(MODEL_URI_PREFIX):
        raise TrackingError(f"{uri}: not a models:/ URI")
    client, tracking = _client(tracking_uri, existing=True)
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
        if _unreachable(e):
            raise _store_error(e, f"looking up {uri}", tracking) from None
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
        _check_files(scratch, identity["files_sha256"], f"models:/{name}/{number}")
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
            raise _store_error(e, f"registering {name}: cannot log its files", tracker.tracking_uri) from None
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
        raise _store_error(e, f"registering {name}: nothing was registered", tracker.tracking_uri) from None
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
            client, _ = _client(tracking_uri)
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


def alias_version(name: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """``{"version", "tags"}`` of the version ``name@alias`` points at, or None if the model or alias is absent."""
    from mlflow.exceptions import MlflowException

    client, uri = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and not _unreachable(e):
            return None  # no such model or alias
        raise _store_error(e, f"reading {name}@{alias}", uri) from None
    return {"version": str(mv.version), "tags": dict(mv.tags or {})}


def set_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    client, uri = _client(tracking_uri)
    try:
        client.set_registered_model_alias(name, alias, version)
    except Exception as e:  # noqa: BLE001
        raise _store_error(e, f"setting {name}@{alias} to version {version}", uri) from None


def version_tags(name: str, version: str, tracking_uri: str | None = None) -> dict[str, str]:
    client, _ = _client(tracking_uri)
    return dict(client.get_model_version(name, version).tags or {})
