"""PTG-RM: the prior-guided refinement module (PTGRM_REFERENCE sections 1-4), pure torch.

Architecture: docs/refine.md#ptg-rms-architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SLOPE = 0.1  # every LeakyReLU of the reference


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(SLOPE)


def conv3(cin: int, cout: int, *, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def conv1(cin: int, cout: int, *, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


@dataclass(frozen=True)
class PTGRMSpec:
    """Size of a PTG-RM. ``prior_dim`` is the prior's vector length d; the rest are the reference's values."""

    prior_dim: int = 320
    channels: int = 16
    blocks: int = 4  # Restormer blocks of the long-range branch
    embed: int = 64  # T(g) output width
    hidden: int = 256  # T hidden width
    heads: int = 1
    spatial_prior: bool = False  # g is a (B, d, h', w') map (1x1-conv projections), not a (B, d) vector

    def __post_init__(self) -> None:
        if not isinstance(self.spatial_prior, bool):
            raise ValueError(f"PTGRMSpec.spatial_prior must be a bool, got {self.spatial_prior!r}")
        for name in ("prior_dim", "channels", "blocks", "embed", "hidden", "heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PTGRMSpec.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.channels % self.heads:
            raise ValueError(f"PTGRMSpec: channels {self.channels} not divisible by heads {self.heads}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ Restormer block


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at every pixel (population variance), with weight and bias."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class TransposedAttention(nn.Module):
    """MDTA: attention across channels (a C x C map per head), so its cost is linear in the pixel count."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = conv1(dim, 3 * dim)
        self.qkv_dw = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=False)
        self.project = conv1(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attn @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 expand, depthwise 3x3, GELU(a) * b gate, 1x1 project."""

    def __init__(self, dim: int, expansion: float = 2.66) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.expand = conv1(dim, 2 * hidden)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project = conv1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.dw(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(a) * b)


class RestormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


# ------------------------------------------------------------------------------------------------ small parts


def coordinates(h: int, w: int, *, like: Tensor) -> Tensor:
    """(1, 2, h, w): channel 0 runs -1..1 down the rows, channel 1 -1..1 across the columns."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=like.dtype, device=like.device)
    return torch.stack([ys[:, None].expand(h, w), xs[None, :].expand(h, w)])[None]


class PositionCode(nn.Module):
    """P: the coordinate map -> a learned 16-channel position code."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv3(2, channels), _lrelu(), conv1(channels, channels))

    def forward(self, coords: Tensor) -> Tensor:
        return self.net(coords)


class PriorProjection(nn.Module):
    """T: the prior vector g (B, d) -> (B, embed), bias-free so that g = 0 gives exactly 0; ``spatial``: the same
    two layers as 1x1 convs over a (B, d, h', w') map -> (B, embed, h', w')."""

    def __init__(self, dim: int, hidden: int, embed: int, *, spatial: bool = False) -> None:
        super().__init__()
        if spatial:
            self.net = nn.Sequential(conv1(dim, hidden), _lrelu(), conv1(hidden, embed))
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), _lrelu(), nn.Linear(hidden, embed, bias=False))

    def forward(self, g: Tensor) -> Tensor:
        return self.net(g)


def _broadcast(v: Tensor, like: Tensor) -> Tensor:
    """A projected prior as a map of ``like``'s size: a vector broadcast, a spatial map resized (bilinear)."""
    if v.dim() == 4:
        return F.interpolate(v, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return v[:, :, None, None].expand(-1, -1, *like.shape[-2:])


def _pooled(v: Tensor) -> Tensor:
    return v.mean(dim=(2, 3)) if v.dim() == 4 else v


class Encoder(nn.Module):
    """R_e: cat(restored, degraded) (6 ch) -> features at a quarter of the size."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv3(6, c),
            nn.InstanceNorm2d(c, affine=True),
            _lrelu(),
            conv3(c, c, stride=2),
            nn.InstanceNorm2d(c, affine=True),
            conv3(c, c, stride=2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """R_d: quarter-size features -> the full-size RGB residual (two pixel-shuffle x2 steps)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv3(c, 4 * c),
            nn.PixelShuffle(2),
            _lrelu(),
            conv3(c, 4 * c),
            nn.PixelShuffle(2),
            _lrelu(),
            conv3(c, c, bias=True),
            _lrelu(),
            conv3(c, 3, bias=True),
        )

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)


# ------------------------------------------------------------------------------------------------ SVE and CSA


