"""TFRecord framing: the container the original's data came in, read and written without
TensorFlow.

A TFRecord file is a sequence of records, each::

    uint64 length (little endian) | uint32 masked CRC32-C of those 8 bytes
    data (length bytes)           | uint32 masked CRC32-C of the data

optionally inside one gzip (or zlib) stream; the file may be local or an object-store URL
(``tml.storage``). Both checksums are verified: a flipped bit in a
copied file must not turn into a silently wrong training example. Errors name the file and the
index of the record, and say whether reading can go on at the next record (a bad data checksum
under a good length checksum) or the rest of the file is lost (a bad length, a truncated file,
a broken gzip stream).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import google_crc32c
from isal import isal_zlib

from tml.core.errors import UserInputError
from tml.storage import filesystem, is_url, storage_errors

COMPRESSIONS = ("auto", "gzip", "zlib", "none")
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
# Decompressed bytes read at a time: large enough that per-read overhead vanishes, small enough
# that memory stays bounded whatever the file size.
_CHUNK = 4 << 20
_COMPRESSED_CHUNK = 1 << 20
# Bytes fetched per ranged read of a stored object: few requests, bounded memory per worker.
_REMOTE_BLOCK = 16 << 20


class TFRecordError(UserInputError):
    """A TFRecord file is unreadable at one record; the message names the file and the record.

    Attributes:
        path: The file.
        record: Index of the record (0-based) where reading failed.
        recoverable: Whether the reader can go on at the next record; otherwise the rest of the
            file is unreadable.
    """

    def __init__(self, path: str, record: int, problem: str, recoverable: bool = False):
        super().__init__(f"{path}: record {record}: {problem}")
        self.path = path
        self.record = record
        self.problem = problem
        self.recoverable = recoverable

    def __reduce__(self) -> tuple[type, tuple[str, int, str, bool]]:
        # Worker processes send it back to the parent: rebuild from the fields, not the message.
        return (TFRecordError, (self.path, self.record, self.problem, self.recoverable))


def masked_crc32c(data: bytes) -> int:
    """The checksum TFRecord stores: CRC32-C, rotated and offset so that a CRC of data that
    itself holds CRCs does not degenerate."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _is_zlib_header(head: bytes) -> bool:
    return len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


def _plain_header_valid(head: bytes) -> bool:
    if len(head) < _HEADER.size:
        return False
    _, crc = _HEADER.unpack_from(head)
    return masked_crc32c(head[:8]) == crc


def open_raw(path: str) -> BinaryIO:
    """The file's bytes as stored, local or on an object store (read sequentially, so the
    store's read-ahead serves them in large ranged reads).

    Raises:
        StorageError: no such bucket, or access denied.
        FileNotFoundError: naming the path.
    """
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    with storage_errors(path):
        return fs.open(inner, "rb", block_size=_REMOTE_BLOCK, cache_type="readahead")


def file_size(path: str) -> int:
    """Size in bytes of a local file or stored object."""
    if not is_url(path):
        return os.path.getsize(path)
    fs, inner = filesystem(path)
    with storage_errors(path):
        return int(fs.size(inner))


def detect_compression(path: str) -> str:
    """``gzip``, ``zlib`` or ``none``, from the file's first bytes (not its name: TFRecord
    files are named every which way)."""
    if is_url(path):
        # One small ranged read, not a read-ahead block of the file.
        fs, inner = filesystem(path)
        with storage_errors(path):
            head = fs.cat_file(inner, start=0, end=_HEADER.size)
    else:
        with open(path, "rb") as file:
            head = file.read(_HEADER.size)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    # A plain file whose first length happens to look like a zlib header still has a valid
    # length checksum; a zlib stream almost never does.
    if _is_zlib_header(head) and not _plain_header_valid(head):
        return "zlib"
    return "none"


class _InflatingReader:
    """The decompressed bytes of a gzip (one or more members, as ``cat a.gz b.gz`` makes) or
    zlib file, at most ``size`` bytes per read whatever the compression ratio.

    Inflation is ISA-L's (``isal``), ~2.5x zlib's speed: on the full 2022 schema it was a
    quarter of the converter's time. Checksums of the compressed format are verified by it.
    """

    def __init__(self, raw: BinaryIO, gzip_format: bool):
        self._raw = raw
        self._gzip = gzip_format
        self._wbits = 31 if gzip_format else 15
        self._inflate = isal_zlib.decompressobj(self._wbits)
        self._input = b""

    def read(self, size: int) -> bytes:
        while True:
            if self._inflate.eof and not self._next_member():
                return b""
            if not self._input:
                self._input = self._raw.read(_COMPRESSED_CHUNK)
                if not self._input:
                    raise EOFError("compressed file ended before the end-of-stream marker")
            data = self._inflate.decompress(self._input, size)
            self._input = self._inflate.unconsumed_tail
            if data:
                return data

    def _next_member(self) -> bool:
        """Starts on the gzip member after the one that ended; False at the end of the file."""
        if not self._gzip:
            return False  # zlib has one stream; TensorFlow ignores what follows it too
        rest = self._inflate.unused_data
        while True:
            # gzip allows zero padding after a member (GNU gzip and Python's module skip it).
            rest = rest.lstrip(b"\x00")
            if len(rest) >= 2:
                break
            more = self._raw.read(_COMPRESSED_CHUNK)
            if not more:
                if rest:
                    raise EOFError("compressed file ended inside a gzip member header")
                return False
            rest += more
        if rest[:2] != b"\x1f\x8b":
            raise gzip.BadGzipFile(f"data after a gzip member is not gzip: {rest[:8]!r}")
        self._inflate = isal_zlib.decompressobj(self._wbits)
        self._input = rest
        return True

    def close(self) -> None:
        self._raw.close()


