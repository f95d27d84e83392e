"""Path objects for local and remote files, with the pathlib operations tml uses."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from fsspec.core import split_protocol

from tml.storage.filesystems import check_bucket, filesystem, is_url, storage_errors


class RemotePath:
    """A file or folder in an object store, addressed by its URL (``s3://bucket/key``).

    Mirrors the part of :class:`pathlib.Path` that tml uses (joining, names, reading, writing,
    listing), so code written against ``Path`` works on a bucket unchanged. Object stores have
    no folders: a folder exists while some key lies under it, and :meth:`mkdir` only checks that
    the bucket is there. It deliberately has no ``__fspath__``: code that would hand it to
    ``open`` or ``os`` fails loudly instead of writing a local folder named ``s3:``.
    """

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        protocol, rest = split_protocol(url)
        if protocol is None:
            raise ValueError(f"not a URL: {url!r}")
        self._url = f"{protocol}://{rest.strip('/')}"

    # Names ------------------------------------------------------------------------------------

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RemotePath({self._url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __lt__(self, other: RemotePath) -> bool:
        return self._url < other._url

    def __truediv__(self, part: str | os.PathLike) -> RemotePath:
        return RemotePath(f"{self._url}/{os.fspath(part).strip('/')}")

    @property
    def name(self) -> str:
        return self._url.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name.lstrip(".") else ""

    @property
    def parent(self) -> RemotePath:
        protocol, rest = split_protocol(self._url)
        head = rest.rsplit("/", 1)[0] if "/" in rest else rest
        return RemotePath(f"{protocol}://{head}")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    @property
    def _location(self) -> tuple[Any, str]:
        return filesystem(self._url)

    # Queries ----------------------------------------------------------------------------------

    def exists(self) -> bool:
        fs, path = self._location
        with storage_errors(self._url):
            return bool(fs.exists(path))

    def is_file(self) -> bool:
        fs, path = self._location
        with storage_errors(self._url):
            return bool(fs.isfile(path))

    def is_dir(self) -> bool:
        fs, path = self._location
        with storage_errors(self._url):
            return bool(fs.isdir(path))

    def iterdir(self) -> Iterator[RemotePath]:
        fs, path = self._location
        with storage_errors(self._url):
            # The listing cache would hide what another process (the trainer, for the
            # follower) wrote since the last look.
            fs.invalidate_cache(path)
            names = fs.ls(path, detail=False)
        for name in sorted(names):
            child = name.rstrip("/").rsplit("/", 1)[-1]
            if child:
                yield self / child

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        fs, path = self._location
        protocol, _ = split_protocol(self._url)
        with storage_errors(self._url):
            fs.invalidate_cache(path)
            found = fs.glob(f"{path}/{pattern}")
        for name in sorted(found):
            yield RemotePath(f"{protocol}://{name}")

    # Reading and writing ----------------------------------------------------------------------

    def open(self, mode: str = "r", **kwargs: Any) -> IO[Any]:
        if "a" in mode:
            raise ValueError(f"{self._url}: object stores cannot append; rewrite the object")
        fs, path = self._location
        with storage_errors(self._url):
            return fs.open(path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        fs, path = self._location
        with storage_errors(self._url):
            return fs.cat_file(path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        fs, path = self._location
        with storage_errors(self._url):
            fs.pipe_file(path, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Checks that the bucket exists (object stores need no folders)."""
        del parents, exist_ok
        check_bucket(self._url)

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self._location
        try:
            with storage_errors(self._url):
                fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise


# A job's path: local (pathlib) or remote.
AnyPath = Path | RemotePath


def as_path(path: str | os.PathLike | RemotePath) -> AnyPath:
    """A :class:`RemotePath` for a URL, a :class:`pathlib.Path` for a local path or
    ``file://`` URL."""
    if isinstance(path, RemotePath | Path):
        return path
    text = os.fspath(path)
    if is_url(text):
        return RemotePath(text)
    protocol, rest = split_protocol(text)
    return Path(rest if protocol is not None else text)


def list_files(pattern: str) -> list[str]:
    """The files matching a glob (``**`` included), local or remote, sorted; URLs stay URLs.

    Raises:
        StorageError: the pattern's bucket does not exist or is not readable.
    """
    if not is_url(pattern):
        local = os.fspath(as_path(pattern))
        return sorted(path for path in glob.glob(local, recursive=True) if os.path.isfile(path))
    fs, path = filesystem(pattern)
    protocol, _ = split_protocol(pattern)
    with storage_errors(pattern):
        found = fs.glob(path, detail=True)
    files = sorted(f"{protocol}://{name}" for name, info in found.items() if info["type"] == "file")
    if not files:
        check_bucket(pattern)
    return files


def remove_tree(path: AnyPath) -> None:
    """Removes a folder and everything under it; nothing when it is not there."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, inner = filesystem(str(path))
    try:
        with storage_errors(str(path)):
            fs.rm(inner, recursive=True)
    except FileNotFoundError:
        pass


def write_atomically(path: AnyPath, text: str) -> None:
    """Writes a whole text file that readers see either entirely or not at all.

    Locally that takes a temporary file and a rename. An object store's PUT is already atomic
    (the object appears whole), and it has no atomic rename, so the text is written directly.
    """
    if isinstance(path, RemotePath):
        path.write_text(text)
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def file_written_whole(path: AnyPath) -> Iterator[str | IO[bytes]]:
    """Where to write a (large, streamed) file so that it never shows partial under its name.

    Yields a local path to write to, or an open binary file for an object store. Locally the
    file is written under ``<name>.partial`` and renamed when the block ends without error; a
    killed process or an error leaves only the ``.partial`` file. An object appears only once
    its upload is closed; when the block fails the object is removed again (a killed process
    never completes the upload).
    """
    if isinstance(path, RemotePath):
        sink = path.open("wb")
        try:
            with contextlib.closing(sink):
                yield sink
        except BaseException:
            # Closing a file object completes its upload even after an error: take it back.
            path.unlink(missing_ok=True)
            raise
        return
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    yield str(partial)
    partial.replace(path)


def open_input_file(path: str) -> str | pa.NativeFile:
    """What pyarrow should read ``path`` from: the path itself when local (pyarrow's own local
    filesystem), else a random-access file over the store.

    The remote file has no cache of its own (fsspec's default would fetch a 50 MiB block per
    read): each read is one ranged GET of exactly the bytes asked for, and pyarrow's
    ``pre_buffer`` coalesces the column chunks a row group read needs into few such ranges.

    Raises:
        StorageError: no such bucket, or access denied.
        FileNotFoundError: no such object (naming the URL).
    """
    if not is_url(path):
        return os.fspath(as_path(path))
    fs, inner = filesystem(path)
    with storage_errors(path):
        return pa.PythonFile(fs.open(inner, "rb", cache_type="none"), mode="r")
