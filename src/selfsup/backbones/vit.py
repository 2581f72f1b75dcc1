"""Vision Transformer encoder (pre-norm, as in MAE's models_mae.py / timm).

Token layout everywhere: index 0 is the cls token, then the L = grid_size**2 patch tokens in
row-major order. ``pos_embed`` has shape (1, 1 + L, dim); its cls row is zero for sin-cos.

MAE-style use of the encoder on a subset of patches::

    tokens = vit.embed(imgs)                          # (N, L, dim), pos embedding added
    latent = vit.forward_tokens(tokens, ids_keep)     # (N, 1 + L', dim)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.base import Backbone
from selfsup.backbones.registry import register_backbone

__all__ = [
    "VisionTransformer",
    "PatchEmbed",
    "Block",
    "get_2d_sincos_pos_embed",
    "vit_micro",
    "vit_tiny",
    "vit_small",
    "vit_base",
]

PosEmbed = Literal["sincos", "learned"]
GlobalPool = Literal["cls", "avg"]


def _1d_sincos(embed_dim: int, pos: Tensor) -> Tensor:
    """(M,) positions -> (M, embed_dim): [sin(pos * w_k), cos(pos * w_k)], w_k = 1e4^(-k/(D/2))."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> Tensor:
    """Fixed 2D sin-cos position embedding (MAE).

    Half the channels encode the row, half the column.

    Args:
        embed_dim: embedding dim D, divisible by 4.
        grid_size: patches per side ``g`` (or ``(gh, gw)``).
        cls_token: prepend an all-zero row for the cls token.

    Returns:
        float32 tensor (gh * gw, D), or (1 + gh * gw, D) with ``cls_token=True``; row-major.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for 2D sin-cos, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    emb = torch.cat(
        [_1d_sincos(embed_dim // 2, rows.flatten()), _1d_sincos(embed_dim // 2, cols.flatten())],
        dim=1,
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention``. (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)). (N, T, D) -> same."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Patch projection plus the cls token and position embedding (stage 0 of the ViT).

    ``forward``: (N, C, H, W) -> (N, L, dim) patch tokens *without* position embedding.
    ``pos_embed`` (1, 1 + L, dim) is a non-trainable buffer for ``"sincos"`` and an
    ``nn.Parameter`` for ``"learned"``; ``cls_token`` (1, 1, dim) is a parameter.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        pos_embed: PosEmbed = "sincos",
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size {image_size} not divisible by patch_size {patch_size}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_type = pos_embed
        if pos_embed == "sincos":
            pe = get_2d_sincos_pos_embed(embed_dim, self.grid_size, cls_token=True)
            self.register_buffer("pos_embed", pe.unsqueeze(0))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input {h}x{w} is not divisible by the patch size {self.patch_size} "
                f"(native image_size {self.image_size})"
            )
        return self.proj(x).flatten(2).transpose(1, 2)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + gh * gw, dim) position embedding for a ``(gh, gw)`` patch grid.

        The native grid returns ``pos_embed`` itself. Other grids (e.g. DINO's small local
        crops) get the patch rows resized bicubically as an image over the native grid, as DINO
        and timm do; the cls row is kept. Works for sin-cos and learned embeddings alike and is
        differentiable for the learned one.
        """
        pe = self.pos_embed
        g = self.grid_size
        if tuple(grid) == (g, g):
            return pe
        gh, gw = grid
        cls, patch = pe[:, :1], pe[:, 1:]
        dim = patch.shape[-1]
        patch = patch.reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
        patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(pe.dtype)
        return torch.cat([cls, patch], dim=1)


