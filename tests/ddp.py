"""Processes joined in one gloo process group on loopback, for the DistributedDataParallel tests
(fixture ``ddp`` of tests/conftest.py).

Spawned, not forked: a forked child of a process that already ran OpenMP regions (the CPU
kernels, torch) can hang in its first parallel region.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, worker, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.save(worker(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
        # Every rank done before any tears down: a rank closing its gloo connections while
        # another still uses them aborts the other (seen ~1 run in 5 without this).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(worker, out_dir, world=2) -> list:
    """``worker(rank, world)`` in ``world`` processes of one process group; what each returned,
    by rank. ``worker`` is a module-level function (the processes import it by name)."""
    mp.spawn(_rank, args=(world, _free_port(), worker, str(out_dir)), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
