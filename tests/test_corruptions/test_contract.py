"""The corruption contract (STYLE C2/C3), checked for every registered corruption.

Cases come from ``corrupt.tasks`` in params.yaml (one case per task); a registered name with no task there falls
back to ``FALLBACK_PARAMS`` (or to its defaults), so a new corruption is tested as soon as it is imported.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from corruptions import REGISTRY, apply, get, sample_generator, validate_params

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FALLBACK_PARAMS: dict[str, dict[str, Any]] = {
    "bicubic_down": {"scale": 2},
    "blur_down": {"scale": 3},
    "gaussian_noise": {"sigma": 25},
    "jpeg": {"quality": 10},
    "rain_streaks": {},
}
SEED = 20210507
H, W = 40, 44  # big enough that a random corruption certainly touches it; small enough to be fast


def _tasks() -> dict[str, dict[str, Any]]:
    with open(PROJECT_ROOT / "params.yaml") as f:
        return yaml.safe_load(f)["corrupt"]["tasks"]


def _cases() -> list[Any]:
    tasks = _tasks()
    cases = []
    for name in sorted(REGISTRY):
        mine = {t: {k: v for k, v in spec.items() if k != "name"} for t, spec in tasks.items() if spec["name"] == name}
        mine = mine or {"fallback": FALLBACK_PARAMS.get(name, {})}
        cases += [pytest.param(name, params, id=f"{name}-{task}") for task, params in sorted(mine.items())]
    return cases


CASES = _cases()


def _image(b: int = 2, c: int = 3, h: int = H, w: int = W, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(0), dtype=dtype)


def _run(name: str, x: torch.Tensor, params: dict[str, Any], key: str = "img0", seed: int = SEED) -> torch.Tensor:
    return apply(name, x, generator=sample_generator(seed, name, key, device=x.device), **params)


def test_registry_is_not_empty() -> None:
    assert {"bicubic_down", "gaussian_noise", "rain_streaks"} <= set(REGISTRY)


@pytest.mark.parametrize("task", sorted(_tasks()))
def test_params_yaml_task_is_registered_and_valid(task: str) -> None:
    spec = dict(_tasks()[task])
    name = spec.pop("name")
    assert name in REGISTRY, f"params.yaml task {task!r} names unregistered corruption {name!r}"
    validate_params(name, spec)


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_device_range(name: str, params: dict, dtype: torch.dtype, channels: int) -> None:
    x = _image(c=channels, dtype=dtype)
    y = _run(name, x, params)
    assert y.shape == (2, channels, *get(name).out_size(H, W, **params))
    assert y.dtype == dtype and y.device == x.device
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize(("h", "w"), [(7, 9), (5, 7), (1, 1)])
def test_odd_tiny_sizes(name: str, params: dict, h: int, w: int) -> None:
    y = _run(name, _image(h=h, w=w), params)
    assert y.shape == (2, 3, *get(name).out_size(h, w, **params))
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize(("name", "params"), CASES)
def test_same_seed_same_output(name: str, params: dict) -> None:
    x = _image()
    assert torch.equal(_run(name, x, params), _run(name, x, params))


@pytest.mark.parametrize(("name", "params"), CASES)
def test_different_seed_or_key_changes_output(name: str, params: dict) -> None:
    x = _image()
    base = _run(name, x, params)
    others = [_run(name, x, params, seed=SEED + 1), _run(name, x, params, key="img1")]
    for other in others:
        if get(name).deterministic:
            assert torch.equal(base, other)
        else:
            assert not torch.equal(base, other)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_batch_items_independent(name: str, params: dict) -> None:
    x = _image(b=1).repeat(2, 1, 1, 1)
    y = _run(name, x, params)
    if get(name).deterministic:
        assert torch.equal(y[0], y[1])
    else:
        assert not torch.equal(y[0], y[1])


@pytest.mark.parametrize(("name", "params"), CASES)
def test_first_item_matches_batch_of_one(name: str, params: dict) -> None:
    x = _image()
    assert torch.equal(_run(name, x, params)[0], _run(name, x[:1], params)[0])


@pytest.mark.parametrize(("name", "params"), CASES)
def test_no_global_rng_use_and_no_in_place_change(name: str, params: dict) -> None:
    x = _image()
    x_before = x.clone()
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    _run(name, x, params)
    assert torch.equal(torch.get_rng_state(), torch_state)
    new_np = np.random.get_state()
    assert new_np[0] == np_state[0] and np.array_equal(new_np[1], np_state[1]) and new_np[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert torch.equal(x, x_before)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_docstring_states_output_range(name: str, params: dict) -> None:
    doc = get(name).fn.__doc__ or ""
    assert "output" in doc.splitlines()[0].lower(), f"{name}: first docstring line must state the output range"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "params"), CASES)
def test_cuda_device_kept(name: str, params: dict) -> None:
    x = _image().cuda()
    y = _run(name, x, params)
    assert y.device == x.device and y.dtype == x.dtype
    assert y.shape == (2, 3, *get(name).out_size(H, W, **params))
    if get(name).deterministic:
        torch.testing.assert_close(y.cpu(), _run(name, x.cpu(), params), rtol=0, atol=0)