class PTGSVE(nn.Module):
    """Pre-train-guided spatially varying enhancement: a per-pixel mask M blends a long-range branch (Restormer
    blocks) with a short-range one (two convs + identity), f-hat = M * long(f) + (1 - M) * short(f)."""

    def __init__(self, spec: PTGRMSpec) -> None:
        super().__init__()
        c, e = spec.channels, spec.embed
        self.project = PriorProjection(spec.prior_dim, spec.hidden, e, spatial=spec.spatial_prior)  # T_m
        self.position = PositionCode(c)  # P_m
        self.mask = nn.Sequential(conv3(c + e + c, c), _lrelu(), conv3(c, 1), nn.Sigmoid())  # R_m
        self.long = nn.Sequential(*(RestormerBlock(c, spec.heads) for _ in range(spec.blocks)))  # R_l
        self.short = nn.Sequential(conv3(c, c, bias=True), nn.ReLU(), conv3(c, c, bias=True))  # R_s (+ identity)

    def forward(self, f: Tensor, g: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        """-> (f-hat, M)."""
        pos = self.position(coords).expand(f.shape[0], -1, -1, -1)
        m = self.mask(torch.cat([f, _broadcast(self.project(g), f), pos], dim=1))
        return m * self.long(f) + (1 - m) * (self.short(f) + f), m


def per_pixel_filter(x: Tensor, kernels: Tensor) -> Tensor:
    """Depthwise 3x3 filtering with a different kernel at every pixel: correlation (no flip), replicate padding.

    ``kernels`` is (B, 9C, h, w) with channel 9c + 3i + j holding tap (i, j) of channel c's kernel.
    """
    b, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(b, c, 9, h, w)
    return (patches * kernels.view(b, c, 9, h, w)).sum(dim=2)


class PTGCSA(nn.Module):
    """Prior-guided channel-spatial attention: f-bar = R_f(cat(M_c * f-hat, M_s * f-hat)) + f-hat."""

    def __init__(self, spec: PTGRMSpec) -> None:
        super().__init__()
        c, e = spec.channels, spec.embed
        self.project = PriorProjection(spec.prior_dim, spec.hidden, e, spatial=spec.spatial_prior)  # T_c (both gates)
        self.position = PositionCode(c)  # P_c
        self.channel = nn.Sequential(nn.Linear(c + e, c, bias=False), _lrelu(), nn.Linear(c, c, bias=False))  # R_c
        self.kernels = nn.Sequential(conv3(c + e + c, 9 * c), _lrelu(), conv3(9 * c, 9 * c))  # R_p
        self.spatial = nn.Sequential(_lrelu(), conv3(c, 1), nn.Sigmoid())  # R_o
        self.fuse = conv1(2 * c, c)  # R_f

    def forward(self, f: Tensor, g: Tensor, coords: Tensor) -> Tensor:
        t = self.project(g)
        m_c = torch.sigmoid(self.channel(torch.cat([f.mean(dim=(2, 3)), _pooled(t)], dim=1)))
        pos = self.position(coords).expand(f.shape[0], -1, -1, -1)
        k = self.kernels(torch.cat([f, _broadcast(t, f), pos], dim=1))
        m_s = self.spatial(per_pixel_filter(f, k))
        return self.fuse(torch.cat([f * m_c[:, :, None, None], f * m_s], dim=1)) + f


# ------------------------------------------------------------------------------------------------ the module


class PTGRM(nn.Module):
    """``refined = clamp(restored, 0, 1) + R_d(CSA(SVE(R_e(cat(restored, degraded)), g), g))``.

    ``spec.prior_dim`` must equal the prior's vector length. ``zero_init`` zeroes R_d's last conv after the default
    init, so the untrained module is the identity on ``clamp(restored, 0, 1)`` (docs/refine.md, "Design choices").
    ``forward(restored, degraded, g)``: ``restored`` (B, 3, H, W) in [0, 1] (unclamped is fine), ``degraded``
    (B, 3, h, w) in [0, 1] (bicubic-upsampled to H x W when smaller, as for super-resolution), ``g`` (B, d).
    Returns (B, 3, H, W) in the input dtype, unclamped (clamp when quantising).
    """

    def __init__(self, spec: PTGRMSpec | None = None, *, zero_init: bool = False) -> None:
        super().__init__()
        self.spec = spec or PTGRMSpec()
        c = self.spec.channels
        self.encoder = Encoder(c)
        self.sve = PTGSVE(self.spec)
        self.csa = PTGCSA(self.spec)
        self.decoder = Decoder(c)
        if zero_init:
            self.zero_output_()

    @property
    def output_conv(self) -> nn.Conv2d:
        """R_d's last conv, the one that emits the residual r."""
        return self.decoder.net[-1]

    @torch.no_grad()
    def zero_output_(self) -> PTGRM:
        """Zero the output conv's weight and bias: r = 0 exactly for any input until it is trained. Gradients still
        reach it (its weight gradient is its input times the loss gradient), and through it everything else once
        its weight has moved off zero."""
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)
        return self

    def forward(self, restored: Tensor, degraded: Tensor, g: Tensor, *, return_mask: bool = False):
        r, mask = self.residual(restored, degraded, g)
        out = restored.clamp(0, 1) + r
        return (out, mask) if return_mask else out

    def residual(self, restored: Tensor, degraded: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """-> (r, M): the residual alone (B, 3, H, W) and the SVE mask; ``forward`` adds r to the clamped base."""
        if restored.dim() != 4 or restored.shape[1] != 3 or degraded.dim() != 4 or degraded.shape[1] != 3:
            raise ValueError(
                f"PTGRM expects (B, 3, H, W) images, got {tuple(restored.shape)} / {tuple(degraded.shape)}"
            )
        want = (restored.shape[0], self.spec.prior_dim)
        if self.spec.spatial_prior and (g.dim() != 4 or tuple(g.shape[:2]) != want):
            raise ValueError(f"spatial prior must be (B={want[0]}, {want[1]}, h, w) maps, got {tuple(g.shape)}")
        if not self.spec.spatial_prior and g.shape != want:
            raise ValueError(f"prior vector must be (B={want[0]}, {want[1]}), got {tuple(g.shape)}")
        H, W = restored.shape[-2:]
        if degraded.shape[-2:] != (H, W):
            degraded = F.interpolate(degraded, size=(H, W), mode="bicubic", align_corners=False)
        ph, pw = -H % 4, -W % 4
        x = torch.cat([restored, degraded.to(restored.dtype)], dim=1)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        f = self.encoder(x)
        coords = coordinates(*f.shape[-2:], like=f)
        g = g.to(f.dtype)
        f_hat, mask = self.sve(f, g, coords)
        return self.decoder(self.csa(f_hat, g, coords))[:, :, :H, :W], mask


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
