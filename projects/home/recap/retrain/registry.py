"""The model registry: a folder or bucket prefix, no server. One entry per retraining cycle and a
pointer to the promoted model, which is what a serving system loads.

Layout::

    <registry>/
      PROMOTED                      the pointer (JSON): cycle, window, checkpoint, export, when,
                                    why, and the earlier promotions, newest first (rollback)
      LOCK                          the lock of the cycle or command changing the registry
      cycles/<cycle id>/
        cycle.json                  the entry: window, warm start, phase, metrics of candidate
                                    and promoted model, the gate's verdict, checkpoint, export
        config.yaml                 the candidate's job config, resolved
        job/                        the candidate's save_dir (checkpoints, metric streams)
        export/model.pt2            the servable export (made when the cycle is promoted)
        logs/<child>-<n>.log        output of the training and export processes
        report.json                 the cycle's report, as the command printed it

Every file is written whole (``tml.storage.write_atomically``); the pointer changes in one write,
so a reader sees the old or the new promoted model, never a mixture.

    python -m projects.home.recap.retrain.registry --registry URL list
    ... show CYCLE | promote CYCLE | rollback

(installed as ``tml-recap-registry``). ``promote`` exports the cycle first when it has no export.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from projects.home.recap.retrain.launch import Children
from projects.home.recap.retrain.outcome import ExitCode
from tml.core.cli import exit_status
from tml.core.errors import UserInputError
from tml.observability.logging import setup_logging
from tml.storage import AnyPath, Lock, LockHeldError, RemotePath, as_path, write_atomically

# Entry phases, in order; a cycle records each once it is done with it.
PLANNED = "planned"
TRAINED = "trained"
EVALUATED = "evaluated"
GATED = "gated"
EXPORTED = "exported"
PROMOTED = "promoted"
REJECTED = "rejected"
FINISHED = (PROMOTED, REJECTED)


class Registry:
    """The files of a registry and the operations on its pointer.

    Args:
        root: The registry's folder or bucket prefix.
    """

    CYCLES = "cycles"
    POINTER = "PROMOTED"
    LOCK = "LOCK"

    def __init__(self, root: str | os.PathLike | RemotePath) -> None:
        self.root: AnyPath = as_path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # Paths ------------------------------------------------------------------------------------

    def cycle_dir(self, cycle: str) -> AnyPath:
        return self.root / self.CYCLES / cycle

    def entry_file(self, cycle: str) -> AnyPath:
        return self.cycle_dir(cycle) / "cycle.json"

    def config_file(self, cycle: str) -> AnyPath:
        return self.cycle_dir(cycle) / "config.yaml"

    def job_dir(self, cycle: str) -> AnyPath:
        """The candidate's ``training.save_dir``."""
        return self.cycle_dir(cycle) / "job"

    def export_file(self, cycle: str) -> AnyPath:
        return self.cycle_dir(cycle) / "export" / "model.pt2"

    def log_file(self, cycle: str, name: str) -> AnyPath:
        return self.cycle_dir(cycle) / "logs" / f"{name}.log"

    def report_file(self, cycle: str) -> AnyPath:
        return self.cycle_dir(cycle) / "report.json"

    @property
    def pointer_file(self) -> AnyPath:
        return self.root / self.POINTER

    # Entries ----------------------------------------------------------------------------------

    def entry(self, cycle: str) -> dict[str, Any] | None:
        """A cycle's entry, or None when the registry has no such cycle."""
        path = self.entry_file(cycle)
        return json.loads(path.read_text()) if path.is_file() else None

    def require_entry(self, cycle: str) -> dict[str, Any]:
        entry = self.entry(cycle)
        if entry is None:
            raise UserInputError(f"{self.root}: no cycle '{cycle}'")
        return entry

    def save_entry(self, entry: dict[str, Any]) -> None:
        entry["updated_at"] = time.time()
        path = self.entry_file(entry["cycle"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(entry, indent=1, allow_nan=False))

    def write_file(self, path: AnyPath, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)

    def cycles(self) -> list[str]:
        """The ids of the cycles with an entry, oldest window first."""
        folder = self.root / self.CYCLES
        if not folder.is_dir():
            return []
        names = [child.name for child in folder.iterdir()]
        return sorted(name for name in names if self.entry_file(name).is_file())

    # The pointer ------------------------------------------------------------------------------

    def promoted(self) -> dict[str, Any] | None:
        """The pointer: the promoted model and the earlier promotions (None: none yet)."""
        path = self.pointer_file
        return json.loads(path.read_text()) if path.is_file() else None

    def promote(self, cycle: str, reason: str) -> dict[str, Any]:
        """Points at ``cycle``'s model, which must have its checkpoint and export; the model it
        replaces goes on the history. Promoting the promoted cycle changes nothing."""
        entry = self.require_entry(cycle)
        if not entry.get("checkpoint") or not entry.get("export"):
            raise UserInputError(f"cycle {cycle} has no checkpoint and export to promote")
        current = self.promoted()
        if current is not None and current["cycle"] == cycle:
            return current
        record = {
            "cycle": cycle,
            "window": entry["window"]["end"],
            "checkpoint": entry["checkpoint"],
            "export": entry["export"],
            "promoted_at": time.time(),
            "reason": reason,
        }
        history = []
        if current is not None:
            history = [_without_history(current), *current.get("history", [])]
        pointer = {**record, "history": history}
        self._write_pointer(pointer)
        return pointer

    def rollback(self) -> dict[str, Any]:
        """Points back at the model promoted before the current one.

        Raises:
            UserInputError: nothing was promoted before.
        """
        current = self.promoted()
        if current is None or not current.get("history"):
            raise UserInputError(f"{self.root}: no earlier promoted model to roll back to")
        previous, *older = current["history"]
        pointer = {
            **previous,
            "promoted_at": time.time(),
            "reason": f"rollback from {current['cycle']}",
            "history": older,
        }
        self._write_pointer(pointer)
        return pointer

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.pointer_file, json.dumps(pointer, indent=1, allow_nan=False))

    # The lock ---------------------------------------------------------------------------------

    def lock(self, lease_s: float = 120.0, wait_s: float = 0.0) -> Lock:
        """The registry's lock (see :class:`tml.storage.Lock`), not yet acquired.

        Args:
            lease_s: How long the lock outlives a holder that stopped renewing it (renewed
                every third of that).
            wait_s: How long acquiring waits for another holder to let go.
        """
        return Lock(
            self.lock_path,
            owner="retraining registry",
            heartbeat_s=lease_s / 3,
            stale_after_s=lease_s,
            wait_s=wait_s,
            advice="retry once that cycle or registry command has ended",
            # Two cycles starting together must not both promote: no best-effort locks here.
            conditional_writes_required=True,
        )

    @property
    def lock_path(self) -> AnyPath:
        return self.root / self.LOCK


