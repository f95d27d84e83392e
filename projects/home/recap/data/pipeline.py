"""An ordered, bounded, thread-parallel map: the loader's only concurrency primitive.

Parquet decoding (pyarrow) and large numpy/torch copies release the GIL, so threads give real
parallelism here without the cost of moving batches between processes, and the consumer sees
results in input order, which keeps the loader's position exact.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


def ordered_map(
    function: Callable[[InputT], OutputT],
    items: Iterable[InputT],
    *,
    threads: int,
    lookahead: int,
    name: str,
) -> Iterator[OutputT]:
    """``map(function, items)`` computed by ``threads`` threads, at most ``lookahead`` ahead.

    ``items`` is advanced in the calling thread; only ``function`` runs in the pool. With
    ``threads == 0`` everything runs inline. Closing the iterator cancels pending work.

    Args:
        function: Applied to every item.
        items: The inputs, consumed lazily.
        threads: Pool size (0: no pool).
        lookahead: Most results computed but not yet consumed (bounds memory).
        name: Thread name prefix, for debugging and profiles.
    """
    if threads <= 0:
        for item in items:
            yield function(item)
        return
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    pending: collections.deque[Future[OutputT]] = collections.deque()
    try:
        for item in items:
            pending.append(executor.submit(function, item))
            if len(pending) >= max(lookahead, 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
