"""Where every feature's packed values lie in a batch of serialized tf.Examples, found for all
records at once with numpy instead of one protobuf parse per record.

The records are joined into one buffer and walked in lockstep: step ``k`` reads the ``k``-th
map entry of every record that has one (tag, length, key, the ``Feature``'s kind and its packed
list), as a handful of numpy operations over the whole batch. Records written by one program
hold their features in the same order, so a step usually compares every record's key against
one name.

The scan accepts only the one canonical encoding of each message: every length-delimited field
in one piece, ending exactly where its parent ends, lists packed, each map entry a key then a
value, no other fields, no feature twice. A record encoded any other way (valid or not) is
marked not understood, and the caller decodes it with protobuf instead; so the scan never has
to be right about an unusual encoding, only to recognise the usual one. ``bytes_list`` values
of schema features also go that way (a list of several strings is not one packed run).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

# Wire tags: field number << 3 | wire type 2 (length-delimited).
_FIELD_1 = 0x0A
_FIELD_2 = 0x12
_FIELD_3 = 0x1A
PADDING = 64
# A length varint of up to 5 bytes holds any size a record can have (< 2 GiB).
_VARINT_BYTES = 5
_NOT_UTF8 = -2
# Feature kinds by field number of Feature's one-of (feature.proto); 0: no kind set.
ABSENT, BYTES_LIST, FLOAT_LIST, INT64_LIST = 0, 1, 2, 3


@dataclasses.dataclass
class ScannedRecords:
    """Payload positions of the scanned features, per record.

    Attributes:
        buffer: The records joined, as bytes (slice it with ``offsets`` and ``lengths``), then
            ``PADDING`` zero bytes, so that a fixed-width read at any payload stays inside.
        data: ``buffer`` as a uint8 array.
        understood: Records whose encoding the scan recognised; the rest need protobuf.
        kinds: ``[records, features]`` kind of each feature (``ABSENT`` when the record lacks it
            or sets no kind).
        offsets: ``[records, features]`` start of the packed payload in ``buffer``.
        lengths: ``[records, features]`` bytes of the packed payload.
    """

    buffer: bytes
    data: np.ndarray
    understood: np.ndarray
    kinds: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray


def read_varints(
    data: np.ndarray, positions: np.ndarray, width: int = _VARINT_BYTES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The varint at each position, read in place: (int64 values, bytes each took, valid: it
    ended within ``width`` bytes). ``data`` must have ``width`` bytes of padding past every
    position asked for; a varint of 10 bytes (a negative int64) wraps as protobuf's does."""
    first = data[positions]
    if not (first & 0x80).any():
        # All one-byte varints (keys, short lists, labels): the common case, without a gather.
        ones = np.ones(len(positions), dtype=np.int64)
        return first.astype(np.int64), ones, np.ones(len(positions), dtype=bool)
    window = data[positions[:, None] + np.arange(width)]
    continued = window >= 0x80
    # Bytes taken: up to and including the first byte without the continuation bit.
    taken = np.argmin(continued, axis=1) + 1
    valid = ~continued.all(axis=1)
    used = np.arange(width) < taken[:, None]
    # The 7-bit groups occupy disjoint bits, so a sum is their OR; bits shifted past 64 drop.
    parts = (window & np.uint8(0x7F)).astype(np.uint64) << (
        np.arange(width, dtype=np.uint64) * np.uint64(7)
    )
    values = (parts * used).sum(axis=1, dtype=np.uint64).view(np.int64)
    return values, taken, valid


