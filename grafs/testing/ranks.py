"""Start a few processes as the ranks of a torch.distributed job on this machine (tests).

``start_ranks(worker, 2, *args)`` runs ``worker(rank, port, *args)`` in two processes, forked
where the platform allows it (a spawned process spends longer importing torch and grafs than
a tiny job takes), and returns when both have ended; a rank that raises raises here. The
worker sets torchrun's variables itself (MASTER_ADDR=127.0.0.1, MASTER_PORT=port, RANK, ...).
"""
from __future__ import annotations

import multiprocessing
import socket
from typing import Callable

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(worker: Callable, nprocs: int, *args) -> None:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    torch.multiprocessing.start_processes(worker, args=(free_port(), *args), nprocs=nprocs,
                                          join=True, start_method=method)
