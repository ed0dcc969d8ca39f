"""Benchmarks of grafs, run as modules from the repository root: ``python -m bench.formulas``,
``python -m bench.cell``, ``python -m bench.families``, ``python -m bench.formula_overhead``,
``python -m bench.search_step``, ``python -m bench.triton_bench``. Each prints ratios against the
alternative measured in the same run (native activations, eager PyTorch, plain torch.compile);
the timing helpers they share are :mod:`bench.timing`."""
