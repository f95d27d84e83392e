"""Run a function on N local ranks over Gloo, as torchrun would, and collect the results."""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

# Ranks start from a fork server that imported these once per test session: a spawned child
# would spend ~7 s of CPU importing torch and torchrec again for every multi-process test.
_PRELOADED = [
    "torch",
    "torchrec",
    "fbgemm_gpu",
    "projects.home.recap.build",
    "projects.home.recap.train",
    "tests.projects.home.recap.distributed_jobs",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_method() -> str:
    # Importing fbgemm_gpu asks CUDA for its devices, after which a forked child cannot use
    # CUDA: with a GPU the ranks are spawned.
    if torch.cuda.is_available():
        return "spawn"
    mp.set_forkserver_preload(_PRELOADED)
    return "forkserver"


def _worker(rank: int, world_size: int, port: int, function: Callable, args: tuple, out: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    # The fork server imported torch before the variable above was set.
    torch.set_num_threads(1)
    try:
        result = function(*args)
    except BaseException:
        Path(out, f"error_{rank}.txt").write_text(traceback.format_exc())
        raise
    with open(Path(out, f"result_{rank}.pkl"), "wb") as file:
        pickle.dump(result, file)


def run_on_ranks(
    function: Callable[..., Any], world_size: int, *args: Any, workdir: Path
) -> list[Any]:
    """``function(*args)`` on ``world_size`` processes joined by torchrun-style environment
    variables; returns each rank's result. ``function`` must be importable (module level)."""
    out = Path(workdir) / f"ranks_{free_port()}"
    out.mkdir(parents=True)
    try:
        mp.start_processes(
            _worker,
            args=(world_size, free_port(), function, args, str(out)),
            nprocs=world_size,
            start_method=_start_method(),
        )
    except Exception as error:
        details = "\n".join(p.read_text() for p in sorted(out.glob("error_*.txt")))
        raise AssertionError(f"a rank failed:\n{details}") from error
    results = []
    for rank in range(world_size):
        with open(out / f"result_{rank}.pkl", "rb") as file:
            results.append(pickle.load(file))
    return results
