"""PTG-RM itself: parameter budget, the reference's parameter count, shape/dtype contracts, the injection of g."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ipt.refine.ptgrm import PTGRM, PriorProjection, PTGRMSpec, count_parameters, per_pixel_filter


def test_default_size_is_under_one_million_trainable_parameters() -> None:
    model = PTGRM()
    n = count_parameters(model)
    assert n < 1_000_000
    assert n == 573_431  # PTGRM_REFERENCE section 4 for d = 320 (MobileNetV2 features.17)


@pytest.mark.parametrize("d", [512, 576, 1280])
def test_parameter_count_matches_the_reference_formula(d: int) -> None:
    assert count_parameters(PTGRM(PTGRMSpec(prior_dim=d))) == 671_735 + 512 * (d - 512)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(37, 53), (5, 7), (48, 48), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_image_size_keeps_shape_and_dtype(size: tuple[int, int], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = PTGRM(PTGRMSpec(prior_dim=16)).to(dtype)
    restored = torch.rand(2, 3, *size, dtype=dtype)
    out = model(restored, torch.rand(2, 3, *size, dtype=dtype), torch.randn(2, 16, dtype=dtype))
    assert out.shape == restored.shape and out.dtype == dtype and torch.isfinite(out).all()


def test_super_resolution_takes_the_smaller_degraded_input() -> None:
    model = PTGRM(PTGRMSpec(prior_dim=8))
    out, mask = model(torch.rand(1, 3, 34, 26), torch.rand(1, 3, 17, 13), torch.randn(1, 8), return_mask=True)
    assert out.shape == (1, 3, 34, 26)
    assert mask.shape == (1, 1, 9, 7) and ((mask >= 0) & (mask <= 1)).all()  # padded to 36 x 28, a quarter


def test_output_is_clamped_base_plus_residual_and_bad_shapes_are_refused() -> None:
    model = PTGRM(PTGRMSpec(prior_dim=4), zero_init=True)  # zero residual
    restored = torch.rand(1, 3, 9, 11) * 1.4 - 0.2
    out = model(restored, torch.rand(1, 3, 9, 11), torch.randn(1, 4))
    assert torch.equal(out, restored.clamp(0, 1))
    with pytest.raises(ValueError, match="prior vector"):
        model(restored, restored, torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(restored[:, :1], restored, torch.randn(1, 4))


@pytest.mark.parametrize("d", [320, 72])
def test_zero_init_is_the_identity_and_changes_only_the_output_conv(d: int) -> None:
    torch.manual_seed(5)
    plain = PTGRM(PTGRMSpec(prior_dim=d))
    torch.manual_seed(5)
    zeroed = PTGRM(PTGRMSpec(prior_dim=d), zero_init=True)
    assert count_parameters(zeroed) == count_parameters(plain) == 671_735 + 512 * (d - 512)
    a, b = plain.state_dict(), zeroed.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"decoder.net.8.weight", "decoder.net.8.bias"}
    assert zeroed.output_conv is zeroed.decoder.net[-1] and not b["decoder.net.8.weight"].any()
    restored, degraded = torch.rand(2, 3, 21, 30), torch.rand(2, 3, 21, 30)
    g = torch.randn(2, d)
    assert torch.equal(zeroed(restored, degraded, g), restored)  # in [0, 1]: the base exactly
    assert not torch.equal(plain(restored, degraded, g), restored)  # the reference's init: a random residual
    assert (plain(restored, degraded, g) - restored).abs().mean() > 1e-3


def test_zero_prior_injects_exactly_nothing() -> None:
    proj = PriorProjection(32, 256, 64)
    assert torch.equal(proj(torch.zeros(3, 32)), torch.zeros(3, 64))
    model = PTGRM(PTGRMSpec(prior_dim=32))
    x = torch.rand(1, 3, 16, 16)
    a = model(x, x, torch.zeros(1, 32))
    with torch.no_grad():  # T_m / T_c weights do not matter when g = 0
        for t in (model.sve.project, model.csa.project):
            for p in t.parameters():
                p.mul_(3.0)
    assert torch.equal(a, model(x, x, torch.zeros(1, 32)))


def test_per_pixel_filter_channel_order_and_replicate_padding() -> None:
    torch.manual_seed(1)
    x, k = torch.randn(1, 2, 4, 5), torch.randn(1, 18, 4, 5)
    got = per_pixel_filter(x, k)
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    want = torch.zeros_like(x)
    for c in range(2):
        for i in range(3):
            for j in range(3):
                want[:, c] += k[:, 9 * c + 3 * i + j] * pad[:, c, i : i + 4, j : j + 5]
    torch.testing.assert_close(got, want)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_prior_path_gets_gradients_and_learns_a_prior_only_target() -> None:
    """Guard for the ablation's "every prior ties" result: the prior path is wired for learning. On a toy task whose
    target (input +- 0.05) is given by g alone, the T layers get non-zero gradients from the second step on (the
    first one has a zeroed output conv) and move, and after training the output follows g: near the target with the
    right g, about twice the error with g = 0 and four times with the other class's g (measured L1 0.0017 /
    0.049 / 0.10; 2 s on an idle core, 5-10 s under load). The real ablation ties because of its budget, not
    the wiring (docs/refine.md)."""
    torch.manual_seed(0)
    d, n = 16, 8
    model = PTGRM(PTGRMSpec(prior_dim=d, channels=8, blocks=1, embed=16, hidden=32), zero_init=True)
    prior_path = {k: p for k, p in model.named_parameters() if k.startswith(("sve.project.", "csa.project."))}
    assert len(prior_path) == 4
    start = {k: p.detach().clone() for k, p in prior_path.items()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.99))
    assert {id(p) for p in prior_path.values()} <= {id(p) for p in opt.param_groups[0]["params"]}
    gen = torch.Generator().manual_seed(1)
    protos = F.normalize(torch.rand(2, d, generator=gen), dim=1)  # two classes, non-negative like a GAP feature
    sign = (torch.arange(n) % 2).float() * 2 - 1

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 3, 8, 8, generator=gen) * 0.8 + 0.1
        return x, protos[torch.arange(n) % 2], x + 0.05 * sign[:, None, None, None]

    for step in range(150):
        x, g, hr = batch()
        (model(x, x, g) - hr).abs().mean().backward()
        if step == 1:
            for k, p in prior_path.items():
                assert p.grad is not None and p.grad.abs().max() > 0, f"{k}: no gradient through the prior path"
        opt.step()
        opt.zero_grad(set_to_none=True)
    for k, p in prior_path.items():
        assert (p.detach() - start[k]).abs().max() > 1e-3, f"{k} did not move"
    with torch.no_grad():
        x, g, hr = batch()
        right = (model(x, x, g) - hr).abs().mean()
        zero = (model(x, x, torch.zeros_like(g)) - hr).abs().mean()
        swapped = (model(x, x, g.flip(0)) - hr).abs().mean()  # n even: each sample gets the other class's g
    assert right < 0.01 and zero > 0.04 and swapped > 0.08, (right.item(), zero.item(), swapped.item())


def test_spatial_prior_variant_size_shapes_and_position_dependence() -> None:
    torch.manual_seed(0)
    spec = PTGRMSpec(prior_dim=128, spatial_prior=True)
    model = PTGRM(spec)
    # T_m, T_c as 1x1 convs: 2 (128 * 256 + 256 * 64) weights instead of the pooled 2 (320 * 256 + 256 * 64)
    assert count_parameters(model) == 573_431 - 2 * (320 * 256 + 256 * 64) + 2 * (128 * 256 + 256 * 64) < 1_000_000
    restored, degraded = torch.rand(1, 3, 34, 26), torch.rand(1, 3, 17, 13)  # SR: maps of the LQ, resized to f
    g = torch.randn(1, 128, 3, 2)
    out = model(restored, degraded, g)
    assert out.shape == (1, 3, 34, 26)
    # a change of the map at one position changes the output more near it than far from it
    g2 = g.clone()
    g2[:, :, 0, 0] += 5
    delta = (model(restored, degraded, g2) - out).abs().mean(dim=1)[0]
    assert delta[:8, :8].mean() > 1.5 * delta[-8:, -8:].mean() > 0
    # zero maps inject nothing (bias-free projections), as the pooled g = 0 does
    zero = model(restored, degraded, torch.zeros(1, 128, 3, 2))
    model.sve.project.net[0].weight.data.mul_(3)
    model.csa.project.net[0].weight.data.mul_(3)
    assert torch.equal(model(restored, degraded, torch.zeros(1, 128, 3, 2)), zero)
    with pytest.raises(ValueError, match="spatial prior must be"):
        model(restored, degraded, torch.randn(1, 128))
    with pytest.raises(ValueError, match="prior vector must be"):
        PTGRM(PTGRMSpec(prior_dim=128))(restored, degraded, g)
