"""Use a found activation in a timm model, by name.

    pip install "grafs[timm]"
    python examples/timm_model.py                        # a formula from the GRAFS paper
    python examples/timm_model.py --result runs/cnn      # what search_own_model.py --out found

grafs.register("grafs_found", formula) makes the name known to timm's get_act_layer (whether
timm is imported before or after), so act_layer="grafs_found" works for every timm model that
takes act_layer. Each layer gets its own module; learnable {param}s are saved in the state dict
as <layer>.params.p_<name>, so checkpoints load into a model built with the same registration.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import grafs

PAPER_RESNET = "0.4756 ReLU(x) + 0.5244 GELU(x)"   # F_RN^4 of the GRAFS paper


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formula", default=PAPER_RESNET)
    p.add_argument("--result", help="a directory written by grafs.SearchResult.save")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=64, help="image height and width")
    p.add_argument("--backend", default="inductor", help="grafs backend: inductor, eager, triton")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.size, args.backend = 2, 32, "eager"
    formula = grafs.SearchResult.load(args.result).formula if args.result else args.formula

    import timm

    act = grafs.register("grafs_found", formula, backend=args.backend)
    model = timm.create_model(args.model, pretrained=False, num_classes=10, act_layer="grafs_found")
    n = sum(isinstance(m, act) for m in model.modules())
    print(f"{args.model}: {n} activation layers computing {formula}")

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, args.size, args.size), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")

    # a checkpoint holds the activations' parameters (if any) with the other weights
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        torch.save(model.state_dict(), path)
        again = timm.create_model(args.model, num_classes=10, act_layer="grafs_found")
        again.load_state_dict(torch.load(path, weights_only=True))
    grafs.unregister("grafs_found")
    return loss.item()


if __name__ == "__main__":
    main()