class VisionTransformer(Backbone):
    """ViT encoder (square images).

    Args:
        image_size: input side length H = W.
        patch_size: patch side p; ``grid_size = image_size // p``, ``num_patches = grid_size**2``.
        in_channels: input channels C.
        embed_dim, depth, num_heads, mlp_ratio: transformer size.
        pos_embed: ``"sincos"`` (fixed 2D sin-cos, MAE) or ``"learned"``.
        global_pool: ``"cls"`` (cls token) or ``"avg"`` (mean of patch tokens) for ``forward``.
        drop_path_rate: stochastic depth, linearly increasing from 0 to this over the blocks.

    Shapes:
        ``forward``: (N, C, H, W) -> (N, embed_dim); ``forward_features``: -> (N, 1 + L, dim).
        Inputs other than ``image_size`` (sides multiples of the patch size) use an
        interpolated position embedding; the native size is computed exactly as before.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pos_embed: PosEmbed = "sincos",
        global_pool: GlobalPool = "cls",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if global_pool not in ("cls", "avg"):
            raise ValueError(f"global_pool must be 'cls' or 'avg', got {global_pool!r}")
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.feature_dim = embed_dim
        self.patch_size = patch_size
        self.image_size = image_size
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, embed_dim, pos_embed)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        dpr = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, d) for d in dpr)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE: patch projection initialised like a Linear; small normal for tokens.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.patch_embed.cls_token, std=0.02)
        if isinstance(self.patch_embed.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def cls_token(self) -> Tensor:
        """(1, 1, dim) learnable cls token (lives in ``patch_embed``)."""
        return self.patch_embed.cls_token

    @property
    def pos_embed(self) -> Tensor:
        """(1, 1 + L, dim) position embedding, cls position first (lives in ``patch_embed``)."""
        return self.patch_embed.pos_embed

    # --- MAE helpers -----------------------------------------------------------------------
    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, L, p * p * C); each patch flattened in (row, col, channel) order."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} not divisible by patch size {p}")
        gh, gw = h // p, w // p
        x = imgs.reshape(n, c, gh, p, gw, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, gh * gw, p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, L, p * p * C) -> (N, C, H, W); inverse of :meth:`patchify` (square grid)."""
        p = self.patch_size
        n, length, d = x.shape
        g = math.isqrt(length)
        if g * g != length or d % (p * p):
            raise ValueError(f"cannot unpatchify tokens of shape {tuple(x.shape)} with p={p}")
        c = d // (p * p)
        x = x.reshape(n, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, g * p, g * p)

    # --- encoder ---------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, L, dim) patch tokens with position embedding added (no cls).

        H and W may differ from ``image_size`` (multiples of the patch size): the position
        embedding is then interpolated to the ``(H / p, W / p)`` grid
        (:meth:`PatchEmbed.pos_embed_for`), so e.g. DINO's local crops pass through the same
        ViT; ``L = (H / p) * (W / p)``.
        """
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return self.patch_embed(x) + self.patch_embed.pos_embed_for(grid)[:, 1:, :]

    def forward_tokens(self, tokens: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Run the transformer on (a subset of) embedded patch tokens.

        Args:
            tokens: (N, L, dim) output of :meth:`embed`.
            ids_keep: optional (N, L') long indices into L; only those tokens are kept (gather).

        Returns:
            (N, 1 + L', dim) normalised tokens, cls first (L' = L without ``ids_keep``).
        """
        if ids_keep is not None:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, dim=1, index=index)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls.to(tokens.dtype), tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, 1 + L, dim) tokens (cls first) after the final norm."""
        return self.forward_tokens(self.embed(x))

    def pool(self, tokens: Tensor) -> Tensor:
        """(N, 1 + L, dim) -> (N, dim) according to ``global_pool``."""
        return tokens[:, 0] if self.global_pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, embed_dim) pooled features."""
        return self.pool(self.forward_features(x))

    def stages(self) -> list[nn.Module]:
        """``[patch_embed (proj + cls + pos), block_0, ..., block_{depth-1} + final norm]``.

        ``depth + 1`` stages; the final LayerNorm is grouped with the last block.
        """
        if len(self.blocks) == 0:
            return [self.patch_embed, self.norm]
        last = nn.ModuleList([self.blocks[-1], self.norm])
        return [self.patch_embed, *self.blocks[:-1], last]


def _make_preset(
    name: str, embed_dim: int, depth: int, num_heads: int
) -> Callable[..., VisionTransformer]:
    def factory(
        *,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        pos_embed: PosEmbed = "sincos",
        global_pool: GlobalPool = "cls",
        drop_path_rate: float = 0.0,
    ) -> VisionTransformer:
        return VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            pos_embed=pos_embed,
            global_pool=global_pool,
            drop_path_rate=drop_path_rate,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"ViT preset: dim {embed_dim}, depth {depth}, {num_heads} heads."
    return register_backbone(name)(factory)


vit_micro = _make_preset("vit_micro", 64, 2, 2)  # for tests / CPU benchmarks
vit_tiny = _make_preset("vit_tiny", 192, 12, 3)
vit_small = _make_preset("vit_small", 384, 12, 6)
vit_base = _make_preset("vit_base", 768, 12, 12)
