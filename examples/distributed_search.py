"""Run a search on several GPUs: one process per GPU under torchrun, data-parallel.

    torchrun --nproc-per-node 4 examples/distributed_search.py --out runs/cnn4    # 4 GPUs
    torchrun --nproc-per-node 2 examples/distributed_search.py --device cpu       # 2 CPU processes

grafs.search(..., distributed=True) sets up torch.distributed from torchrun's environment (NCCL
on GPUs, gloo on CPUs) and puts rank r on cuda:r. Each process reads its shard of the data and
batch_size is per process (the global batch is N times larger); gradients and the α/γ updates
are averaged, so every rank ends with the same formula. Rank 0 saves the result. The model and
data are those of search_own_model.py.
"""
from __future__ import annotations

import argparse

import torch

import grafs
from search_own_model import SmallCNN, make_data   # this script's folder is on sys.path


def main(argv: list[str] | None = None) -> grafs.SearchResult:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16384)
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--width", type=int, default=64, help="channels of the first block")
    p.add_argument("--epochs", type=int, default=None, help="default: sized from the data")
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="rank 0 saves the result here")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (used by the tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.samples, args.size, args.width, args.epochs, args.batch_size = 96, 8, 4, 2, 16

    x, y = make_data(args.samples, args.size)          # the same data on every rank
    torch.manual_seed(0)
    model = SmallCNN(width=args.width)                 # rank 0's weights are broadcast
    # (--tiny runs below the budget α needs, and skips the verdict: seconds, for the tests)
    tiny = dict(budget="as_given", verdict_seeds=0) if args.tiny else {}
    result = grafs.search(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                          device=args.device, distributed=True, progress=False, **tiny)
    if torch.distributed.get_rank() == 0:
        print(f"{torch.distributed.get_world_size()} processes found: {result.display}")
        if args.out:
            print(f"saved to {result.save(args.out)}")
    torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
