"""ViT-tiny / ViT-small of the paper (Table 8)."""
import math

import pytest
import torch
from torch import nn

from grafs.errors import GrafsError
from grafs.models import ViT, activation_sites, count_parameters, vit_small, vit_tiny
from grafs.models.vit import Attention




class Tagged(nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x)


def _vit_param_count(dim, depth, heads, mlp, dim_head, patch, channels, n_patches, classes):
    inner = heads * dim_head
    per_layer = (2 * dim                       # pre-norm of attention
                 + dim * 3 * inner             # to_qkv (no bias)
                 + inner * dim + dim           # to_out
                 + 2 * dim                     # pre-norm of the feed-forward
                 + dim * mlp + mlp + mlp * dim + dim)
    return (patch * patch * channels * dim + dim   # patch embedding
            + (n_patches + 1) * dim + dim          # positions + cls token
            + depth * per_layer
            + 2 * dim + dim * classes + classes)   # head: LayerNorm + Linear


def test_vit_tiny_table8_shape_sites_and_params():
    torch.manual_seed(0)
    m = vit_tiny()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    sites = activation_sites(m, nn.GELU)
    assert len(sites) == 4                           # one per feed-forward, depth 4
    # 512 embed with 6 heads: q/k/v have inner_dim 6*64 = 384, projected back to 512
    attn = m.layers[0][0].fn
    assert attn.to_qkv.weight.shape == (3 * 384, 512)
    assert attn.to_out[0].weight.shape == (512, 384)
    assert m.layers[0][1].fn.net[0].weight.shape == (256, 512)      # mlp_dim 256
    assert count_parameters(m) == _vit_param_count(512, 4, 6, 256, 64, 4, 3, 64, 10)


def test_vit_small_table8_one_forward():
    torch.manual_seed(0)
    m = vit_small(num_classes=100).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert len(activation_sites(m, nn.GELU)) == 6
    assert m.layers[0][0].fn.to_qkv.weight.shape == (3 * 512, 512)
    assert m.layers[0][1].fn.net[0].weight.shape == (512, 512)
    assert count_parameters(m) == _vit_param_count(512, 6, 8, 512, 64, 4, 3, 64, 100)


def test_attention_matches_manual_softmax_reference():
    torch.manual_seed(0)
    att = Attention(dim=20, heads=3, dim_head=8).eval()
    x = torch.randn(2, 5, 20)
    q, k, v = att.to_qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(2, 5, 3, 8).permute(0, 2, 1, 3)
    q, k, v = map(split, (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    ref = att.to_out((w @ v).permute(0, 2, 1, 3).reshape(2, 5, 24))
    torch.testing.assert_close(att(x), ref, rtol=1e-5, atol=1e-5)


def test_locality_attention_masks_the_diagonal():
    torch.manual_seed(0)
    att = Attention(dim=16, heads=2, dim_head=8, locality=True).eval()
    x = torch.randn(1, 4, 16)
    # with the value of token 0 changed, token 0's own output must not change
    # (it cannot attend to itself), only the others may
    base = att(x)
    x2 = x.clone()
    x2[0, 0] += 5.0
    out2 = att(x2)
    q, k, v = att.to_qkv(x2).chunk(3, dim=-1)
    # token 0's query changes too, so compare against a manual masked reference instead
    split = lambda t: t.reshape(1, 4, 2, 8).permute(0, 2, 1, 3)
    q, k, v = map(split, (q, k, v))
    dots = q @ k.transpose(-1, -2) * att.temperature.exp()
    dots = dots.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf"))
    ref = att.to_out((dots.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(1, 4, 16))
    torch.testing.assert_close(out2, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, out2)


def test_small_dataset_variant_and_custom_factory():
    torch.manual_seed(0)
    m = vit_tiny(activation=Tagged, small_dataset=True, img_size=16, in_channels=1,
                 num_classes=3)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    assert activation_sites(m, nn.GELU) == []
    assert len(activation_sites(m, Tagged)) == 4


def test_dropout_defaults_and_eval_determinism():
    m = vit_tiny()
    assert m.dropout.p == 0.1
    m.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x))


def test_vit_bad_arguments():
    with pytest.raises(GrafsError, match="divisible"):
        ViT(image_size=30, patch_size=4)
    with pytest.raises(GrafsError, match="pool"):
        ViT(pool="max")
    m = ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=8, dim_head=4)
    with pytest.raises(GrafsError):
        m(torch.randn(1, 3, 16, 16))
