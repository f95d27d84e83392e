"""The loader's rate reading from an S3-protocol server on loopback vs from local disk.

    .venv/bin/python benchmarks/remote_loader.py [--num_examples 32768] [--batches 48] [--rounds 3]

Writes production-shaped data (local_prod.yaml) once, uploads the same files to a bucket of moto's
S3 server on loopback (every request crosses a real HTTP connection), and times the training
loader over both in fresh processes, rounds interleaved, median of the rounds. Goal: the bucket
at >= 0.8 of local disk with the default prefetch. Loopback has no network latency: this
measures the cost of the storage path (HTTP, ranged reads, no local page cache), not a region's
bandwidth. The S3 server is moto, itself Python on the same cores as the loader, so its own
CPU time counts against the bucket's rate; ``--through_proxy`` adds the tests' fault-injecting
proxy (one more Python hop) in front of it.

Two choices keep the figure about the loader:

* The timed stretch (``--batches``, twice, after a warm-up) is several times what the loader
  prefetches (its reader threads + 1 windows of one 2048-row group here: 12 batches of 512 from
  disk, 20 from the bucket on 2 CPUs), so it measures the steady rate, not a full queue.
* moto answers every ranged GET by copying the whole object out of its spool file (a 64 MiB
  file: 64 MiB per request, whatever the range), a cost of this test server that grows with the
  file and that no object store has. By default the benchmark's moto keeps each object's bytes
  in memory once read, so a ranged GET costs the range (slicing, HTTP), as on a store;
  ``--stock_moto`` measures with moto as shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL = 0.8


def _measure(data: str, batches: int, environment: dict[str, str]) -> float:
    """Examples/s of the loader over ``data`` (a folder or a bucket prefix), in its own process."""
    output = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/data_loader.py"),
            "--measure",
            "loader",
            data,
            str(batches),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **environment},
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["examples_per_s"]


def _serve_ranges_from_memory() -> None:
    """Makes this process's moto keep each object's bytes once read (see the module docstring):
    a ranged GET then copies only its range. Objects here are written once, before reading."""
    from moto.s3.models import FakeKey

    stock = FakeKey.value

    def read(key: FakeKey) -> bytes:
        if "_bench_bytes" not in key.__dict__:
            key.__dict__["_bench_bytes"] = stock.fget(key)
        return key.__dict__["_bench_bytes"]

    def write(key: FakeKey, value: bytes) -> None:
        key.__dict__.pop("_bench_bytes", None)
        stock.fset(key, value)

    FakeKey.value = property(read, write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=32768)
    parser.add_argument("--num_files", type=int, default=4)
    parser.add_argument(
        "--batches", type=int, default=48, help="Timed batches of 512 (twice, best kept)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved measurement rounds.")
    parser.add_argument(
        "--through_proxy", action="store_true", help="Go through the tests' fault proxy."
    )
    parser.add_argument(
        "--stock_moto",
        action="store_true",
        help="moto as shipped: every ranged GET copies the whole object.",
    )
    args = parser.parse_args()

    import fsspec
    from data_loader import write_data

    from tests.helpers.s3_server import S3Server

    if not args.stock_moto:
        _serve_ranges_from_memory()
    server = S3Server.start()
    try:
        environment = server.environment()
        if not args.through_proxy:
            environment["AWS_ENDPOINT_URL"] = server.moto_endpoint
        os.environ.update(environment)
        with tempfile.TemporaryDirectory(prefix="tml_remote_bench_") as scratch:
            local = os.path.join(scratch, "data")
            write_data(local, args.num_examples, args.num_files, {})
            filesystem = fsspec.filesystem("s3")
            filesystem.mkdir("bench")
            filesystem.put(f"{local}/", "bench/data/", recursive=True)
            remote = "s3://bench/data"
            rates: dict[str, list[float]] = {"local disk": [], "loopback S3": []}
            for _ in range(args.rounds):
                rates["local disk"].append(_measure(local, args.batches, environment))
                rates["loopback S3"].append(_measure(remote, args.batches, environment))
    finally:
        server.stop()

    local_rate = statistics.median(rates["local disk"])
    print(
        f"loader, batch 512, {args.num_examples} local_prod examples in {args.num_files} files, "
        f"median of {args.rounds} interleaved rounds, "
        f"moto {'as shipped' if args.stock_moto else 'serving ranges from memory'}:"
    )
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"  {name:<12} {rate:>8,.0f} ex/s  {rate / local_rate:5.2f}x local")
    ratio = statistics.median(rates["loopback S3"]) / local_rate
    print(f"target: bucket >= {GOAL:.0%} of local disk: [{'met' if ratio >= GOAL else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
