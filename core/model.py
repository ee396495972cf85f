"""The seed design's compact U-Net for 28x28 grayscale digits (the README's "The model").

Resolution path: 28x28@32 -> DownBlock -> 14x14@64 -> DownBlock -> 7x7@128 ->
Bottleneck (ResBlock, SelfAttention, ResBlock) -> UpBlock -> 14x14@64 ->
UpBlock -> 28x28@32 -> GroupNorm + conv -> predicted noise.

Each block is the literal reading of the spec: a ResBlock holds one
time-conditioned 3x3 conv (plus a 1x1 skip when the width changes); a DownBlock
is a ResBlock then a stride-2 conv; an UpBlock is nearest upsampling + conv,
concatenation with the skip, then a ResBlock. ``python -m core.model`` prints
the parameter breakdown beside the seed's numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.config import Config, config_or_fields
from core.fastpath import GroupNorm

GROUPS = 8  # GroupNorm groups everywhere, as in the spec's out_norm


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer position encoding of the timestep (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B).

    :param t: (B,) integer or float timesteps.
    :param dim: embedding width (even).
    :return: (B, dim) float32 embedding, [sin | cos].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by an MLP (time_dim -> 4*time_dim -> time_dim)."""

    def __init__(self, time_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.SiLU(), nn.Linear(4 * time_dim, time_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.time_dim))  # (B, time_dim)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> (dropout) -> conv3x3, plus a projection of the time embedding, plus the skip."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = GroupNorm(GROUPS, in_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_ch))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.dropout(F.silu(self.norm(x))))  # (B, out, H, W)
        h = h + self.time_proj(t_emb)[:, :, None, None]  # broadcast over H, W
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over all H*W positions, with a residual connection."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = GroupNorm(GROUPS, ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class DownBlock(nn.Module):
    """ResBlock at the input resolution (its output is the skip), then a stride-2 conv."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, time_dim, dropout)
        self.down = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.res(x, t_emb)  # (B, out, H, W)
        return self.down(skip), skip  # (B, out, H/2, W/2), skip


class BottleneckBlock(nn.Module):
    """ResBlock -> SelfAttention -> ResBlock at the coarsest (7x7) resolution."""

    def __init__(self, ch: int, time_dim: int, attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.res1 = ResBlock(ch, ch, time_dim, dropout)
        self.attn = SelfAttention(ch) if attention else nn.Identity()
        self.res2 = ResBlock(ch, ch, time_dim, dropout)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t_emb)), t_emb)


class UpBlock(nn.Module):
    """Nearest 2x upsampling + conv3x3, concatenation with the skip, then a ResBlock."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, in_ch, 3, padding=1))
        self.res = ResBlock(in_ch + skip_ch, out_ch, time_dim, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)  # (B, in + skip, 2H, 2W)
        return self.res(x, t_emb)


class DiffusionModel(nn.Module):
    """The seed's U-Net: predicts the noise eps(x_t, t).

    ``DiffusionModel(config)``, or the seed's keywords ``DiffusionModel(image_size=28, channels=1,
    hidden_dims=[32, 64, 128], time_dim=128)``. It reads these :class:`core.config.Config` fields:

    :param image_size: height = width of the images (28 for MNIST; divisible by 4).
    :param channels: image channels (1 for grayscale).
    :param hidden_dims: channels at the three resolutions.
    :param time_dim: width of the time embedding.
    :param attention: self-attention in the bottleneck; False is the ablation.
    :param dropout: dropout probability inside every ResBlock.
    """

    def __init__(self, config: Config | None = None, /, **fields):
        super().__init__()
        c = config_or_fields(config, fields, "DiffusionModel")  # validated when it was built
        self.image_size, self.channels = c.image_size, c.channels
        self.hidden_dims, self.time_dim = list(c.hidden_dims), c.time_dim
        channels, time_dim, attention, dropout = c.channels, c.time_dim, c.attention, c.dropout
        d0, d1, d2 = c.hidden_dims
        self.time_embedding = TimeEmbedding(time_dim)
        self.init_conv = nn.Conv2d(channels, d0, 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownBlock(d0, d1, time_dim, dropout),  # 28x28 -> 14x14, 32 -> 64 channels
            DownBlock(d1, d2, time_dim, dropout),  # 14x14 -> 7x7, 64 -> 128 channels
        ])
        self.bottleneck = BottleneckBlock(d2, time_dim, attention, dropout)
        self.up_blocks = nn.ModuleList([
            UpBlock(d2, d2, d1, time_dim, dropout),  # 7x7 -> 14x14
            UpBlock(d1, d1, d0, time_dim, dropout),  # 14x14 -> 28x28
        ])
        self.out_norm = GroupNorm(8, d0)
        self.out_conv = nn.Conv2d(d0, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:param x: (B, C, H, W) noisy images x_t. :param t: (B,) timesteps. :return: (B, C, H, W) noise."""
        t_emb = self.time_embedding(t)  # (B, time_dim)
        h = self.init_conv(x)  # (B, 32, 28, 28)
        skips = []
        for block in self.down_blocks:
            h, skip = block(h, t_emb)
            skips.append(skip)  # (B, 64, 28, 28), (B, 128, 14, 14)
        h = self.bottleneck(h, t_emb)  # (B, 128, 7, 7)
        for block in self.up_blocks:
            h = block(h, skips.pop(), t_emb)  # (B, 64, 14, 14), then (B, 32, 28, 28)
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C, 28, 28)


# The seed's approximate breakdown; its parts add up to 1.165M, not its stated 1.2M.
SEED_BREAKDOWN = {"time embedding": 132_000, "encoder": 290_000, "bottleneck": 530_000,
                  "decoder": 210_000, "output": 3_000, "total": 1_200_000}


def parameter_breakdown(model: DiffusionModel) -> dict[str, int]:
    """Parameters per part, in the seed's categories (the init conv counts as encoder)."""
    def count(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    parts = {
        "time embedding": count(model.time_embedding),
        "encoder": count(model.init_conv, model.down_blocks),
        "bottleneck": count(model.bottleneck),
        "decoder": count(model.up_blocks),
        "output": count(model.out_norm, model.out_conv),
    }
    parts["total"] = count(model)
    return parts


def format_breakdown(model: DiffusionModel) -> str:
    """A table of the real breakdown beside the seed's numbers."""
    rows = [f"{'part':<16}{'this model':>12}{'seed (approx.)':>16}"]
    for name, n in parameter_breakdown(model).items():
        rows.append(f"{name:<16}{n:>12,}{SEED_BREAKDOWN[name]:>16,}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(format_breakdown(DiffusionModel(Config())))
    print("\nattention=False:", f"{parameter_breakdown(DiffusionModel(Config(attention=False)))['total']:,}")
