"""Filesystems from URLs (fsspec), their retry settings, and one-line errors naming the URL.

fsspec is the layer because every consumer here speaks it: pyarrow reads Parquet through it
(``pyarrow.fs.FSSpecHandler``), torch.distributed.checkpoint ships ``FsspecWriter`` and
``FsspecReader``, and one URL scheme maps to one optional package (``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``) that only the jobs using that store install. Credentials come only from
each library's standard chain (environment, config files, instance metadata); nothing here reads
or logs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import split_protocol

from tml.core.errors import UserInputError

# Protocols that name the local disk: these stay plain paths.
_LOCAL_PROTOCOLS = {None, "file", "local"}

# Per-protocol settings. botocore's "standard" retry mode retries 5xx answers, throttling and
# reset connections with exponential backoff and jitter; its default ("legacy") gives up after
# 5 attempts with a fixed schedule. Ten attempts ride out a store's brief unavailability (about
# half a minute of backoff) while a permanent error (403, 404) is never retried. s3fs itself
# retries timeouts and dropped connections on top of that.
_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {
        # Other processes write while this one reads (ranks, the trainer for its follower):
        # a cached listing would hide their new keys.
        "use_listings_cache": False,
        "config_kwargs": {
            "retries": {"mode": "standard", "max_attempts": 10},
            "connect_timeout": 10,
            "read_timeout": 60,
        },
    },
    # gcsfs retries 5xx answers, throttling and dropped connections itself (exponential
    # backoff); its listings are cached like s3fs's, with the same stale-listing problem.
    "gs": {"use_listings_cache": False},
}


class StorageError(UserInputError, OSError):
    """A permanent storage failure (no such bucket, access denied); the message names the URL.

    A :class:`UserInputError`, so every command reports it as one line with exit status 2.
    """


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object store (or any non-local fsspec filesystem)."""
    protocol, _ = split_protocol(os.fspath(path))
    return protocol not in _LOCAL_PROTOCOLS


def storage_options(url: str) -> dict[str, Any]:
    """The keyword arguments tml creates ``url``'s filesystem with (also for torch's
    ``FsspecWriter``/``FsspecReader``, so that they share the same cached instance)."""
    protocol, _ = split_protocol(url)
    return dict(_OPTIONS.get(protocol or "file", {}))


def _filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    # fsspec caches instances per (protocol, options) and drops them in a forked child, so this
    # is cheap to call per operation and safe after fork.
    try:
        return fsspec.filesystem(protocol, **_OPTIONS.get(protocol, {}))
    except ImportError as error:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'tml[{extra}]')" if extra else ""
        raise StorageError(
            f"{protocol}:// paths need a package that is not installed{hint}: {error}"
        ) from None
    except ValueError as error:
        raise StorageError(f"unknown storage protocol {protocol}://: {error}") from None


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a URL and the path inside it (``bucket/key`` for object stores).

    Raises:
        StorageError: the protocol is unknown or its package is not installed.
    """
    protocol, _ = split_protocol(url)
    fs = _filesystem(protocol or "file")
    return fs, fs._strip_protocol(url)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turns the permanent failures of a store into one-line :class:`StorageError` naming
    ``url``: access denied, and a missing bucket (a missing key stays FileNotFoundError, which
    callers may expect). Transient failures were already retried by the filesystem."""
    try:
        yield
    except StorageError:
        raise
    except PermissionError as error:
        raise StorageError(f"{url}: access denied ({_describe(error)})") from None
    except FileNotFoundError as error:
        if is_url(url) and not _bucket_exists(url):
            raise StorageError(f"{url}: no such bucket") from None
        raise FileNotFoundError(f"{url}: no such file ({_describe(error)})") from None


def _bucket_exists(url: str) -> bool:
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        return bool(fs.exists(bucket))
    except PermissionError as error:
        raise StorageError(f"{url}: access denied ({_describe(error)})") from None


def check_bucket(url: str) -> None:
    """Raises :class:`StorageError` when ``url``'s bucket does not exist or is not ours.

    Listing a missing bucket returns nothing on some stores, so callers that found no file
    ask this to tell "empty" from "no such bucket".
    """
    if is_url(url) and not _bucket_exists(url):
        raise StorageError(f"{url}: no such bucket")
