"""The child processes of a cycle: training through the product's launcher (docker/entrypoint.sh,
i.e. torchrun with worker restarts and preemption signals passed to the workers) and the export
command. Their output goes to this process's stderr and to a log file kept in the registry."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from projects.home.recap.retrain.config import LaunchConfig
from tml.core.errors import UserInputError

# The Docker images install docker/entrypoint.sh under this name; a source checkout has the file.
INSTALLED_ENTRYPOINT = "tml-entrypoint"
_CHECKOUT_ENTRYPOINT = Path(__file__).resolve().parents[4] / "docker" / "entrypoint.sh"


class ChildFailedError(RuntimeError):
    """A child process of the cycle failed; the message says which and where its log is."""


def entrypoint() -> list[str]:
    """The launcher command: the installed entrypoint, else the checkout's script.

    Raises:
        UserInputError: when neither is there.
    """
    installed = shutil.which(INSTALLED_ENTRYPOINT)
    if installed is not None:
        return [installed]
    if _CHECKOUT_ENTRYPOINT.is_file():
        return ["bash", str(_CHECKOUT_ENTRYPOINT)]
    raise UserInputError(
        f"cannot find the training launcher: neither {INSTALLED_ENTRYPOINT} on PATH nor "
        f"{_CHECKOUT_ENTRYPOINT}"
    )


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment, with torchrun (beside this interpreter) on PATH."""
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(extra)
    return environment


class Children:
    """Runs the cycle's child processes one at a time and passes SIGTERM on to the running one.

    The entrypoint answers SIGTERM by stopping every training rank at its next step boundary
    with a checkpoint, so a preempted cycle loses no training.
    """

    def __init__(self) -> None:
        self.running: subprocess.Popen | None = None

    def forward(self, signal_number: int) -> bool:
        """Sends a signal to the running child; whether there was one."""
        child = self.running
        if child is None or child.poll() is not None:
            return False
        child.send_signal(signal_number)
        return True

    def run(self, command: list[str], log_file: Path, environment: dict[str, str]) -> int:
        """Runs ``command`` to its end, its output copied to stderr and ``log_file``; returns
        its exit status."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("w") as log:
            child = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                text=True,
                errors="replace",
            )
            self.running = child
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    sys.stderr.write(line)
                    log.write(line)
                return child.wait()
            finally:
                if child.poll() is None:  # this process is failing: do not leave it behind
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                self.running = None

    def train(self, config_file: Path, launch: LaunchConfig, log_file: Path) -> None:
        """Trains the job of ``config_file`` (resuming its own checkpoints) to its end.

        Raises:
            ChildFailedError: the launcher exited with an error.
        """
        command = [*entrypoint(), "--config_path", str(config_file)]
        environment = child_environment(
            NPROC_PER_NODE=str(launch.nproc_per_node),
            NNODES="1",
            MAX_RESTARTS=str(launch.max_restarts),
        )
        status = self.run(command, log_file, environment)
        if status != 0:
            raise ChildFailedError(f"training failed (exit status {status}); log: {log_file}")

    def export(self, config_file: Path, checkpoint: str, output: str, log_file: Path) -> None:
        """Writes the servable file of ``checkpoint`` to ``output`` with the export command.

        Raises:
            ChildFailedError: the export command failed.
        """
        command = [
            sys.executable,
            "-m",
            "projects.home.recap.export",
            "--config_path",
            str(config_file),
            "--checkpoint",
            checkpoint,
            "--output",
            output,
        ]
        status = self.run(command, log_file, child_environment())
        if status != 0:
            raise ChildFailedError(f"export failed (exit status {status}); log: {log_file}")
