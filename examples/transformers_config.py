"""Use a found activation in a Hugging Face transformers model, through its config.

    pip install "grafs[hf]"
    python examples/transformers_config.py                     # a formula from the GRAFS paper
    python examples/transformers_config.py --result runs/gpt   # a result saved by a search

grafs.register("grafs_found", formula) adds the name to transformers' ACT2FN (whether
transformers is imported before or after), so config.hidden_act = "grafs_found" builds the
formula in every MLP. Its learnable {param}s, if any, are weights of the model: save_pretrained
writes them and from_pretrained reads them back (register the name first).
"""
from __future__ import annotations

import argparse
import tempfile

import torch

import grafs

PAPER_GPT = "(0.4689 GELU(x) + 0.5311) ReLU(x)"   # F_GPT^2 of the GRAFS paper


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formula", default=PAPER_GPT)
    p.add_argument("--result", help="a directory written by grafs.SearchResult.save")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--backend", default="inductor", help="grafs backend: inductor, eager, triton")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.layers, args.hidden, args.steps, args.backend = 1, 16, 3, "eager"
    formula = grafs.SearchResult.load(args.result).formula if args.result else args.formula

    grafs.register("grafs_found", formula, backend=args.backend)
    from transformers import LlamaConfig, LlamaForCausalLM

    # a character-level language model of this file's own text
    text = open(__file__, encoding="utf-8").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=args.hidden,
                         intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, hidden_act="grafs_found")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    print(f"MLP activation: {model.model.layers[0].mlp.act_fn}")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        start = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[s:s + 64] for s in start.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)                      # config.json says hidden_act="grafs_found"
        again = LlamaForCausalLM.from_pretrained(d)   # works while the name is registered
        assert again.config.hidden_act == "grafs_found"
    grafs.unregister("grafs_found")
    return loss.item()


if __name__ == "__main__":
    main()
