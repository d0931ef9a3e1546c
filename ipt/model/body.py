"""The IPT transformer body: linear patch encoding, learned positions, encoder, task-queried decoder, mlp head.

Official parameter names, batch-first attention: docs/project.md#layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention without input biases, stored in ``nn.MultiheadAttention``'s layout.

    ``in_proj_weight`` stacks [W_q; W_k; W_v] (3E x E); ``out_proj`` is E x E (bias only if a checkpoint has one).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, out_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        nn.init.kaiming_uniform_(self.in_proj_weight, a=math.sqrt(5))  # as the official layers re-initialise it

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections, each (B, N, E); ipt.model.int8 overrides them."""
        wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
        return F.linear(query, wq), F.linear(key, wk), F.linear(value, wv)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        b, n, e = query.shape
        h = self.num_heads
        q, k, v = self.project(query, key, value)
        q = q.reshape(b, n, h, e // h).transpose(1, 2)
        k = k.reshape(b, key.shape[1], h, e // h).transpose(1, 2)
        v = v.reshape(b, value.shape[1], h, e // h).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, e))


def _norm(dim: int, no_norm: bool) -> nn.Module:
    return nn.Identity() if no_norm else nn.LayerNorm(dim)


def _add(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + ReLU MLP; ``pos`` (if given) is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, no_norm: bool, out_bias: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout, out_bias)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, no_norm)
        self.norm2 = _norm(dim, no_norm)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        s = self.norm1(x)
        qk = _add(s, pos)
        x = x + self.drop(self.self_attn(qk, qk, s))
        s = self.norm2(x)
        return x + self.drop(self.linear2(self.drop(F.relu(self.linear1(s)))))


class DecoderLayer(nn.Module):
    """Pre-norm self-attention and cross-attention to the encoder output, with the task query as query position."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, no_norm: bool, out_bias: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout, out_bias)
        self.multihead_attn = Attention(dim, heads, dropout, out_bias)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, no_norm)
        self.norm2 = _norm(dim, no_norm)
        self.norm3 = _norm(dim, no_norm)
        self.drop = nn.Dropout(dropout)

    def forward(self, y: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None) -> Tensor:
        s = self.norm1(y)
        qk = _add(s, query_pos)
        y = y + self.drop(self.self_attn(qk, qk, s))
        s = self.norm2(y)
        y = y + self.drop(self.multihead_attn(_add(s, query_pos), _add(memory, pos), memory))
        s = self.norm3(y)
        return y + self.drop(self.linear2(self.drop(F.relu(self.linear1(s)))))


class Stack(nn.Module):
    """A list of layers under the official attribute name ``layers``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class LearnedPositionalEncoding(nn.Module):
    def __init__(self, seq_length: int, dim: int) -> None:
        super().__init__()
        self.pe = nn.Embedding(seq_length, dim)
        self.register_buffer("position_ids", torch.arange(seq_length).expand((1, -1)))

    def forward(self) -> Tensor:
        return self.pe(self.position_ids)  # (1, N, E)


class VisionTransformer(nn.Module):
    """IPT's body: (B, C, P, P) features -> (B, C, P, P) features, conditioned on a task query row."""

    def __init__(
        self,
        *,
        img_dim: int,
        patch_dim: int,
        num_channels: int,
        num_heads: int,
        num_layers: int,
        num_queries: int,
        dropout: float = 0.0,
        mlp: bool = True,
        pos_every: bool = False,
        no_pos: bool = False,
        no_norm: bool = False,
        out_proj_bias: bool = False,
    ) -> None:
        super().__init__()
        self.img_dim, self.patch_dim = img_dim, patch_dim
        self.dim = patch_dim * patch_dim * num_channels
        self.seq_length = (img_dim // patch_dim) ** 2
        self.mlp, self.pos_every, self.no_pos = mlp, pos_every, no_pos
        hidden = 4 * self.dim
        if mlp:
            self.linear_encoding = nn.Linear(self.dim, self.dim)
            self.mlp_head = nn.Sequential(
                nn.Linear(self.dim, hidden),
                nn.Dropout(dropout),
                nn.ReLU(),
                nn.Linear(hidden, self.dim),
                nn.Dropout(dropout),
            )
            self.query_embed = nn.Embedding(num_queries, self.dim * self.seq_length)
        args = (self.dim, num_heads, hidden, dropout, no_norm, out_proj_bias)
        self.encoder = Stack([EncoderLayer(*args) for _ in range(num_layers)])
        self.decoder = Stack([DecoderLayer(*args) for _ in range(num_layers)])
        if not no_pos:
            self.position_encoding = LearnedPositionalEncoding(self.seq_length, self.dim)
        self.dropout_layer1 = nn.Dropout(dropout)
        if no_norm:  # the official initialisation when LayerNorms are off
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=1 / m.weight.size(1))

    def tokens(self, x: Tensor, query_idx: int) -> Tensor:
        """Features (B, C, P, P) -> decoder tokens after the mlp head, (B, N, E). Used by the contrastive loss."""
        b = x.shape[0]
        t = F.unfold(x, self.patch_dim, stride=self.patch_dim).transpose(1, 2)  # (B, N, E), channel-major tokens
        query_pos = None
        if self.mlp:
            t = self.dropout_layer1(self.linear_encoding(t)) + t
            query_pos = self.query_embed.weight[query_idx].view(1, self.seq_length, self.dim).expand(b, -1, -1)
        pos = None if self.no_pos else self.position_encoding()
        if self.pos_every:
            for layer in self.encoder.layers:
                t = layer(t, pos)
            mem_pos = pos
        else:
            if pos is not None:
                t = t + pos
            for layer in self.encoder.layers:
                t = layer(t)
            mem_pos = None
        y = t
        for layer in self.decoder.layers:
            y = layer(y, t, mem_pos, query_pos)
        if self.mlp:
            y = self.mlp_head(y) + y
        return y

    def fold(self, tokens: Tensor) -> Tensor:
        return F.fold(tokens.transpose(1, 2), self.img_dim, self.patch_dim, stride=self.patch_dim)

    def forward(self, x: Tensor, query_idx: int) -> Tensor:
        return self.fold(self.tokens(x, query_idx))
