"""Lock-step batches: every rank runs the same number of forwards over a pass of its share.

Sharded tables make every forward a collective, so a rank whose share of a pass ends first must
keep taking part until every rank is done. Evaluation and inference both read this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist

from projects.home.recap.inputs import RecapBatch
from tml.core.errors import UserInputError


def agreed_steps(batches: int, num_steps: int, device: torch.device) -> int:
    """The number of forwards every rank runs: the largest share's batches (all of every
    share's rows), capped at ``num_steps`` when it is not negative. One collective."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        count = torch.tensor([batches], dtype=torch.int64, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        batches = int(count.item())
    return batches if num_steps < 0 else min(batches, num_steps)


def lockstep_batches(
    dataset: Iterable[RecapBatch], steps: int, device: torch.device
) -> Iterator[tuple[RecapBatch, bool]]:
    """Exactly ``steps`` batches on ``device``, each flagged whether it counts.

    Sharded tables make every forward a collective, so every rank runs the same number of them
    (see :func:`agreed_steps`); a rank whose share ends first repeats its last batch with
    ``counted=False``.
    """
    iterator = iter(dataset)
    last: RecapBatch | None = None
    for _ in range(steps):
        batch = next(iterator, None)
        if batch is not None:
            # Asynchronous where the loader pinned the batch (GPU jobs); a no-op on the CPU.
            last = batch.to(device, non_blocking=True)
            yield last, True
        elif last is not None:
            yield last, False
        else:
            raise UserInputError(
                "a rank got no batch at all from its share of the data while others did; "
                "write more files or row groups than ranks"
            )
