"""Text: character-level language modelling on the Python reference manual.

Corpus: ``pydoc_data.topics.topics``, the help texts of the language reference that ship
with CPython itself (no download). Topics are taken in sorted order and split into
paragraphs; repeated paragraphs (several topics embed others, e.g. "compound" contains
"if", "while", ...) are kept only at their first occurrence, so the test text is not a
copy of training text. The result (~373K characters on CPython 3.11) is truncated to
``max_chars`` (default 200 000). The exact text depends on the CPython version; the
task's ``info["corpus_sha256"]`` identifies it.

Vocabulary: a fixed 96 characters, "\\n" and printable ASCII 32..126. Typographic quotes,
dashes and the ellipsis are mapped to ASCII, tabs to 4 spaces, any other character to "?".

Split by position: the first 90 % of the characters are training text, the last 10 % test
text. Each part is cut into non-overlapping windows of ``block_size + 1`` characters
(stride ``block_size``): x = window[:-1], y = window[1:] (next-character targets), both
(N, block_size) int64.

Model: miniGPT of the paper (3 layers, 3 heads, n_embd 192, GELU; nanoGPT) with this
vocabulary and ``block_size`` 64 (1.35M parameters). Loss: mean cross-entropy over all
positions. Metric: ``loss_per_char`` (nats, lower is better, the paper's GPT metric);
``evaluate`` also reports next-character ``accuracy`` and ``bits_per_char``.
"""
from __future__ import annotations

import functools
import hashlib
import math
import sys
from typing import Any

import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models.gpt import mini_gpt
from grafs.tasks.base import Task, accuracy, apply_overrides, \
    cross_entropy
from grafs.searching.config import SearchConfig, TrainConfig

__all__ = ["VOCAB", "encode", "decode", "build_corpus", "make_sequences", "load_text",
           "make_text_task", "DATA_DEFAULTS"]

#: the fixed character vocabulary: newline + printable ASCII.
VOCAB = "\n" + "".join(chr(i) for i in range(32, 127))
_STOI = {ch: i for i, ch in enumerate(VOCAB)}
_UNK = _STOI["?"]
_NORMALISE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                            "\u2026": "...", "\u2014": "--", "\u2013": "-", "\t": "    ",
                            "\r": ""})

DATA_DEFAULTS: dict[str, Any] = {
    "block_size": 64,
    "max_chars": 200_000,
    "test_fraction": 0.1,
    "dropout": 0.0,
}


def encode(text: str) -> torch.Tensor:
    """Characters → int64 ids in ``VOCAB`` (after the ASCII normalisation)."""
    text = text.translate(_NORMALISE)
    return torch.tensor([_STOI.get(ch, _UNK) for ch in text], dtype=torch.long)


def decode(ids: torch.Tensor | list[int]) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    try:
        return "".join(VOCAB[i] for i in ids)
    except (IndexError, TypeError) as exc:
        raise GrafsError(f"token ids must be ints in [0, {len(VOCAB)}), got {exc}") from None


@functools.lru_cache(maxsize=1)
def _full_corpus() -> str:
    from pydoc_data.topics import topics  # part of the CPython standard library
    seen: set[str] = set()
    parts: list[str] = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            norm = para.strip()
            if not norm or norm in seen:
                continue
            seen.add(norm)
            parts.append(para.strip("\n"))
    return "\n\n".join(parts).translate(_NORMALISE)


def build_corpus(max_chars: int | None = 200_000) -> str:
    """The deduplicated, ASCII-normalised reference-manual text, truncated to max_chars."""
    text = _full_corpus()
    return text if max_chars is None else text[:max_chars]


