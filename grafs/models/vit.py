"""Vision Transformers for small images with a pluggable activation (default GELU).

The GRAFS paper's ViT-tiny / ViT-small (its Table 8) come from
kentaroy47/vision-transformers-cifar10, whose ViT is lucidrains' vit-pytorch ViT:

* patches of ``patch_size``² pixels are flattened ('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')
  and linearly embedded to ``dim``; a learnable cls token and learnable positional
  embeddings (``randn`` init) are added, then embedding dropout;
* ``depth`` pre-norm blocks ``x = attn(LN(x)) + x; x = ff(LN(x)) + x``;
* attention projects ``dim`` to ``inner_dim = heads * dim_head`` for each of q, k, v
  (``dim_head`` = 64 by default, scale ``dim_head ** -0.5``), and projects ``inner_dim``
  back to ``dim`` (+ dropout). ``dim`` therefore never has to be divisible by ``heads``:
  ViT-tiny has dim 512 with 6 heads, i.e. inner_dim 384 → 512; ViT-small has 8 heads,
  inner_dim 512;
* feed-forward ``Linear(dim, mlp_dim) → activation → Dropout → Linear(mlp_dim, dim) →
  Dropout`` (the only activation site: ``depth`` sites in all);
* cls pooling (or mean), then ``LayerNorm → Linear`` head.

The repo trains both with ``dropout = emb_dropout = 0.1``; that is the default here.
``small_dataset=True`` switches to the repo's ``vit_small.py`` variant (lucidrains'
"ViT for small datasets": shifted patch tokenization + locality self-attention with a
learnable temperature and a masked diagonal), which its ``--net vit_tiny/vit_small``
options use in some versions; the paper does not say which, so the plain ViT is the
default.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory, make_activation

__all__ = ["ViT", "vit_tiny", "vit_small", "FeedForward", "Attention"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise GrafsError(f"expected an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _patchify(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    b, c, hh, ww = x.shape
    h, w = hh // ph, ww // pw
    x = x.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, ph * pw * c)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0,
                 activation: ActivationFactory = nn.GELU):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention with ``inner_dim = heads * dim_head`` projected back to dim.

    ``locality=True`` is lucidrains' LSA: learnable temperature (init log dim_head^-0.5)
    and each token is masked from attending to itself.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
                 locality: bool = False):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.locality = locality
        if locality:
            self.temperature = nn.Parameter(torch.tensor(math.log(dim_head ** -0.5)))
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        project_out = locality or not (heads == 1 and dim_head == dim)
        self.to_out: nn.Module = (nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
                                  if project_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        if self.locality:
            dots = torch.matmul(q, k.transpose(-1, -2)) * self.temperature.exp()
            mask = torch.eye(n, device=x.device, dtype=torch.bool)
            dots = dots.masked_fill(mask, -torch.finfo(dots.dtype).max)
            out = torch.matmul(dots.softmax(dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class ShiftedPatchTokenizer(nn.Module):
    """lucidrains' SPT: concat the image with 4 one-pixel diagonal shifts, LN, Linear."""

    def __init__(self, dim: int, patch: tuple[int, int], channels: int):
        super().__init__()
        self.patch = patch
        patch_dim = patch[0] * patch[1] * 5 * channels
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifts = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))
        x = torch.cat([x] + [F.pad(x, s) for s in shifts], dim=1)
        return self.proj(self.norm(_patchify(x, *self.patch)))


class PatchEmbedding(nn.Module):
    def __init__(self, dim: int, patch: tuple[int, int], channels: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch[0] * patch[1] * channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_patchify(x, *self.patch))


