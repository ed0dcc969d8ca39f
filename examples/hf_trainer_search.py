"""Search an activation function inside a Hugging Face Trainer, then train with it by name.

    pip install "grafs[hf]"
    python examples/hf_trainer_search.py            # a small BERT classifier, a few minutes
    python examples/hf_trainer_search.py --tiny     # seconds (used by the tests)

GrafsTrainerCallback swaps the modules that config.hidden_act builds (every GELUActivation)
for the relaxed GRAFS cell, takes arch steps on eval batches while trainer.train() trains the
weights, and at the end registers the found formula by name: config.hidden_act = that name
then builds it in every layer of a fresh model.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

import grafs
from grafs.integrations.hf_trainer import GrafsTrainerCallback


class Tokens(torch.utils.data.Dataset):
    """Random token sequences labelled by whether token 3 occurs in them: dict items."""

    def __init__(self, n: int, seed: int, length: int = 16, vocab: int = 64):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, vocab, (n, length), generator=g)
        self.ids[torch.rand(n, generator=g) < 0.5, length // 2] = 3
        self.labels = (self.ids == 3).any(-1).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


def main(argv: list[str] | None = None) -> grafs.SearchResult:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    args = p.parse_args(argv)
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    def config():
        return BertConfig(vocab_size=64, hidden_size=args.hidden, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=2 * args.hidden,
                          max_position_embeddings=32)
    options = dict(search_epochs=10, backend="eager")
    if args.tiny:   # far below the budget α needs: only for tests
        args.steps, args.hidden = 8, 16
        options.update(search_epochs=4, space=grafs.SearchSpace(
            "B(U(x), U(x))", unary=["relu", "gelu", "tanh"], binary=["add", "max"]))
    torch.manual_seed(0)
    model = BertForSequenceClassification(config())
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, max_steps=args.steps, learning_rate=1e-3,
                                  per_device_train_batch_size=16, per_device_eval_batch_size=16,
                                  report_to="none", save_strategy="no", use_cpu=not torch.cuda.is_available(),
                                  disable_tqdm=args.tiny, seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=Tokens(1024, 0),
                          eval_dataset=Tokens(256, 1))
        search = GrafsTrainerCallback("grafs_hf_found", **options).attach(trainer)
        trainer.train()
    print(f"found: {search.result.formula}  (registered as {search.name!r})")

    # the final model: the found formula by name, in every layer
    final = BertForSequenceClassification(search.use_in(config()))
    print(f"its MLP activation: {final.bert.encoder.layer[0].intermediate.intermediate_act_fn}")
    batch = {k: torch.stack([Tokens(8, 2)[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
    final(**batch).loss.backward()
    grafs.unregister("grafs_hf_found")
    return search.result


if __name__ == "__main__":
    main()
