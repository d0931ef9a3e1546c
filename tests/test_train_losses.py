"""The patch contrastive loss: SupCon over decoder tokens with images as classes (IPT_REFERENCE section 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ipt.train.losses import charbonnier, ipt_objective, l1, patch_contrastive


def supcon_reference(features: torch.Tensor, temperature: float = 0.07, base_temperature: float = 0.07):
    """Khosla et al.'s SupConLoss, contrast_mode='all', labels=None, written out with its view-major layout and
    row-max subtraction: features (bsz, n_views, dim), already L2-normalised."""
    bsz, n_views, _ = features.shape
    mask = torch.eye(bsz, dtype=torch.float64).repeat(n_views, n_views)
    contrast = torch.cat(torch.unbind(features.double(), dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1 - torch.eye(bsz * n_views, dtype=torch.float64)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_matches_supcon_written_out(tokens) -> None:
    expected = supcon_reference(F.normalize(tokens, dim=-1))
    assert torch.allclose(patch_contrastive(tokens).double(), expected, rtol=1e-5)
    t = 0.5
    expected = supcon_reference(F.normalize(tokens, dim=-1), temperature=t, base_temperature=t)
    assert torch.allclose(patch_contrastive(tokens, temperature=t, base_temperature=t).double(), expected, rtol=1e-5)


def test_identical_positives_and_far_negatives_reach_the_minimum_log_n_minus_1() -> None:
    b, n, e = 3, 16, 8
    same = torch.eye(e)[:b, None, :].expand(b, n, e)  # each image: one direction, orthogonal to the others
    loss = patch_contrastive(same)
    assert loss.item() == pytest.approx(math.log(n - 1), abs=1e-4)
    random = torch.randn(b, n, e, generator=torch.Generator().manual_seed(1))
    assert patch_contrastive(random) > loss + 1.0


def test_finite_non_negative_and_invariant_to_image_order_and_token_scale(tokens) -> None:
    loss = patch_contrastive(tokens)
    assert torch.isfinite(loss) and loss >= 0
    assert torch.allclose(patch_contrastive(tokens[[2, 0, 1]]), loss, rtol=1e-5)
    assert torch.allclose(patch_contrastive(tokens * 7.5), loss, rtol=1e-5)
    single = patch_contrastive(tokens[:1])  # no negatives: still finite, at least log(N - 1)
    assert torch.isfinite(single) and single >= math.log(15) - 1e-4


def test_gradient_flows_to_every_token(tokens) -> None:
    x = tokens.clone().requires_grad_(True)
    patch_contrastive(x).backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()


def test_anchors_against_a_larger_contrast_set_split_the_loss_as_ddp_does(tokens) -> None:
    """Rank r's anchors against every rank's tokens; the mean over equal-sized ranks is the full-batch loss."""
    x = torch.randn(4, 16, 24, generator=torch.Generator().manual_seed(2))
    full = patch_contrastive(x)
    halves = [patch_contrastive(x[2 * r : 2 * r + 2], contrast=x, offset=2 * r) for r in range(2)]
    assert torch.allclose((halves[0] + halves[1]) / 2, full, rtol=1e-6)
    with pytest.raises(ValueError, match="offset"):
        patch_contrastive(x[:2], contrast=x, offset=3)


def test_objective_is_l1_plus_weighted_contrastive(tokens) -> None:
    out, target = torch.rand(3, 3, 12, 12) * 255, torch.rand(3, 3, 12, 12) * 255
    terms = ipt_objective(out, target, tokens, weight=0.1)
    assert torch.allclose(terms["loss"], l1(out, target) + 0.1 * patch_contrastive(tokens))
    off = ipt_objective(out, target, tokens, weight=0.0)
    assert off["contrastive"] == 0 and torch.equal(off["loss"], off["l1"])


def test_rejects_a_single_token(tokens) -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        patch_contrastive(tokens[:, :1])


def test_charbonnier_is_zero_at_a_perfect_fit_l1_far_out_and_quadratic_near_zero() -> None:
    target = torch.rand(2, 3, 12, 12) * 255
    assert charbonnier(target, target, eps=1.0) == 0
    far = target + 1000.0
    assert torch.allclose(charbonnier(far, target, eps=1.0), torch.tensor(999.0), rtol=1e-6)
    # a pixel 0.1 grey level off pulls with ~0.1 of L1's (constant) gradient: sparse corruptions are not drowned
    near = (target + 0.1).requires_grad_()
    charbonnier(near, target, eps=1.0).backward()
    per_pixel = near.grad * near.numel()
    assert torch.allclose(per_pixel, torch.full_like(per_pixel, 0.1 / math.sqrt(1.01)), rtol=1e-4)


def test_objective_with_charbonnier_still_reports_the_true_l1(tokens) -> None:
    out, target = torch.rand(3, 3, 12, 12) * 255, torch.rand(3, 3, 12, 12) * 255
    terms = ipt_objective(out, target, tokens, weight=0.1, pixel="charbonnier", eps=2.0)
    assert torch.allclose(terms["loss"], charbonnier(out, target, 2.0) + 0.1 * patch_contrastive(tokens))
    assert torch.equal(terms["l1"], l1(out, target))
    with pytest.raises(ValueError, match="unknown pixel loss 'l2'"):
        ipt_objective(out, target, tokens, pixel="l2")


def test_three_ranks_split_the_loss_as_the_full_batch(tokens) -> None:
    """The middle rank's anchors sit at offset 1 of 3 (not at the end, where a negative index would wrap to them)."""
    x = torch.randn(3, 8, 24, generator=torch.Generator().manual_seed(5))
    full = patch_contrastive(x)
    thirds = [patch_contrastive(x[r : r + 1], contrast=x, offset=r) for r in range(3)]
    assert torch.allclose(sum(thirds) / 3, full, rtol=1e-6)
    with pytest.raises(ValueError, match=r"^offset 3 does not place 1 anchor images inside 3$"):
        patch_contrastive(x[:1], contrast=x, offset=3)


