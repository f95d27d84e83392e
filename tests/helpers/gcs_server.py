"""A Google Cloud Storage server on loopback for tests: the ``gcp-storage-emulator`` package
(the JSON API, objects in memory) in a thread of the test process, with gcsfs pointed at it.

The emulator lacks GCS's ``objects.move`` (``.../o/{object}/moveTo/o/{destination}``), which
gcsfs uses for a rename (torch.distributed.checkpoint renames its ``.metadata`` into place):
it answers 501, which gcsfs retries for half a minute before copying and deleting instead.
:func:`_add_move` gives the emulator that call, as a copy and a delete within the bucket.
"""

from __future__ import annotations

import dataclasses
import logging
from http import HTTPStatus
from typing import Any

from tests.helpers.s3_server import free_port


def _move(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
    from gcp_storage_emulator.handlers import objects

    request.params["dest_bucket_name"] = request.params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == HTTPStatus.OK:
        objects.delete(request, response, storage)


def _add_move() -> None:
    from gcp_storage_emulator import server

    if any(route is _move for _, methods in server.HANDLERS for route in methods.values()):
        return
    move = (
        r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
        r"(?P<dest_object_id>.*[^/]+)$",
        {"POST": _move},
    )
    # Before the generic object route, which would otherwise match the longer path.
    server.HANDLERS = (move, *server.HANDLERS)


@dataclasses.dataclass
class GcsServer:
    """A running emulator: :meth:`environment` points gcsfs (here and in child processes) at it."""

    endpoint: str
    _server: object

    @classmethod
    def start(cls) -> GcsServer:
        from gcp_storage_emulator.server import create_server

        _add_move()
        # The emulator logs every request at INFO.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        port = free_port()
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        return cls(f"http://127.0.0.1:{port}", server)

    def stop(self) -> None:
        self._server.stop()

    def environment(self) -> dict[str, str]:
        """What gcsfs reads from the environment to use the emulator without credentials."""
        return {
            # gcsfs sends every request to this endpoint instead of storage.googleapis.com.
            "STORAGE_EMULATOR_HOST": self.endpoint,
            # No credentials: fsspec applies FSSPEC_<PROTOCOL>_<ARGUMENT> to every gs://
            # filesystem a process creates (read when fsspec is imported).
            "FSSPEC_GS_TOKEN": "anon",
            # gcsfs otherwise asks a gRPC control API (which the emulator lacks) for each
            # bucket's type, waiting a minute per bucket before falling back. Read when gcsfs
            # is imported.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
