"""Reading chosen byte ranges of a remote object at once, as one file-like object.

A columnar reader needs a few column chunks of a file, scattered over it. Reading them through
a remote file one ``seek``/``read`` at a time costs one round trip each, made one after the
other, plus a metadata request (the object's size) every time the file is opened. Here the
ranges are first merged where the gap between them is small, then fetched concurrently by the
filesystem (``cat_ranges``: s3fs and gcsfs issue the requests together on their event loop),
and served from memory by :class:`FetchedRanges`, which pyarrow reads like any file.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Sequence

from tml.storage.filesystems import filesystem, storage_errors

# Gaps up to this size between two wanted ranges are read rather than skipped. An object
# store's time to first byte is some 10-50 ms and one connection moves some 50-100 MB/s, so
# skipping less than about a MiB costs more as a separate request than reading it does (the
# same trade as pyarrow's ``CacheOptions.from_network_metrics``).
DEFAULT_MAX_GAP = 1 << 20
# ... as long as the gaps read stay this small a part of the wanted bytes they join, so that a
# read still fetches essentially only what it needs, whatever the file's size.
DEFAULT_MAX_OVERREAD = 1 / 8
# No merged range grows past this (pyarrow's own pre_buffer limit), so one request's answer
# stays a bounded allocation however the wanted ranges lie.
DEFAULT_MAX_RANGE = 32 << 20


def coalesce(
    ranges: Sequence[tuple[int, int]],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_overread: float = DEFAULT_MAX_OVERREAD,
    max_range: int = DEFAULT_MAX_RANGE,
) -> list[tuple[int, int]]:
    """Sorted ``[start, stop)`` ranges covering ``ranges`` in fewer requests.

    Overlapping and adjacent ranges always merge. Two ranges at most ``max_gap`` apart merge
    when the unwanted bytes of the merged range stay at most ``max_overread`` times its wanted
    bytes and it stays within ``max_range`` (a single wanted range longer than that is kept
    whole).
    """
    merged: list[tuple[int, int]] = []
    wanted = 0  # wanted bytes of merged[-1]
    for start, stop in sorted((start, stop) for start, stop in ranges if stop > start):
        if merged:
            last_start, last_stop = merged[-1]
            if start <= last_stop:
                wanted += max(stop - last_stop, 0)
                merged[-1] = (last_start, max(stop, last_stop))
                continue
            gap = start - last_stop
            unwanted = last_stop - last_start - wanted + gap
            if (
                gap <= max_gap
                and unwanted <= max_overread * (wanted + stop - start)
                and stop - last_start <= max_range
            ):
                wanted += stop - start
                merged[-1] = (last_start, stop)
                continue
        merged.append((start, stop))
        wanted = stop - start
    return merged


class FetchedRanges(io.RawIOBase):
    """A read-only file of ``size`` bytes of which some ranges were fetched ahead.

    Reads inside a fetched range are served from memory without a copy; a read outside them
    (a reader that needed more than it announced) is fetched from the store on the spot, so
    the result is always right and only an incomplete announcement costs a request.
    """

    def __init__(self, url: str, size: int, starts: Sequence[int], data: Sequence[bytes]):
        """
        Args:
            url: The object (to fetch what was not fetched ahead, and for messages).
            size: The object's size in bytes.
            starts: Sorted offsets of the fetched ranges.
            data: Their bytes.
        """
        super().__init__()
        self.url = url
        self._size = size
        self._starts = list(starts)
        self._data = [memoryview(part) for part in data]
        self._position = 0
        self.fetched_on_demand = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def read(self, size: int = -1) -> bytes | memoryview:
        start = self._position
        stop = self._size if size is None or size < 0 else min(start + size, self._size)
        if stop <= start:
            return b""
        self._position = stop
        index = bisect.bisect_right(self._starts, start) - 1
        if index >= 0:
            offset = start - self._starts[index]
            part = self._data[index]
            if stop - self._starts[index] <= len(part):
                return part[offset : offset + stop - start]
        self.fetched_on_demand += 1
        fs, inner = filesystem(self.url)
        with storage_errors(self.url):
            return fs.cat_file(inner, start=start, end=stop)


def fetch_ranges(
    url: str,
    ranges: Sequence[tuple[int, int]],
    *,
    size: int,
) -> FetchedRanges:
    """The object at ``url`` as a file whose ``[start, stop)`` ``ranges`` are already in memory.

    Ranges are merged (:func:`coalesce`) and fetched concurrently, with the filesystem's
    retries; knowing ``size`` saves asking the store for it.

    Raises:
        StorageError: no such bucket, or access denied.
        FileNotFoundError: no such object (naming the URL).
    """
    spans = coalesce(ranges)
    fs, inner = filesystem(url)
    with storage_errors(url):
        data = (
            fs.cat_ranges(
                [inner] * len(spans),
                [start for start, _ in spans],
                [stop for _, stop in spans],
                on_error="raise",
            )
            if spans
            else []
        )
    return FetchedRanges(url, size, [start for start, _ in spans], data)
