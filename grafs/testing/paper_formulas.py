"""The 15 formulas of seeds/001 Eq. 2, 3 and 4, typed as printed, with hand-written torch references."""
import torch
import torch.nn.functional as F

lrelu, gelu, silu, relu = F.leaky_relu, F.gelu, F.silu, torch.relu

PAPER_FORMULAS: dict[str, tuple[str, object]] = {
    "F_RN^1": ("0.4739 LeakyReLU(LeakyReLU(x)) + 0.5261 GELU(x)",
               lambda x: 0.4739 * lrelu(lrelu(x)) + 0.5261 * gelu(x)),
    "F_RN^2": ("0.5163 LeakyReLU(0.4945 ReLU(x) + 0.5055 GELU(x)) + 0.4837 GELU(x)",
               lambda x: 0.5163 * lrelu(0.4945 * relu(x) + 0.5055 * gelu(x)) + 0.4837 * gelu(x)),
    "F_RN^3": ("0.4865 GELU(0.4873 ReLU(x) + 0.5127 GELU(x)) + 0.5135 GELU(x)",
               lambda x: 0.4865 * gelu(0.4873 * relu(x) + 0.5127 * gelu(x)) + 0.5135 * gelu(x)),
    "F_RN^4": ("0.4756 ReLU(x) + 0.5244 GELU(x)",
               lambda x: 0.4756 * relu(x) + 0.5244 * gelu(x)),
    "F_RN^5": ("0.4591 LeakyReLU(0.5267 LeakyReLU(x) + 0.4733 GELU(x)) + 0.5409 GELU(x)",
               lambda x: 0.4591 * lrelu(0.5267 * lrelu(x) + 0.4733 * gelu(x)) + 0.5409 * gelu(x)),
    "F_ViT^1": ("0.6601 GELU(SiLU(x) GELU(x)) + 0.3399 x^2",
                lambda x: 0.6601 * gelu(silu(x) * gelu(x)) + 0.3399 * x ** 2),
    "F_ViT^2": ("0.7322 SiLU(0.2822 x^2 + 0.7178 GELU(x)) + 0.2678 x^2",
                lambda x: 0.7322 * silu(0.2822 * x ** 2 + 0.7178 * gelu(x)) + 0.2678 * x ** 2),
    "F_ViT^3": ("0.7319 GELU(SiLU(x) GELU(x)) + 0.2681 x^2",
                lambda x: 0.7319 * gelu(silu(x) * gelu(x)) + 0.2681 * x ** 2),
    "F_ViT^4": ("0.6778 GELU(SiLU(x) GELU(x)) + 0.3222 x^2",
                lambda x: 0.6778 * gelu(silu(x) * gelu(x)) + 0.3222 * x ** 2),
    "F_ViT^5": ("0.3139 x^2 + 0.5431 GELU(x)",
                lambda x: 0.3139 * x ** 2 + 0.5431 * gelu(x)),
    "F_GPT^1": ("0.4953 LeakyReLU(x) GELU(x) + 0.5047 ReLU(x)",
                lambda x: 0.4953 * lrelu(x) * gelu(x) + 0.5047 * relu(x)),
    "F_GPT^2": ("(0.4689 GELU(x) + 0.5311) ReLU(x)",
                lambda x: (0.4689 * gelu(x) + 0.5311) * relu(x)),
    "F_GPT^3": ("(0.4662 sinh(x) + 0.5338) GELU(x)",
                lambda x: (0.4662 * torch.sinh(x) + 0.5338) * gelu(x)),
    "F_GPT^4": ("0.4781 ReLU(x)^2 + 0.5219 ReLU(x)",
                lambda x: 0.4781 * relu(x) ** 2 + 0.5219 * relu(x)),
    "F_GPT^5": ("0.4828 ReLU(x)^2 + 0.5172 ReLU(x)",
                lambda x: 0.4828 * relu(x) ** 2 + 0.5172 * relu(x)),
}