def _without_history(pointer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in pointer.items() if key != "history"}


def export_cycle(registry: Registry, entry: dict[str, Any], children: Children) -> str:
    """Writes the servable export of a cycle's checkpoint into the registry (with the export
    command) and records it in the entry; returns the export's path."""
    cycle = entry["cycle"]
    output = str(registry.export_file(cycle))
    with tempfile.TemporaryDirectory(prefix="tml-retrain-") as work:
        # The export command reads a local config file; the registry may be a bucket.
        config_file = Path(work) / "config.yaml"
        config_file.write_text(registry.config_file(cycle).read_text())
        with child_log(registry, cycle, "export", Path(work)) as log_file:
            children.export(config_file, entry["checkpoint"], output, log_file)
    entry["export"] = output
    registry.save_entry(entry)
    return output


@contextlib.contextmanager
def child_log(registry: Registry, cycle: str, name: str, work: Path) -> Iterator[Path]:
    """A local log file for a child process, kept as ``logs/<name>-<n>.log`` in the registry
    (written in place when the registry is local, copied there afterwards when remote)."""
    number = 1
    while registry.log_file(cycle, f"{name}-{number}").exists():
        number += 1
    target = registry.log_file(cycle, f"{name}-{number}")
    local = target if isinstance(target, Path) else work / f"{name}-{number}.log"
    try:
        yield local
    finally:
        if local != target and local.is_file():
            registry.write_file(target, local.read_text())


# The command line --------------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.4f}"
    return str(value) if value is not None else "-"


def list_lines(registry: Registry) -> list[str]:
    """One line per cycle: id, window, outcome, warm start, gate reason; ``*`` marks the
    promoted one."""
    pointer = registry.promoted()
    promoted = pointer["cycle"] if pointer else None
    lines = []
    for cycle in registry.cycles():
        entry = registry.require_entry(cycle)
        mark = "*" if cycle == promoted else " "
        warm_start = entry["warm_start"]
        warm = warm_start.get("cycle") or warm_start.get("checkpoint") or "scratch"
        verdict = entry.get("verdict") or {}
        lines.append(
            f"{mark} {cycle}  window {entry['window']['end']}  {entry['phase']:<9}  "
            f"from {warm}  {verdict.get('reason', '')}".rstrip()
        )
    if not lines:
        lines.append(f"{registry.root}: no cycles yet")
    return lines


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tml-recap-registry", description="Inspect and change a model registry."
    )
    parser.add_argument("--registry", required=True, help="The registry's folder or URL.")
    parser.add_argument(
        "--wait_s",
        type=float,
        default=0.0,
        help="How long promote/rollback wait for a running cycle's lock (default: not at all).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="One line per cycle; * marks the promoted one.")
    show = commands.add_parser("show", help="A cycle's entry as JSON (default: the pointer).")
    show.add_argument("cycle", nargs="?", help="The cycle id.")
    promote = commands.add_parser("promote", help="Promote a cycle's model by hand.")
    promote.add_argument("cycle", help="The cycle id.")
    commands.add_parser("rollback", help="Point back at the previously promoted model.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: 0, or one line on stderr and 2 (75 when the registry is locked)."""
    args = build_argument_parser().parse_args(argv)
    setup_logging()
    registry = Registry(args.registry)

    def command() -> None:
        if args.command == "list":
            print("\n".join(list_lines(registry)))
        elif args.command == "show":
            shown = registry.require_entry(args.cycle) if args.cycle else registry.promoted()
            print(json.dumps(shown, indent=1))
        else:
            with registry.lock(wait_s=args.wait_s):
                if args.command == "promote":
                    entry = registry.require_entry(args.cycle)
                    if entry.get("phase") not in (*FINISHED, EXPORTED):
                        raise UserInputError(
                            f"cycle {args.cycle} is not finished (phase {entry.get('phase')})"
                        )
                    if not entry.get("export"):
                        export_cycle(registry, entry, Children())
                    pointer = registry.promote(args.cycle, "promoted by hand")
                else:
                    pointer = registry.rollback()
            print(f"promoted: {pointer['cycle']} ({pointer['reason']}); export {pointer['export']}")

    held: list[LockHeldError] = []

    def guarded() -> None:
        try:
            command()
        except LockHeldError as error:  # not a mistake of the user: a later try may work
            held.append(error)

    status = exit_status(guarded)
    if held:
        print(f"error: {held[0]}", file=sys.stderr)
        return ExitCode.LOCKED
    return status


if __name__ == "__main__":
    sys.exit(main())