def open_stream(path: str, compression: str = "auto") -> BinaryIO:
    """The decompressed byte stream of a TFRecord file (reads may return fewer bytes than
    asked; an empty read is the end)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression == "auto":
        compression = detect_compression(path)
    raw = open_raw(path)
    if compression in ("gzip", "zlib"):
        return _InflatingReader(raw, gzip_format=compression == "gzip")  # type: ignore[return-value]
    return raw


def iter_records(
    path: str,
    *,
    compression: str = "auto",
    on_corrupt: Callable[[TFRecordError], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yields ``(index, data)`` of every record of a TFRecord file, checksums verified.

    Memory holds one read chunk (a few MiB) plus the current record, whatever the file size.

    Args:
        path: The file.
        compression: ``auto`` (from the file's first bytes), ``gzip``, ``zlib`` or ``none``.
        on_corrupt: Without it, a corrupt record raises. With it, the error is passed to it and
            reading goes on at the next record when it can (the record's length was intact),
            else stops, having yielded every intact record before.

    Raises:
        TFRecordError: naming the file and the record: a checksum mismatch, a truncated file, a
            broken compressed stream, or a file without any record.
    """
    if file_size(path) == 0:
        _report(
            TFRecordError(path, 0, "the file is empty (0 bytes)", recoverable=False), on_corrupt
        )
        return
    stream = open_stream(path, compression)
    next_index = 0
    try:
        for index, data in _framed(path, stream):
            next_index = index + 1
            if isinstance(data, TFRecordError):
                _report(data, on_corrupt)
                if not data.recoverable:
                    return
                continue
            yield index, data
    except (OSError, EOFError, isal_zlib.error) as error:
        # gzip and zlib fail mid-stream on a flipped or missing byte; nothing after it can be
        # trusted.
        kind = "truncated" if isinstance(error, EOFError) else "corrupt"
        problem = f"{kind} compressed stream: {error}"
        _report(TFRecordError(path, next_index, problem, recoverable=False), on_corrupt)
    finally:
        stream.close()


def _report(error: TFRecordError, on_corrupt: Callable[[TFRecordError], None] | None) -> None:
    if on_corrupt is None:
        raise error
    on_corrupt(error)


def _framed(path: str, stream: BinaryIO) -> Iterator[tuple[int, bytes | TFRecordError]]:
    """Records, or the error where one is corrupt (read on after a recoverable one)."""
    buffer = b""
    position = 0
    offset = 0  # of buffer[0] in the (decompressed) stream, for messages
    index = 0
    ended = False

    def fill(needed: int) -> bool:
        nonlocal buffer, position, offset, ended
        while len(buffer) - position < needed and not ended:
            chunk = stream.read(max(_CHUNK, needed - (len(buffer) - position)))
            if not chunk:
                ended = True
                break
            offset += position
            buffer = buffer[position:] + chunk
            position = 0
        return len(buffer) - position >= needed

    while True:
        if not fill(_HEADER.size):
            left = len(buffer) - position
            if left == 0 and index == 0:
                yield index, TFRecordError(path, 0, "the file holds no record", recoverable=False)
            elif left:
                yield (
                    index,
                    TFRecordError(
                        path,
                        index,
                        f"truncated: the file ends {left} bytes into the 12-byte record header",
                        recoverable=False,
                    ),
                )
            return
        start = offset + position
        length, length_crc = _HEADER.unpack_from(buffer, position)
        if masked_crc32c(buffer[position : position + 8]) != length_crc:
            problem = f"corrupt record header (length checksum mismatch at byte {start})"
            if index == 0:
                problem += "; is this a TFRecord file?"
            yield index, TFRecordError(path, index, problem, recoverable=False)
            return
        position += _HEADER.size
        if not fill(length + _FOOTER.size):
            got = len(buffer) - position
            problem = (
                f"truncated: the file ends after {min(got, length)} of the record's "
                f"{length} data bytes"
            )
            yield index, TFRecordError(path, index, problem, recoverable=False)
            return
        data = buffer[position : position + length]
        (data_crc,) = _FOOTER.unpack_from(buffer, position + length)
        position += length + _FOOTER.size
        if masked_crc32c(data) != data_crc:
            problem = f"corrupt record (data checksum mismatch, record at byte {start})"
            yield index, TFRecordError(path, index, problem, recoverable=True)
        else:
            yield index, data
        index += 1


def encode_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        )
    )


def write_records(path: str, records: Iterable[bytes], compression: str = "none") -> int:
    """Writes a TFRecord file (``gzip``, ``zlib`` or ``none``); returns the record count."""
    count = 0
    with open(path, "wb") as raw:
        if compression == "gzip":
            # mtime=0 keeps the file identical across runs.
            sink: BinaryIO = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[assignment]
        elif compression == "zlib":
            sink = _ZlibWriter(raw)  # type: ignore[assignment]
        elif compression == "none":
            sink = raw
        else:
            raise ValueError(f"compression must be gzip, zlib or none, got {compression!r}")
        for data in records:
            sink.write(encode_record(data))
            count += 1
        if sink is not raw:
            sink.close()
    return count


class _ZlibWriter:
    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._deflate = zlib.compressobj()

    def write(self, data: bytes) -> None:
        self._raw.write(self._deflate.compress(data))

    def close(self) -> None:
        self._raw.write(self._deflate.flush())