def make_sequences(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (x, y) windows: x = ids[s:s+T], y = ids[s+1:s+T+1], s = 0, T, 2T, …"""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise GrafsError(f"text of {len(ids)} characters is too short for block_size "
                         f"{block_size}")
    x = ids[:n * block_size].reshape(n, block_size).clone()
    y = ids[1:n * block_size + 1].reshape(n, block_size).clone()
    return x, y


@functools.lru_cache(maxsize=8)
def _load(block_size: int, max_chars: int, test_fraction: float):
    text = build_corpus(max_chars)
    ids = encode(text)
    n_test = int(round(test_fraction * len(ids)))
    train_ids, test_ids = ids[:len(ids) - n_test], ids[len(ids) - n_test:]
    xtr, ytr = make_sequences(train_ids, block_size)
    xte, yte = make_sequences(test_ids, block_size)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return xtr, ytr, xte, yte, len(text), digest


def load_text(block_size: int = 64, max_chars: int = 200_000, test_fraction: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``, each (N, block_size) int64, fresh tensors."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise GrafsError(f"text block_size must be an int >= 2, got {block_size!r}")
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1000:
        raise GrafsError(f"text max_chars must be an int >= 1000, got {max_chars!r}")
    if not isinstance(test_fraction, (int, float)) or not 0.01 <= test_fraction <= 0.5:
        raise GrafsError(f"text test_fraction must be in [0.01, 0.5], got {test_fraction!r}")
    xtr, ytr, xte, yte, _, _ = _load(block_size, max_chars, float(test_fraction))
    return xtr.clone(), ytr.clone(), xte.clone(), yte.clone()


def bits_per_char(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, target) / math.log(2.0)


# arch_lr 0.1 with drops from epoch 4: 30 arch steps before the first drop, and α's entropy
# there falls to 0.94-0.97 (with 3e-2 and drops from 2 it stayed at 0.991-0.997, near-random
# drops), at +13 % search time; the found formulas as good (3 of 5 searches beat every
# baseline, against 2 of 3 before; docs/results-text.md). Op normalisation as on every task
SEARCH_DEFAULTS = SearchConfig(
    epochs=10, batch_size=16, optimizer="adamw", lr=1e-3, betas=(0.9, 0.95),
    weight_decay=0.1, schedule="cosine", warmup_steps=10, min_lr=1e-4, grad_clip=1.0,
    max_steps_per_epoch=10, normalize=True,
    arch_lr=1e-1, arch_weight_decay=1e-3, warmstart_epochs=1, shrink_start_epoch=4,
    train_fraction=0.75)

EVAL_DEFAULTS = TrainConfig(
    epochs=5, batch_size=32, optimizer="adamw", lr=1e-3, betas=(0.9, 0.95),
    weight_decay=0.1, schedule="cosine", warmup_steps=20, min_lr=1e-4, grad_clip=1.0)


def _build_model(activation, *, block_size: int, dropout: float) -> nn.Module:
    return mini_gpt(vocab_size=len(VOCAB), block_size=block_size, activation=activation,
                    dropout=dropout)


def make_text_task(seed: int = 0, **overrides: Any) -> Task:
    search, evaluation, opts = apply_overrides("text", SEARCH_DEFAULTS, EVAL_DEFAULTS,
                                               DATA_DEFAULTS, overrides)
    block_size, dropout = opts["block_size"], opts["dropout"]
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise GrafsError(f"task 'text' option dropout must be in [0, 1), got {dropout!r}")
    train_x, train_y, test_x, test_y = load_text(block_size, opts["max_chars"],
                                                 opts["test_fraction"])
    _, _, _, _, n_chars, digest = _load(block_size, opts["max_chars"],
                                        float(opts["test_fraction"]))

    return Task(
        name="text",
        description=(f"character-level LM on the CPython reference manual "
                     f"(pydoc_data.topics, {n_chars} chars, vocab {len(VOCAB)}), "
                     f"miniGPT (3 layers, 3 heads, 192 embd, block {block_size}), GELU"),
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        model_builder=functools.partial(_build_model, block_size=block_size,
                                        dropout=float(dropout)),
        default_activation=nn.GELU, activation_types=(nn.GELU,),
        search_config=search, eval_config=evaluation,
        loss_fn=cross_entropy, metric=cross_entropy, metric_name="loss_per_char",
        higher_is_better=False,
        extra_metrics={"accuracy": accuracy, "bits_per_char": bits_per_char},
        num_classes=len(VOCAB), seed=seed,
        info={"source": "pydoc_data.topics", "vocab": VOCAB, "num_chars": n_chars,
              "corpus_sha256": digest, "python": sys.version.split()[0], **opts},
    )
