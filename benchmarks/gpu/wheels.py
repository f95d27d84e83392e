"""The Python packages a GPU machine without a package index lacks, packed to travel in parts.

The device machine lent for GPU checks (one H200) reaches no package index. Its image has
Python 3.12 and a CUDA 13 build of torch 2.11 (not our pinned 2.13), numpy, pyarrow, pyyaml,
pytest and most of our other dependencies, but no fbgemm-gpu, torchrec, pydantic or tensordict.
What it lacks must travel with the working tree, at most 64 MiB a call. fbgemm-gpu's CUDA wheel
alone is 465 MB (2.5 GB unpacked: its kernels for sm_80, sm_90 and sm_100), so:

    pack    (on a machine that reaches PyPI) downloads the wheels that match the image's torch
            (fbgemm-gpu and torchrec pair with torch releases), installs them into a staging
            folder, and writes it as a tar stream compressed with zstd (CUDA kernels compress
            to about a tenth with zstd against a fifth with the wheels' zip deflate), cut into
            parts of at most --part_mib MiB, each in its own folder OUT/NN/ (one per call);
    unpack  (on the device machine, once every part has arrived) checks the parts against the
            manifest, names any missing one, and extracts the packages into --target, which
            then goes first on PYTHONPATH.

Run:  .venv/bin/python benchmarks/gpu/wheels.py pack [--out .gpu_wheels]
      python3 benchmarks/gpu/wheels.py unpack [--parts .gpu_wheels] [--target /tmp/tml-site]

Both sides use pyarrow's zstd codec (pyarrow is on the device image; a zstd command may not be).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa

# The device image's Python and platform, and the wheels it lacks, in versions that pair with
# its torch 2.11 (fbgemm-gpu 1.6 and torchrec 1.6 are the releases built for it; fbgemm-gpu's
# PyPI wheel links CUDA 13's runtime, as the image's torch does). The rest are our pins.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_PACKAGES = (
    "fbgemm-gpu==1.6.0",
    "torchrec==1.6.1",
    "torchmetrics==1.0.3",
    "tensordict==0.15.3",
    "pyvers==0.2.3",
    "iopath==0.1.9",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "google-crc32c==1.9.0",
)
MANIFEST = "manifest.json"
# Input block compressed as one zstd frame; the frames concatenated are one zstd stream.
BLOCK_BYTES = 64 << 20


def pack(out: Path, part_mib: int, level: int) -> int:
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="tml-gpu-wheels-") as scratch_name:
        scratch = Path(scratch_name)
        site = scratch / "site"
        platform_options = [option for p in PLATFORMS for option in ("--platform", p)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-compile",
                "--only-binary=:all:",
                "--python-version",
                PYTHON_VERSION,
                "--implementation",
                "cp",
                *platform_options,
                "--target",
                str(site),
                *DEVICE_PACKAGES,
            ],
            check=True,
        )
        archive = scratch / "site.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(site.iterdir()):
                tar.add(path, arcname=path.name)
        stream = scratch / "site.tar.zst"
        codec = pa.Codec("zstd", compression_level=level)
        with archive.open("rb") as source, stream.open("wb") as target:
            while block := source.read(BLOCK_BYTES):
                target.write(codec.compress(block, asbytes=True))
        unpacked = archive.stat().st_size
        parts = _split(stream, out, part_mib << 20)
        digest = _sha256([stream])
    manifest = {
        "packages": list(DEVICE_PACKAGES),
        "python_version": PYTHON_VERSION,
        "parts": parts,
        "sha256": digest,
        "unpacked_bytes": unpacked,
    }
    (out / "01" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    packed = sum((out / name).stat().st_size for name in parts)
    print(
        f"packed {len(DEVICE_PACKAGES)} packages: {unpacked / 2**20:.0f} MiB unpacked -> "
        f"{packed / 2**20:.0f} MiB in {len(parts)} parts of <= {part_mib} MiB under {out}/ "
        f"({time.perf_counter() - started:.0f} s)"
    )
    folders = sorted({Path(name).parent.as_posix() for name in parts})
    print("carry one folder per device call, in order:", " ".join(f"{out}/{f}" for f in folders))
    return 0


def _split(stream: Path, out: Path, part_bytes: int) -> list[str]:
    parts = []
    with stream.open("rb") as source:
        while chunk := source.read(part_bytes):
            folder = out / f"{len(parts) + 1:02d}"
            folder.mkdir()
            (folder / "site.tar.zst.part").write_bytes(chunk)
            parts.append(f"{folder.name}/site.tar.zst.part")
    return parts


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:
            while block := file.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def unpack(parts_dir: Path, target: Path) -> int:
    started = time.perf_counter()
    manifest_path = parts_dir / "01" / MANIFEST
    if not manifest_path.exists():
        print(f"error: no {manifest_path}: carry {parts_dir}/01 first", file=sys.stderr)
        return 2
    manifest = json.loads(manifest_path.read_text())
    paths = [parts_dir / name for name in manifest["parts"]]
    missing = [str(path.parent) for path in paths if not path.exists()]
    if missing:
        print(
            f"error: parts missing: {' '.join(missing)} (a machine given back between calls "
            "loses the parts it had: carry them again)",
            file=sys.stderr,
        )
        return 2
    if _sha256(paths) != manifest["sha256"]:
        print(f"error: the parts under {parts_dir} do not match {manifest_path}", file=sys.stderr)
        return 2
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tml-gpu-wheels-") as scratch_name:
        stream = Path(scratch_name) / "site.tar.zst"
        with stream.open("wb") as joined:
            for path in paths:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, joined, 1 << 24)
        with (
            pa.input_stream(str(stream), compression="zstd") as source,
            tarfile.open(fileobj=source, mode="r|") as tar,
        ):
            tar.extractall(target, filter="data")
    print(
        f"unpacked {len(manifest['packages'])} packages into {target} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="download, install, compress and cut into parts")
    packing.add_argument("--out", type=Path, default=Path(".gpu_wheels"))
    packing.add_argument(
        "--part_mib", type=int, default=60, help="Part size (a call carries 64 MiB in all)."
    )
    packing.add_argument("--level", type=int, default=9, help="zstd compression level.")
    unpacking = commands.add_parser("unpack", help="join the parts and extract the packages")
    unpacking.add_argument("--parts", type=Path, default=Path(".gpu_wheels"))
    unpacking.add_argument("--target", type=Path, default=Path("/tmp/tml-site"))
    args = parser.parse_args(argv)
    if args.command == "pack":
        return pack(args.out, args.part_mib, args.level)
    return unpack(args.parts, args.target)


if __name__ == "__main__":
    sys.exit(main())