def scan_examples(records: Sequence[bytes], features: Mapping[str, int]) -> ScannedRecords:
    """Finds the payload of every named feature in every record.

    Args:
        records: Serialized tf.Examples.
        features: Feature name -> its column in the result; other features are skipped (but
            their encoding must be canonical too, or the record is not understood).
    """
    count = len(records)
    buffer = b"".join([*records, bytes(PADDING)])
    sizes = np.fromiter((len(record) for record in records), dtype=np.int64, count=count)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    # Padding: reads past a record's end (of a malformed length, say) stay inside the array;
    # the checks below then reject that record.
    data = np.frombuffer(buffer, dtype=np.uint8)
    limit = len(buffer) - PADDING
    kinds = np.zeros((count, len(features)), dtype=np.int8)
    offsets = np.zeros((count, len(features)), dtype=np.int64)
    lengths = np.zeros((count, len(features)), dtype=np.int64)
    seen = np.zeros((count, len(features)), dtype=bool)

    def clip(positions: np.ndarray) -> np.ndarray:
        return np.minimum(positions, limit)

    # Example: an empty record has no features; otherwise field 1 (Features) is all of it.
    nonempty = sizes > 0
    size, taken, valid = read_varints(data, clip(starts + 1))
    body = starts + 1 + taken
    understood = ~nonempty | ((data[clip(starts)] == _FIELD_1) & valid & (body + size == ends))
    position = np.where(nonempty, body, ends)
    end = ends

    names = {name.encode(): column for name, column in features.items()}
    while True:
        rows = np.flatnonzero(understood & (position < end))
        if rows.size == 0:
            break
        at = position[rows]
        # FeatureEntry: tag, length; then key (field 1) and value (field 2, a Feature).
        entry_size, taken, good = read_varints(data, clip(at + 1))
        entry_start = at + 1 + taken
        entry_end = entry_start + entry_size
        good &= (data[clip(at)] == _FIELD_1) & (entry_end <= end[rows])
        good &= data[clip(entry_start)] == _FIELD_1
        key_size, taken, valid = read_varints(data, clip(entry_start + 1))
        key_start = entry_start + 1 + taken
        key_end = key_start + key_size
        good &= valid & (key_end < entry_end) & (data[clip(key_end)] == _FIELD_2)
        feature_size, taken, valid = read_varints(data, clip(key_end + 1))
        feature_start = key_end + 1 + taken
        good &= valid & (feature_start + feature_size == entry_end)
        # Feature: empty (no kind), or one list field filling it.
        kind_tag = data[clip(feature_start)]
        list_size, taken, valid = read_varints(data, clip(feature_start + 1))
        list_start = feature_start + 1 + taken
        has_kind = feature_size > 0
        good &= ~has_kind | (
            valid
            & ((kind_tag == _FIELD_1) | (kind_tag == _FIELD_2) | (kind_tag == _FIELD_3))
            & (list_start + list_size == entry_end)
        )
        # The list: empty, or one packed run (field 1) filling it.
        payload_size, taken, valid = read_varints(data, clip(list_start + 1))
        payload_start = list_start + 1 + taken
        has_values = has_kind & (list_size > 0)
        good &= ~has_values | (
            valid
            & (data[clip(list_start)] == _FIELD_1)
            & (payload_start + payload_size == entry_end)
        )
        kind = np.where(has_kind, kind_tag >> 3, ABSENT).astype(np.int8)
        payload_start = np.where(has_values, payload_start, list_start)
        payload_size = np.where(has_values, payload_size, 0)
        column = _key_columns(buffer, data, names, key_start, key_size, good)
        good &= column != _NOT_UTF8
        # Features not asked for are still decoded by protobuf, which refuses malformed lists.
        unknown = np.flatnonzero(good & (column == -1) & has_values)
        if unknown.size:
            good[unknown] = _lists_well_formed(
                buffer, kind[unknown], payload_start[unknown], payload_size[unknown]
            )
        # A string list goes to protobuf (several strings are not one packed run).
        good &= (column < 0) | ~(has_values & (kind == BYTES_LIST))
        known = good & (column >= 0)
        known_rows, known_columns = rows[known], column[known]
        # A feature twice: protobuf keeps the last; let it decide.
        good[np.flatnonzero(known)[seen[known_rows, known_columns]]] = False
        known = good & (column >= 0)
        known_rows, known_columns = rows[known], column[known]
        seen[known_rows, known_columns] = True
        kinds[known_rows, known_columns] = kind[known]
        offsets[known_rows, known_columns] = payload_start[known]
        lengths[known_rows, known_columns] = payload_size[known]
        understood[rows[~good]] = False
        position[rows] = entry_end
    kinds[~understood] = ABSENT
    return ScannedRecords(buffer, data, understood, kinds, offsets, lengths)


def _key_columns(
    buffer: bytes,
    data: np.ndarray,
    names: Mapping[bytes, int],
    key_start: np.ndarray,
    key_size: np.ndarray,
    good: np.ndarray,
) -> np.ndarray:
    """Each entry's column in ``names`` (-1: a feature not asked for, or not ``good``;
    ``_NOT_UTF8``: a key protobuf refuses, map keys being strings).

    Keys are compared by value, one distinct key at a time: entries of records written by one
    program mostly share the key at each step.
    """
    column = np.full(key_start.shape, -1, dtype=np.int64)
    pending = np.flatnonzero(good)
    while pending.size:
        first = pending[0]
        size = int(key_size[first])
        start = int(key_start[first])
        key = buffer[start : start + size]
        same = key_size[pending] == size
        if size:
            candidates = pending[same]
            window = data[key_start[candidates][:, None] + np.arange(size)]
            same[np.flatnonzero(same)] = (window == np.frombuffer(key, np.uint8)).all(axis=1)
        column[pending[same]] = names.get(key, -1 if _is_utf8(key) else _NOT_UTF8)
        pending = pending[~same]
    return column


# Eleven bytes in a row with the continuation bit: a varint longer than protobuf's 10 bytes.
_OVERLONG_VARINT = re.compile(rb"[\x80-\xff]{10}")


def _well_formed(kind: int, payload: bytes) -> bool:
    """Whether a packed payload decodes as protobuf would: whole floats, or complete varints of
    at most 10 bytes."""
    if kind == FLOAT_LIST:
        return len(payload) % 4 == 0
    if kind == INT64_LIST:
        return not payload or (payload[-1] < 0x80 and not _OVERLONG_VARINT.search(payload))
    return True


def _lists_well_formed(
    buffer: bytes, kinds: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    return np.array(
        [
            _well_formed(kind, buffer[start : start + size])
            for kind, start, size in zip(
                kinds.tolist(), starts.tolist(), sizes.tolist(), strict=True
            )
        ],
        dtype=bool,
    )


def _is_utf8(key: bytes) -> bool:
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
