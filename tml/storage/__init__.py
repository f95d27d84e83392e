"""Where a job's files live: local paths, or object-store URLs (``s3://``, ``gs://``, ...).

:func:`as_path` turns a config string into a path object: a :class:`pathlib.Path` for a local
path or ``file://`` URL (so local jobs behave exactly as before), a :class:`RemotePath` over an
fsspec filesystem for any other URL. Both answer the same small part of the pathlib API that
the modes use, so the job folder, the checkpoint manager and the loggers never branch on where
their files are.
"""

from tml.storage.filesystems import (
    StorageError,
    check_bucket,
    filesystem,
    is_url,
    storage_errors,
    storage_options,
)
from tml.storage.lock import Lock, LockHeldError, LockHolder, LockLostError
from tml.storage.paths import (
    AnyPath,
    RemotePath,
    as_path,
    file_written_whole,
    list_files,
    open_input_file,
    remove_tree,
    write_atomically,
)
from tml.storage.ranges import FetchedRanges, coalesce, fetch_ranges

__all__ = [
    "AnyPath",
    "FetchedRanges",
    "Lock",
    "LockHeldError",
    "LockHolder",
    "LockLostError",
    "RemotePath",
    "StorageError",
    "as_path",
    "check_bucket",
    "coalesce",
    "fetch_ranges",
    "file_written_whole",
    "filesystem",
    "is_url",
    "list_files",
    "open_input_file",
    "remove_tree",
    "storage_errors",
    "storage_options",
    "write_atomically",
]
