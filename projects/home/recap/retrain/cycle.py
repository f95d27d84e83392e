"""One retraining cycle, in phases that each record their result in the cycle's registry entry:

1. plan: resolve the window, choose the warm start (the promoted model, none, or a named one)
   and note the promoted model as the incumbent; write the candidate's job config;
2. train: the candidate job, through the launcher (torchrun), resuming its own checkpoints;
3. evaluate: the candidate, then the incumbent, on the window's held-out slice;
4. gate: the verdict (:mod:`.gate`);
5. export the candidate that passed, then move the pointer to it (or record the rejection).

A phase whose result is recorded is never run again, and one that was interrupted is run again
from its start (training from its newest checkpoint), so a cycle killed anywhere and run again
ends with the registry an uninterrupted run would have left. The cycle holds the registry's lock
from planning to the end, so two cycles never promote at once.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from projects.home.recap.config import RecapConfig
from projects.home.recap.inference_config import ranking_weights
from projects.home.recap.job_folder import JobFolder
from projects.home.recap.retrain.config import RetrainingConfig, check_retraining, gated_tasks
from projects.home.recap.retrain.evaluation import evaluate_checkpoint
from projects.home.recap.retrain.gate import judge
from projects.home.recap.retrain.launch import ChildFailedError, Children
from projects.home.recap.retrain.outcome import ExitCode
from projects.home.recap.retrain.registry import (
    EVALUATED,
    EXPORTED,
    FINISHED,
    GATED,
    PLANNED,
    PROMOTED,
    REJECTED,
    TRAINED,
    Registry,
    child_log,
    export_cycle,
)
from projects.home.recap.retrain.window import (
    HOLDOUT,
    DataWindow,
    config_holdout,
    cycle_id,
    holdout_data,
    resolve_window,
    training_config,
)
from tml.checkpoint import CheckpointNotFoundError, checkpoint_folder, complete_steps
from tml.core.config import ConfigValueError, validate_config
from tml.core.errors import UserInputError
from tml.observability.metric_json import metrics_from_json, metrics_to_json
from tml.storage import Lock, as_path

logger = logging.getLogger(__name__)

# --warm_start choices besides a cycle id or a checkpoint path.
FROM_PROMOTED = "promoted"
FROM_SCRATCH = "scratch"
# Order of the phases an entry goes through.
_ORDER = (PLANNED, TRAINED, EVALUATED, GATED, EXPORTED, PROMOTED)


class Outcome(enum.StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ALREADY_DONE = "already done"
    NO_NEW_DATA = "no new data"
    FAILED = "failed"


EXIT_CODES = {
    Outcome.PROMOTED: ExitCode.PROMOTED,
    Outcome.REJECTED: ExitCode.REJECTED,
    Outcome.ALREADY_DONE: ExitCode.PROMOTED,
    Outcome.NO_NEW_DATA: ExitCode.NO_NEW_DATA,
    Outcome.FAILED: ExitCode.FAILED,
}


@dataclasses.dataclass(frozen=True)
class CycleRequest:
    """What the command was asked to do.

    Args:
        config: The job config (overrides applied); its ``train_data`` reads dated folders.
        registry: Where cycles and the pointer live.
        end: The window's newest folder (YYYY/MM/DD or YYYY/MM/DD/HH); None: the newest
            complete one.
        warm_start: ``promoted`` (default), ``scratch``, a cycle id of the registry, or a
            checkpoint folder (or a job's save_dir).
    """

    config: RecapConfig
    registry: Registry
    end: str | None = None
    warm_start: str = FROM_PROMOTED

    @property
    def retraining(self) -> RetrainingConfig:
        return self.config.retraining or RetrainingConfig()


@dataclasses.dataclass
class CycleResult:
    """How a cycle ended: its outcome, id, entry and a one-line summary."""

    outcome: Outcome
    cycle: str | None
    summary: str
    entry: dict[str, Any] | None = None

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.outcome]


def _reached(entry: dict[str, Any], phase: str) -> bool:
    """Whether the entry has recorded ``phase`` (a rejected cycle has passed every phase)."""
    if entry["phase"] == REJECTED:
        return True
    return _ORDER.index(entry["phase"]) >= _ORDER.index(phase)


def load_recorded_config(registry: Registry, cycle: str) -> RecapConfig:
    """A cycle's job config as recorded (resolved: no variables substituted again)."""
    path = registry.config_file(cycle)
    return validate_config(RecapConfig, yaml.safe_load(path.read_text()), str(path))


class Cycle:
    """The phases of one cycle; :meth:`run` runs those not yet recorded.

    Args:
        request: What to do.
        window: The resolved window.
        cycle: The cycle's id.
        lease: The registry lock, held by the caller.
        children: Runs the child processes.
        work: A local folder for files the children read.
    """

    def __init__(
        self,
        request: CycleRequest,
        window: DataWindow,
        cycle: str,
        lease: Lock,
        children: Children,
        work: Path,
    ) -> None:
        self.request = request
        self.registry = request.registry
        self.window = window
        self.cycle = cycle
        self.lease = lease
        self.children = children
        self.work = work
        self.entry: dict[str, Any] = self.registry.entry(cycle) or {}

    def run(self) -> CycleResult:
        if not self.entry:
            self.plan()
        if not _reached(self.entry, TRAINED):
            self.train()
        self.reconcile_incumbent()
        if not _reached(self.entry, EVALUATED):
            self.evaluate_candidate()
            self.evaluate_incumbent()
        if not _reached(self.entry, GATED):
            self.gate()
        self.export()
        self.point()
        return self.result()

    # Phases -----------------------------------------------------------------------------------

    def plan(self) -> None:
        """Records the window, the warm start and the incumbent, and the candidate's config."""
        pointer = self.registry.promoted()
        incumbent = (
            {"cycle": pointer["cycle"], "checkpoint": pointer["checkpoint"]} if pointer else None
        )
        warm_start = self._warm_start(pointer)
        job = training_config(
            self.request.config,
            self.window,
            str(self.registry.job_dir(self.cycle)),
            warm_start.get("checkpoint"),
        )
        self.registry.write_file(self.registry.config_file(self.cycle), job.pretty_print())
        dated = job.train_data.explicit_date_inputs or job.train_data.explicit_datetime_inputs
        assert dated is not None  # resolve_window checked it
        self.entry = {
            "cycle": self.cycle,
            "created_at": time.time(),
            "window": {
                "end": self.window.label,
                "hourly": self.window.hourly,
                "train_data": dated.model_dump(mode="json"),
                "holdout": config_holdout(job) or f"{self.window.label} (newest folder)",
            },
            "warm_start": warm_start,
            "incumbent": incumbent,
            "phase": PLANNED,
            "metrics": {},
            "verdict": None,
            "checkpoint": None,
            "export": None,
        }
        self.registry.save_entry(self.entry)
        logger.info(
            "cycle %s planned: window ending %s, warm start %s",
            self.cycle,
            self.window.label,
            warm_start.get("cycle") or warm_start.get("checkpoint") or "none",
        )

    def train(self) -> None:
        """Trains the candidate to its last step (resuming its own checkpoints)."""
        config = load_recorded_config(self.registry, self.cycle)
        final = config.training.num_train_steps
        checkpoints = JobFolder(config.training.save_dir).checkpoints
        if final not in complete_steps(checkpoints):
            config_file = self.work / "config.yaml"
            config_file.write_text(self.registry.config_file(self.cycle).read_text())
            with child_log(self.registry, self.cycle, "train", self.work) as log_file:
                self.children.train(config_file, self.request.retraining.launch, log_file)
            steps = complete_steps(checkpoints)
            if final not in steps:
                reached = steps[-1] if steps else 0
                raise ChildFailedError(
                    f"training stopped at step {reached} of {final} (preempted?)"
                )
        self.lease.check()
        self.entry["checkpoint"] = str(checkpoint_folder(checkpoints, final))
        self.entry["phase"] = TRAINED
        self.registry.save_entry(self.entry)

    def evaluate_candidate(self) -> None:
        """Evaluates the candidate on the held-out slice."""
        if "candidate" in self.entry["metrics"]:
            return
        config = load_recorded_config(self.registry, self.cycle)
        values = self._evaluate(config, self.entry["checkpoint"])
        self.lease.check()
        self.entry["metrics"]["candidate"] = metrics_to_json(values)
        self.registry.save_entry(self.entry)

    def evaluate_incumbent(self) -> None:
        """Evaluates the promoted model (if any) on the same slice; evaluation is then done."""
        incumbent = self.entry["incumbent"]
        if incumbent is not None and "incumbent" not in self.entry["metrics"]:
            # Built from its own recorded config: the model may have changed since.
            theirs = load_recorded_config(self.registry, incumbent["cycle"])
            values = self._evaluate(theirs, incumbent["checkpoint"])
            self.entry["metrics"]["incumbent"] = metrics_to_json(values)
        self.lease.check()
        self.entry["phase"] = EVALUATED
        self.registry.save_entry(self.entry)

    def _evaluate(self, model_config: RecapConfig, checkpoint: str) -> dict[str, float]:
        # The slice is this cycle's, whichever model is evaluated on it.
        config = load_recorded_config(self.registry, self.cycle)
        return evaluate_checkpoint(
            model_config,
            as_path(checkpoint),
            config_holdout(config) or HOLDOUT,
            holdout_data(config, self.window),
            self.request.retraining.evaluation_batches,
        )

    def gate(self) -> None:
        """Records the gate's verdict."""
        config = load_recorded_config(self.registry, self.cycle)
        retraining = config.retraining or RetrainingConfig()
        tasks = list(config.model.tasks)
        metrics = self.entry["metrics"]
        incumbent = metrics.get("incumbent")
        verdict = judge(
            retraining.gate,
            tasks=gated_tasks(retraining.gate.per_task, config) if retraining.gate.per_task else [],
            weights=ranking_weights(config.inference, tasks),
            candidate=metrics_from_json(metrics["candidate"]),
            incumbent=metrics_from_json(incumbent) if incumbent is not None else None,
        )
        self.lease.check()
        self.entry["verdict"] = verdict.to_json()
        self.entry["phase"] = GATED
        self.registry.save_entry(self.entry)
        logger.info("gate: %s", verdict.reason())

    def export(self) -> None:
        """Exports a candidate that passed the gate into the registry."""
        if not self.entry["verdict"]["passed"] or _reached(self.entry, EXPORTED):
            return
        export_cycle(self.registry, self.entry, self.children)
        self.lease.check()
        self.entry["phase"] = EXPORTED
        self.registry.save_entry(self.entry)

    def point(self) -> None:
        """Moves the pointer to an exported candidate, or records the rejection."""
        if self.entry["phase"] in (REJECTED, PROMOTED):
            return
        if not self.entry["verdict"]["passed"]:
            self.entry["phase"] = REJECTED
            self.registry.save_entry(self.entry)
            return
        self.lease.check()
        self.registry.promote(self.cycle, "passed the gate")
        self.entry["phase"] = PROMOTED
        self.registry.save_entry(self.entry)

    # Helpers ----------------------------------------------------------------------------------

    def result(self) -> CycleResult:
        entry = self.entry
        outcome = Outcome.PROMOTED if entry["phase"] == PROMOTED else Outcome.REJECTED
        return CycleResult(outcome, self.cycle, summary_line(outcome, entry), entry)

    def _warm_start(self, pointer: dict[str, Any] | None) -> dict[str, Any]:
        choice = self.request.warm_start
        if choice == FROM_SCRATCH or (choice == FROM_PROMOTED and pointer is None):
            return {"from": choice, "cycle": None, "checkpoint": None}
        if choice == FROM_PROMOTED:
            assert pointer is not None
            return {"from": choice, "cycle": pointer["cycle"], "checkpoint": pointer["checkpoint"]}
        named = self.registry.entry(choice)
        if named is not None:
            if not named.get("checkpoint"):
                raise UserInputError(f"--warm_start: cycle {choice} has no trained checkpoint")
            return {"from": choice, "cycle": choice, "checkpoint": named["checkpoint"]}
        try:
            folder = JobFolder(choice).find_checkpoint(choice)
        except CheckpointNotFoundError as error:
            raise UserInputError(
                f"--warm_start: '{choice}' is neither a cycle of the registry nor a checkpoint "
                f"({error})"
            ) from None
        return {"from": choice, "cycle": None, "checkpoint": str(folder)}

    def _promoted_elsewhere(self) -> bool:
        """Whether the pointer moved (a promotion or rollback by hand) since the incumbent was
        evaluated, which makes the comparison stale; this cycle's own promotion does not."""
        if self.entry["phase"] in (PROMOTED, REJECTED):
            return False
        pointer = self.registry.promoted()
        now = pointer["cycle"] if pointer else None
        recorded = self.entry["incumbent"]["cycle"] if self.entry["incumbent"] else None
        return now not in (recorded, self.cycle)

    def reconcile_incumbent(self) -> None:
        """When the pointer moved by hand (promote, rollback) since this cycle noted the
        incumbent, compares with the model promoted now: its evaluation and the gate run again."""
        if not self._promoted_elsewhere():
            return
        pointer = self.registry.promoted()
        incumbent = (
            {"cycle": pointer["cycle"], "checkpoint": pointer["checkpoint"]} if pointer else None
        )
        logger.warning(
            "the promoted model changed to %s since this cycle compared against %s: comparing "
            "again",
            (incumbent or {}).get("cycle"),
            (self.entry["incumbent"] or {}).get("cycle"),
        )
        self.entry["incumbent"] = incumbent
        self.entry["metrics"].pop("incumbent", None)
        self.entry["verdict"] = None
        if _reached(self.entry, EVALUATED):
            self.entry["phase"] = TRAINED
        self.registry.save_entry(self.entry)


def summary_line(outcome: Outcome, entry: dict[str, Any]) -> str:
    """One line for the orchestrator's log."""
    verdict = entry.get("verdict") or {}
    warm = entry["warm_start"].get("cycle") or entry["warm_start"].get("checkpoint") or "scratch"
    line = (
        f"{outcome.value}: cycle {entry['cycle']} (window {entry['window']['end']}, "
        f"warm start {warm}): {verdict.get('reason', '')}"
    )
    if entry.get("export") and outcome == Outcome.PROMOTED:
        line += f"; export {entry['export']}"
    return line


def prepare(request: CycleRequest) -> tuple[DataWindow, str]:
    """The window and the cycle id of a request.

    Raises:
        NoNewDataError: the window's folder is not there yet.
        UserInputError: the config cannot be retrained (no dated folders, a bad gate).
    """
    config = request.config
    if config.training.initial_checkpoint_dir is not None:
        raise UserInputError(
            "training.initial_checkpoint_dir: a cycle chooses its own warm start; use "
            "--warm_start instead"
        )
    try:
        check_retraining(config, request.retraining)
    except ConfigValueError as error:
        where = ".".join(str(part) for part in error.path)
        raise UserInputError(f"{where}: {error}") from None
    window = resolve_window(config, request.retraining, request.end)
    # The id must not depend on where the cycle saves its job: a fixed stand-in for save_dir.
    probe = training_config(config, window, "<cycle job>", None)
    return window, cycle_id(probe, window, request.warm_start)


def run_cycle(
    request: CycleRequest,
    children: Children | None = None,
    prepared: tuple[DataWindow, str] | None = None,
) -> CycleResult:
    """Runs (or resumes, or recognises as done) the cycle of ``request``, holding the lock.

    Args:
        request: What to do.
        children: Runs the child processes (default: a new runner).
        prepared: :func:`prepare`'s answer, when the caller already has it.

    Raises:
        NoNewDataError, UserInputError, LockHeldError, ChildFailedError, LockLostError.
    """
    window, cycle = prepared or prepare(request)
    registry = request.registry
    done = _finished(registry, cycle, request)
    if done is not None:
        return done
    lease = registry.lock(lease_s=request.retraining.lock_lease_s)
    with lease, tempfile.TemporaryDirectory(prefix="tml-retrain-") as work:
        # Another process may have finished it while this one waited for the lock.
        done = _finished(registry, cycle, request)
        if done is not None:
            return done
        return Cycle(request, window, cycle, lease, children or Children(), Path(work)).run()


def _finished(registry: Registry, cycle: str, request: CycleRequest) -> CycleResult | None:
    entry = registry.entry(cycle)
    if entry is None or entry["phase"] not in FINISHED:
        return None
    if request.end is None:
        # Asked for the newest window, which is done: nothing newer has arrived.
        summary = (
            f"no new data: the newest window ({entry['window']['end']}) was done by cycle "
            f"{cycle} ({entry['phase']})"
        )
        return CycleResult(Outcome.NO_NEW_DATA, cycle, summary, entry)
    summary = f"already done: cycle {cycle} ({entry['phase']}); nothing to do"
    return CycleResult(Outcome.ALREADY_DONE, cycle, summary, entry)


def report(result: CycleResult, registry: Registry, seconds: float) -> dict[str, Any]:
    """The cycle's JSON report."""
    entry = result.entry or {}
    verdict = entry.get("verdict") or {}
    return {
        "outcome": result.outcome.value,
        "exit_code": int(result.exit_code),
        "summary": result.summary,
        "cycle": result.cycle,
        "registry": str(registry.root),
        "window": entry.get("window", {}).get("end"),
        "warm_start": entry.get("warm_start"),
        "incumbent": entry.get("incumbent"),
        "gate": verdict,
        "checkpoint": entry.get("checkpoint"),
        "export": entry.get("export"),
        "promoted": (registry.promoted() or {}).get("cycle"),
        "seconds": round(seconds, 3) if math.isfinite(seconds) else None,
    }
