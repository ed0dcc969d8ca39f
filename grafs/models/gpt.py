"""nanoGPT-style decoder-only transformer with a pluggable MLP activation (default GELU).

Follows Karpathy's nanoGPT ``model.py`` (the GRAFS paper's GPT experiments): token and
learned positional embeddings, dropout, ``n_layer`` pre-LN blocks
``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`` with causal multi-head attention
(fused qkv projection ``c_attn``) and MLP ``c_fc (n_embd → 4·n_embd) → activation →
c_proj → dropout``, final ``ln_f`` and an ``lm_head`` whose weight is tied to the token
embedding. Init: N(0, 0.02) for linear/embedding weights, zero biases, and
N(0, 0.02/sqrt(2·n_layer)) for the residual projections ``c_proj``.

One activation site per block (``n_layer`` in all).

Parameter counts (nanoGPT's ``get_num_params``: the positional embedding is excluded,
the tied head counted once), with the GPT-2 vocabulary padded to 50304 as in nanoGPT:
``n_layer·(12·n_embd² + 13·n_embd) + vocab·n_embd + 2·n_embd`` (bias=True), i.e.
miniGPT 10.99M, tinyGPT 29.96M, smallGPT 64.88M — the paper's "11M", "30M", "65M".
With a small character vocabulary the embedding share is negligible (see
:func:`gpt_num_params`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from grafs.errors import GrafsError
from grafs.models.common import ActivationFactory, check_activation_factory, make_activation

__all__ = ["GPTConfig", "GPT", "mini_gpt", "tiny_gpt", "small_gpt", "gpt_num_params",
           "GPT2_VOCAB_SIZE"]

#: GPT-2's 50257 BPE tokens padded up to a multiple of 64, as nanoGPT does.
GPT2_VOCAB_SIZE = 50304


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GrafsError(f"GPTConfig.{name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise GrafsError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise GrafsError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")


def gpt_num_params(config: GPTConfig, non_embedding: bool = True) -> int:
    """Closed-form parameter count of :class:`GPT` (matches ``GPT.get_num_params``)."""
    d, b = config.n_embd, int(config.bias)
    ln = d + d * b                                    # LayerNorm weight (+ bias)
    per_layer = (2 * ln                               # ln_1, ln_2
                 + 3 * d * d + 3 * d * b              # attn c_attn
                 + d * d + d * b                      # attn c_proj
                 + 4 * d * d + 4 * d * b              # mlp c_fc
                 + 4 * d * d + d * b)                 # mlp c_proj
    total = config.n_layer * per_layer + config.vocab_size * d + ln  # + tied wte, ln_f
    if not non_embedding:
        total += config.block_size * d
    return total


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, activation: ActivationFactory):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = make_activation(activation)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, activation: ActivationFactory):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT decoder. ``forward(idx)`` maps token ids (B, T) to logits (B, T, vocab)."""

    def __init__(self, config: GPTConfig | None = None,
                 activation: ActivationFactory = nn.GELU, **config_kwargs):
        super().__init__()
        if config is None:
            config = GPTConfig(**config_kwargs)
        elif config_kwargs:
            raise GrafsError("pass either a GPTConfig or keyword arguments, not both")
        if not isinstance(config, GPTConfig):
            raise GrafsError(f"config must be a GPTConfig, got {type(config).__name__}")
        activation = check_activation_factory(activation, nn.GELU)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, activation) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters (tied head once); positional embeddings excluded by default (nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise GrafsError(f"GPT expects token ids of shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise GrafsError(f"sequence length {T} exceeds block_size "
                             f"{self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _make(n_layer: int, n_head: int, n_embd: int, vocab_size: int, block_size: int,
          dropout: float, bias: bool, activation: ActivationFactory) -> GPT:
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer,
                         n_head=n_head, n_embd=n_embd, dropout=dropout, bias=bias),
               activation=activation)


def mini_gpt(vocab_size: int = GPT2_VOCAB_SIZE, block_size: int = 1024,
             activation: ActivationFactory = nn.GELU, *, dropout: float = 0.0,
             bias: bool = True) -> GPT:
    """miniGPT of the paper (Table 9): 3 layers, 3 heads, n_embd 192 (~11M with GPT-2 vocab)."""
    return _make(3, 3, 192, vocab_size, block_size, dropout, bias, activation)


def tiny_gpt(vocab_size: int = GPT2_VOCAB_SIZE, block_size: int = 1024,
             activation: ActivationFactory = nn.GELU, *, dropout: float = 0.0,
             bias: bool = True) -> GPT:
    """tinyGPT of the paper (Table 9): 6 layers, 6 heads, n_embd 384 (~30M with GPT-2 vocab)."""
    return _make(6, 6, 384, vocab_size, block_size, dropout, bias, activation)


def small_gpt(vocab_size: int = GPT2_VOCAB_SIZE, block_size: int = 1024,
              activation: ActivationFactory = nn.GELU, *, dropout: float = 0.0,
              bias: bool = True) -> GPT:
    """smallGPT of the paper (Table 9): 9 layers, 9 heads, n_embd 576 (~65M with GPT-2 vocab)."""
    return _make(9, 9, 576, vocab_size, block_size, dropout, bias, activation)
