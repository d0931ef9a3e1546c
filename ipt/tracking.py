"""Experiment tracking at the boundary: the only module that imports mlflow.

Explicit run ids, the tracking URI: docs/pipeline.md#the-pipeline-four-ways-in (MLflow).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ipt.errors import IPTError
from ipt.fileio import write_json
from ipt.provenance import git_commit

# MLflow 3's UI opens an experiment without a kind on its GenAI overview (traces, tokens: empty here); this kind
# opens the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(IPTError):
    """A tracking URI, run or registered model cannot be used; the message says which."""


def mask_uri(uri: str) -> str:
    """``uri`` with the password of any ``user:password@`` part replaced by ``***``: what every message shows."""
    return re.sub(r"(//[^/@:\s]*:)[^/@\s]*@", r"\1***@", str(uri))


_UNREACHABLE = ("connectionerror", "max retries exceeded", "connection refused", "failed to establish")


def is_unreachable(e: BaseException) -> bool:
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


def store_error(e: BaseException, what: str, uri: str) -> TrackingError:
    """A one-line TrackingError for a failed store call: an unreachable server says so; credentials are masked."""
    first = mask_uri((str(e).strip().splitlines() or [type(e).__name__])[0])[:300]
    if is_unreachable(e):
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


def client_for(tracking_uri: str | None, *, existing: bool = False):
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
        self.client, self.tracking_uri = client_for(tracking_uri, existing=True)
        try:
            self.client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MlflowException and store errors alike
            raise store_error(e, f"MLflow run {run_id!r} not found", self.tracking_uri) from None
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
        client, uri = client_for(tracking_uri)
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
            raise store_error(e, f"cannot start a run in experiment {experiment!r}", uri) from None
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

    def log_series(self, points: list[tuple[str, float, int]]) -> None:
        """Many step metrics (name, value, step) in batches of the store's limit (1000 a call)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for i in range(0, len(points), 1000):
            batch = [Metric(k, float(v), ts, int(step)) for k, v, step in points[i : i + 1000]]
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)


def find_run(experiment: str, tags: dict[str, str], tracking_uri: str | None = None) -> str | None:
    """The id of the newest finished run of ``experiment`` carrying every tag of ``tags`` (None: none, or no such
    experiment yet). A run left RUNNING by a crash does not count: its work is done again."""
    client, uri = client_for(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    except Exception as e:  # noqa: BLE001 - the store's own errors, a server that is not there
        raise store_error(e, f"cannot search runs of experiment {experiment!r}", uri) from None
    runs = [r for r in runs if r.info.status == "FINISHED"]
    return runs[0].info.run_id if runs else None


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
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    tracker.set_tags(all_tags)
    return tracker, True


def write_run_file(folder: str | os.PathLike, tracker: MlflowTracker) -> Path:
    """Record in ``folder`` which run made it, so ``ipt register`` can link the model version to that run."""

    path = Path(folder) / RUN_FILE
    exp = tracker.client.get_run(tracker.run_id).info.experiment_id
    return write_json(path, {"run_id": tracker.run_id, "experiment_id": exp}, indent=1)


def run_from_file(folder: str | os.PathLike, tracking_uri: str | None = None) -> MlflowTracker | None:
    """The run recorded by :func:`write_run_file` in ``folder`` if this tracking store has it, else None."""

    path = Path(folder) / RUN_FILE
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        return MlflowTracker(run_id, tracking_uri)
    except TrackingError:  # another machine's store (a `dvc pull`ed folder): the caller starts its own run
        return None
