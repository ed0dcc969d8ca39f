"""nanoGPT-style miniGPT / tinyGPT / smallGPT (Table 9)."""
import pytest
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models import (GPT, GPT2_VOCAB_SIZE, GPTConfig, activation_sites, gpt_num_params,
                          mini_gpt, small_gpt, tiny_gpt)




class Tagged(nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x)


@pytest.mark.parametrize("ctor, layers, embd, paper_millions", [
    (mini_gpt, 3, 192, 11), (tiny_gpt, 6, 384, 30), (small_gpt, 9, 576, 65)])
def test_table9_models_forward_sites_and_param_counts(ctor, layers, embd, paper_millions):
    torch.manual_seed(0)
    # a small vocabulary keeps construction cheap; the embedding count is vocab * n_embd
    m = ctor(vocab_size=64, block_size=8, activation=Tagged).eval()
    cfg = m.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (layers, layers, embd)
    assert m(torch.randint(0, 64, (1, 8))).shape == (1, 8, 64)
    assert activation_sites(m, nn.GELU) == []
    sites = activation_sites(m, Tagged)
    assert len(sites) == layers and len({id(s) for _, s in sites}) == layers
    n = m.get_num_params()
    # closed form: n_layer (12 d^2 + 13 d) + vocab d + 2 d (bias=True, tied head)
    assert n == layers * (12 * embd ** 2 + 13 * embd) + 64 * embd + 2 * embd
    assert n == gpt_num_params(cfg)
    assert m.get_num_params(non_embedding=False) == n + 8 * embd
    # with nanoGPT's padded GPT-2 vocabulary, as in the paper:
    # miniGPT "11M", tinyGPT "30M", smallGPT "65M"
    paper_cfg = GPTConfig(n_layer=layers, n_head=layers, n_embd=embd)
    assert paper_cfg.vocab_size == GPT2_VOCAB_SIZE == 50304
    n_paper = gpt_num_params(paper_cfg)
    assert n_paper == n + (50304 - 64) * embd
    assert abs(n_paper / 1e6 - paper_millions) / paper_millions < 0.02


def test_formula_without_bias_and_small_vocab():
    cfg = GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32, bias=False)
    m = GPT(cfg)
    assert m.get_num_params() == gpt_num_params(cfg) == 2 * 12 * 32 * 32 + 2 * 2 * 32 + 96 * 32 + 32


def test_mini_gpt_forward_shapes_sites_and_tying():
    torch.manual_seed(0)
    m = mini_gpt(vocab_size=96, block_size=32)
    logits = m(torch.randint(0, 96, (2, 20)))
    assert logits.shape == (2, 20, 96)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert len(activation_sites(m, nn.GELU)) == 3
    # init: residual projections have the scaled std 0.02/sqrt(2*n_layer)
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 3) ** 0.5) < 0.001
    assert torch.count_nonzero(m.transformer.h[0].mlp.c_fc.bias) == 0


def test_gpt_is_causal():
    torch.manual_seed(0)
    m = mini_gpt(vocab_size=50, block_size=16).eval()
    idx = torch.randint(0, 50, (1, 12))
    a = m(idx)
    idx2 = idx.clone()
    idx2[0, 7] = (idx2[0, 7] + 1) % 50
    b = m(idx2)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gpt_bad_input_and_config():
    m = mini_gpt(vocab_size=10, block_size=4)
    with pytest.raises(GrafsError, match="block_size"):
        m(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(GrafsError):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(GrafsError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(GrafsError):
        GPTConfig(vocab_size=0)
    with pytest.raises(GrafsError):
        GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=5, block_size=4), n_layer=2)
