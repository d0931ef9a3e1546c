"""Where a run's inputs came from: the git commit of the code and DVC's version of its data folders."""

from __future__ import annotations

import os
from pathlib import Path


def git_commit() -> str | None:
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
