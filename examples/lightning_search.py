"""Search an activation function inside a Lightning Trainer.fit (grafs.lightning.GrafsSearch).

    pip install "grafs[lightning]"
    python examples/lightning_search.py                     # an MLP on synthetic data, a minute
    python examples/lightning_search.py --precision bf16-mixed --accumulate 2
    python examples/lightning_search.py --tiny              # seconds (used by the tests)

Your LightningModule and data stay as they are; the callback swaps the module's activations
for the relaxed GRAFS cell at setup, takes an arch step on a validation batch before every
training batch (its loss: your training_step), keeps α/γ out of your optimizer's way and
shrinks the cell at epoch starts. At the end of fit, callback.result is a grafs.SearchResult.
"""
from __future__ import annotations

import lightning as L
import torch
from torch import nn

import grafs
from grafs.lightning import GrafsSearch
from own_loop import loaders, make_data, make_model, parser, tiny   # examples/own_loop.py: the same data


class Classifier(L.LightningModule):
    """A user's module: a network, its loss in training_step (logged), Adam over all of it."""

    def __init__(self, net: nn.Module, lr: float = 1e-3):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> grafs.SearchResult:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--precision", default="32-true", help="e.g. bf16-mixed")
    p.add_argument("--accumulate", type=int, default=1, help="accumulate_grad_batches")
    args = p.parse_args(argv)
    options = tiny(args)
    train, val = loaders(*make_data(args.samples, seed=args.seed), batch_size=64, seed=args.seed)
    L.seed_everything(args.seed, verbose=False)
    net = make_model()

    search = GrafsSearch(**options)         # keywords of grafs.Searcher: arch_lr, space, ...
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[search], precision=args.precision,
                        accumulate_grad_batches=args.accumulate, accelerator="auto",
                        devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=not args.tiny, enable_model_summary=False)
    trainer.fit(Classifier(net), train, val)
    print(f"use: {search.result.formula}")
    return search.result


if __name__ == "__main__":
    main()
