"""The data stages scaled out (Dask, through the CLI and through a Prefect task runner) and on S3 (moto server).

Each path must give the bytes of the local, serial path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_images import PHOTOS, folder_bytes, photo_folder
from helpers_s3 import s3_bucket, s3_server  # noqa: F401
from ipt.cli import main

pytest.importorskip("distributed")

SHARD = ["--max-scale", "2", "--crops", "2", "--images-per-shard", "2", "--quiet", "--params", "none"]


def _shard(src: str, out: str, *extra: str) -> int:
    return main(["shard", "--source", src, "--out", out, *SHARD, *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """A source folder of real photos and its clean shards made serially on local disk."""
    root = tmp_path_factory.mktemp("ref")
    src = photo_folder(root / "train", PHOTOS[:5])
    assert _shard(str(src), str(root / "clean"), "--executor", "serial") == 0
    return src, root / "clean"


@pytest.mark.slow
def test_cli_dask_local_cluster_gives_the_same_bytes(tmp_path: Path, reference) -> None:
    src, ref = reference
    assert _shard(str(src), str(tmp_path / "clean"), "--executor", "dask", "--workers", "2") == 0
    assert folder_bytes(tmp_path / "clean") == folder_bytes(ref)


@pytest.mark.slow
def test_prefect_flows_on_a_dask_task_runner_give_the_same_bytes(tmp_path: Path, reference, prefect_server) -> None:
    import yaml

    from flows.data import corrupt_ipt, shard_ipt

    src, ref = reference
    params = tmp_path / "params.yaml"
    corrupt = {"clean": str(tmp_path / "clean"), "out": str(tmp_path / "pairs" / "{task}")}
    corrupt["tasks"] = {"sr_x2": {"name": "bicubic_down", "scale": 2}}
    params.write_text(yaml.safe_dump({"seed": 20210507, "patch_size": 48, "corrupt": corrupt}))
    summary = shard_ipt(
        params_file=str(params),
        source=str(src),
        out=str(tmp_path / "clean"),
        executor="dask",
        workers=2,
        max_scale=2,
        crops=2,
        images_per_shard=2,
    )
    assert summary == {"samples": 10, "shards": 3, "skipped": 0}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["shards-shard"])))
    assert arts and arts[0].type == "progress" and float(arts[0].data) == 100.0
    assert folder_bytes(tmp_path / "clean") == folder_bytes(ref)
    assert corrupt_ipt(params_file=str(params), executor="dask", workers=2) == {"sr_x2": 10}
    cli_pairs = tmp_path / "cli_pairs" / "{task}"
    argv = ["corrupt", "--task", "sr_x2", "--out", str(cli_pairs), "--params", str(params), "--quiet"]
    assert main(argv + ["--executor", "serial"]) == 0
    assert folder_bytes(tmp_path / "pairs" / "sr_x2") == folder_bytes(tmp_path / "cli_pairs" / "sr_x2")


@pytest.mark.slow
def test_s3_source_and_outputs_give_the_same_bytes(tmp_path: Path, reference, s3_server, s3_bucket) -> None:  # noqa: F811
    import s3fs

    src, ref = reference
    fs = s3fs.S3FileSystem()  # endpoint and credentials from the environment only
    fs.put(str(src) + "/", f"{s3_bucket}/imagenet/train/", recursive=True)
    url = f"s3://{s3_bucket}/ipt/clean"
    assert _shard(f"s3://{s3_bucket}/imagenet/train", url, "--executor", "process", "--workers", "2") == 0
    keys = s3_server.keys(s3_bucket, "ipt/clean/")
    assert keys == sorted(f"ipt/clean/{n}" for n in folder_bytes(ref))  # no .progress or temporaries left
    for name, data in folder_bytes(ref).items():
        if name != "manifest.json":
            assert fs.cat_file(f"{s3_bucket}/ipt/clean/{name}") == data, name
    remote = json.loads(fs.cat_file(f"{s3_bucket}/ipt/clean/manifest.json"))
    local = json.loads((ref / "manifest.json").read_text())
    assert remote["shards"] == local["shards"] and remote["plan"] == local["plan"]
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"corrupt": {"tasks": {"denoise_s30": {"name": "gaussian_noise", "sigma": 30}}}}))
    argv = ["corrupt", "--task", "denoise_s30", "--clean", url, "--params", str(params), "--quiet"]
    assert main(argv + ["--out", f"s3://{s3_bucket}/ipt/pairs/{{task}}"]) == 0
    assert main(argv + ["--out", str(tmp_path / "pairs" / "{task}"), "--clean", str(ref)]) == 0
    for name, data in folder_bytes(tmp_path / "pairs" / "denoise_s30").items():
        if name != "manifest.json":
            assert fs.cat_file(f"{s3_bucket}/ipt/pairs/denoise_s30/{name}") == data