class ViT(nn.Module):
    """lucidrains-style ViT; see the module docstring.

    Args:
        image_size, patch_size: int or (h, w); image sides must be multiples of the patch.
        num_classes, dim, depth, heads, mlp_dim, dim_head: architecture (Table 8 of the paper).
        channels: input channels. pool: 'cls' or 'mean'.
        dropout, emb_dropout: dropout in attention-out/FF and after the embedding.
        activation: zero-arg factory, called once per FF block (default ``nn.GELU``).
        small_dataset: use shifted patch tokens + locality self-attention.
    """

    def __init__(self, *, image_size: int | tuple[int, int] = 32,
                 patch_size: int | tuple[int, int] = 4, num_classes: int = 10,
                 dim: int = 512, depth: int = 6, heads: int = 8, mlp_dim: int = 512,
                 pool: str = "cls", channels: int = 3, dim_head: int = 64,
                 dropout: float = 0.1, emb_dropout: float = 0.1,
                 activation: ActivationFactory = nn.GELU, small_dataset: bool = False):
        super().__init__()
        activation = check_activation_factory(activation, nn.GELU)
        ih, iw = _pair(image_size)
        ph, pw = _pair(patch_size)
        for name, v in (("image_size", min(ih, iw)), ("patch_size", min(ph, pw)),
                        ("num_classes", num_classes), ("dim", dim), ("depth", depth),
                        ("heads", heads), ("mlp_dim", mlp_dim), ("channels", channels),
                        ("dim_head", dim_head)):
            if not isinstance(v, int) or v < 1:
                raise GrafsError(f"ViT {name} must be a positive int, got {v!r}")
        if ih % ph or iw % pw:
            raise GrafsError(f"ViT image_size {(ih, iw)} must be divisible by patch_size "
                             f"{(ph, pw)}")
        if pool not in ("cls", "mean"):
            raise GrafsError(f"ViT pool must be 'cls' or 'mean', got {pool!r}")
        self.image_size = (ih, iw)
        self.patch_size = (ph, pw)
        self.channels = channels
        self.pool = pool
        num_patches = (ih // ph) * (iw // pw)
        self.num_patches = num_patches

        self.to_patch_embedding: nn.Module = (
            ShiftedPatchTokenizer(dim, (ph, pw), channels) if small_dataset
            else PatchEmbedding(dim, (ph, pw), channels))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head, dropout, locality=small_dataset)),
                PreNorm(dim, FeedForward(dim, mlp_dim, dropout, activation)),
            ]) for _ in range(depth)])
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != self.channels:
            raise GrafsError(f"ViT expects input of shape (B, {self.channels}, H, W), got "
                             f"{tuple(img.shape)}")
        h, w = img.shape[-2:]
        ph, pw = self.patch_size
        if h % ph or w % pw or (h // ph) * (w // pw) > self.num_patches:
            raise GrafsError(f"ViT built for {self.image_size} images with patch "
                             f"{self.patch_size} got a {h}x{w} input")
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embedding[:, :n + 1]
        x = self.dropout(x)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def vit_tiny(num_classes: int = 10, img_size: int = 32, in_channels: int = 3,
             activation: ActivationFactory = nn.GELU, *, patch_size: int = 4,
             dropout: float = 0.1, emb_dropout: float = 0.1,
             small_dataset: bool = False) -> ViT:
    """ViT-tiny of the paper (Table 8): dim 512, depth 4, 6 heads (×64), mlp 256, patch 4."""
    return ViT(image_size=img_size, patch_size=patch_size, num_classes=num_classes, dim=512,
               depth=4, heads=6, mlp_dim=256, channels=in_channels, dim_head=64,
               dropout=dropout, emb_dropout=emb_dropout, activation=activation,
               small_dataset=small_dataset)


def vit_small(num_classes: int = 10, img_size: int = 32, in_channels: int = 3,
              activation: ActivationFactory = nn.GELU, *, patch_size: int = 4,
              dropout: float = 0.1, emb_dropout: float = 0.1,
              small_dataset: bool = False) -> ViT:
    """ViT-small of the paper (Table 8): dim 512, depth 6, 8 heads (×64), mlp 512, patch 4."""
    return ViT(image_size=img_size, patch_size=patch_size, num_classes=num_classes, dim=512,
               depth=6, heads=8, mlp_dim=512, channels=in_channels, dim_head=64,
               dropout=dropout, emb_dropout=emb_dropout, activation=activation,
               small_dataset=small_dataset)