def test_two_tokens_per_image_are_enough(tokens) -> None:
    loss = patch_contrastive(tokens[:, :2])
    expected = supcon_reference(F.normalize(tokens[:, :2], dim=-1))
    assert torch.allclose(loss.double(), expected, rtol=1e-5)


def test_objective_passes_its_temperature_and_gathers_the_contrast_set(tokens) -> None:
    out, target = torch.rand(3, 3, 12, 12) * 255, torch.rand(3, 3, 12, 12) * 255
    terms = ipt_objective(out, target, tokens, weight=0.5, temperature=0.2)
    assert torch.allclose(terms["contrastive"], patch_contrastive(tokens, temperature=0.2))
    other = torch.randn(2, 16, 24, generator=torch.Generator().manual_seed(6))
    seen = []

    def gather(t: torch.Tensor) -> tuple[torch.Tensor, int]:  # this rank is the second of three
        seen.append(t)
        return torch.cat([other[:1], t, other[1:]]), 1

    terms = ipt_objective(out, target, tokens[:1], weight=0.5, temperature=0.2, gather=gather)
    assert len(seen) == 1 and torch.equal(seen[0], tokens[:1])
    everything = torch.cat([other[:1], tokens[:1], other[1:]])
    want = patch_contrastive(tokens[:1], temperature=0.2, contrast=everything, offset=1)
    assert torch.allclose(terms["contrastive"], want) and not torch.allclose(want, patch_contrastive(tokens[:1]))
    assert torch.allclose(terms["loss"], l1(out, target) + 0.5 * want)


def test_charbonnier_formula_and_the_objectives_default_eps() -> None:
    out, target = torch.rand(2, 3, 8, 8) * 255, torch.rand(2, 3, 8, 8) * 255
    d = (out - target).double()
    for eps in (0.5, 2.0):
        want = ((d * d + eps * eps).sqrt().mean() - eps).float()
        assert torch.allclose(charbonnier(out, target, eps=eps), want, rtol=1e-6)
    tokens = torch.randn(2, 4, 8)
    terms = ipt_objective(out, target, tokens, weight=0.0, pixel="charbonnier")
    assert torch.equal(terms["loss"], charbonnier(out, target, 1.0))  # eps defaults to 1 grey level
