"""The training loop: pipeline steps, gradient accumulation, logging, checkpoints, evaluation.

The model is a (sharded) module whose forward returns ``(loss, outputs)`` with ``outputs["loss"]``
and optionally ``outputs["task_losses"]`` detached, as torchrec's train pipelines expect. One
optimizer step consumes ``gradient_accumulation`` micro-batches whose gradients are summed (each
micro-batch's loss is divided by their number, so N micro-batches of B examples step exactly as
one batch of N*B would).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.train_pipeline.gradient_accumulation import (
    GradientAccumulationConfig,
    GradientAccumulationWrapper,
)
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tml.checkpoint import CheckpointManager, load_weights
from tml.core.errors import UserInputError
from tml.distributed import DistributedEnvironment, average_running_statistics
from tml.observability.metric_loggers import MetricLoggers
from tml.optimizers.scheduler import LearningRateScheduler
from tml.training.bf16_support import warn_if_bf16_is_emulated
from tml.training.bf16_weights import Bf16WeightCopies
from tml.training.data_position import PositionTrackingIterator, StatefulBatches
from tml.training.host_memory import retain_freed_memory
from tml.training.preemption import StopRequest
from tml.training.watchdog import StepWatchdog

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(UserInputError):
    """The loss or the weights stopped being finite: the job stops without writing them.

    A user error in practice (a learning rate far too high, inputs with huge values): the same
    config fails the same way when relaunched.
    """

    same_on_every_rank = True  # the ranks agree on the check over a collective


class Evaluate(Protocol):
    """Evaluates the model at a step; owns resources (loaders, loggers) released by close."""

    def __call__(self, model: torch.nn.Module, step: int) -> object: ...

    def discard_after(self, step: int) -> None:
        """Forgets results logged after ``step`` (the job resumes there and repeats them)."""
        ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log, checkpoint and evaluate."""

    num_train_steps: int
    log_every_n: int
    checkpoint_every_n: int
    eval_every_n: int | None = None
    gradient_accumulation: int = 1
    per_rank_batch_size: int = 1
    autocast_dtype: torch.dtype | None = None
    task_names: tuple[str, ...] = ()
    # A rank on which no step finishes within this many seconds fails the job (None: never).
    step_timeout_s: float | None = None


class Trainer:
    """Trains a model for exactly ``num_train_steps`` optimizer steps, resumably.

    The trainer owns what it is given that holds resources (checkpoints, loggers, evaluation)
    and releases them in :meth:`close`, on success and on failure; use it as a context manager.

    Args:
        model: The (sharded) model with its loss.
        optimizer: Optimizer over every trainable parameter (fused ones included).
        scheduler: Sets each group's learning rate before each step.
        batches: The training data, repeating, with a resumable position.
        environment: This process's place in the job.
        checkpoints: Where checkpoints go and come from.
        loggers: Receive the training metrics on the main rank.
        settings: Length and cadence.
        evaluate: Called with the model and the step every ``eval_every_n`` steps and at the end.
        extra_metrics: Called on every rank at each log step for more metrics to log (it may
            run collectives).
        stop_request: Checked before every step (a collective); once any rank has received a
            stop signal, every rank stops there with a checkpoint and without evaluating.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LearningRateScheduler,
        batches: StatefulBatches,
        environment: DistributedEnvironment,
        checkpoints: CheckpointManager,
        loggers: MetricLoggers,
        settings: LoopSettings,
        evaluate: Evaluate | None = None,
        extra_metrics: Callable[[], Mapping[str, float]] | None = None,
        stop_request: StopRequest | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.batches = batches
        self.environment = environment
        self.checkpoints = checkpoints
        self.loggers = loggers
        self.settings = settings
        self.evaluate = evaluate
        self.extra_metrics = extra_metrics
        self.stop_request = stop_request
        self.stopped_early = False
        self.step = 0
        self._first_step = 0
        self.wall_time = 0.0
        self._interval = _IntervalStats(environment.device, len(settings.task_names))
        self._finite = _FiniteLossGuard(environment.device)
        self._watchdog = StepWatchdog(settings.step_timeout_s, environment.rank)
        # Under bf16 autocast the Linear layers keep bf16 copies of their weights, refreshed by
        # each optimizer step, instead of autocast casting all weights again in every forward.
        self._bf16_copies: Bf16WeightCopies | None = None
        if settings.autocast_dtype == torch.bfloat16:
            if environment.is_main:
                warn_if_bf16_is_emulated(environment.device)
            copies = Bf16WeightCopies(model)
            optimizer.register_step_post_hook(lambda *_: copies.refresh())
            self._bf16_copies = copies

    # State -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds besides the per-rank data position."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": {"step": self.step, "wall_time": self.wall_time},
        }

    def resume(self) -> bool:
        """Continues from the newest complete checkpoint of this job, if any."""
        step = self.checkpoints.latest_step()
        if step is None:
            return False
        # Optimizer state is created lazily by the first step; loading in place needs it now.
        # (A step on zero gradients changes no parameter, and the loaded state replaces its own.)
        init_state = getattr(self.optimizer, "init_state", None)
        if init_state is not None:
            init_state()
        state = self.state_dict()
        rank_state = self.checkpoints.load(state, step)
        self._load_state(state)
        self._restore_data_position(rank_state, step)
        # The steps after the checkpoint are trained (and logged) again: their first records,
        # from before the restart, go, so that each step is in the logs once.
        self.loggers.discard_after(self.step)
        if self.evaluate is not None:
            self.evaluate.discard_after(self.step)
        logger.info("resumed from step %d", self.step)
        return True

    def warm_start(self, folder: Path) -> None:
        """Loads only the model's weights from a checkpoint folder; the step stays 0."""
        load_weights(self.model, folder, self.environment.rank)
        self._refresh_bf16_copies()
        logger.info("warm-started the weights from %s", folder)

    # Teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Finishes a checkpoint still being written and closes the loggers and evaluation.

        Every resource is closed even when closing another one fails.
        """
        closers = [self.checkpoints.close, self.loggers.close]
        if self.evaluate is not None:
            closers.append(self.evaluate.close)
        with contextlib.ExitStack() as stack:
            for close in closers:
                stack.callback(close)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Loop ------------------------------------------------------------------------------------

    def train(self) -> None:
        """Runs optimizer steps until ``num_train_steps``; checkpoints at the end."""
        settings = self.settings
        if self.step >= settings.num_train_steps:
            logger.info(
                "already at step %d of %d: nothing to train", self.step, settings.num_train_steps
            )
            return
        # Every step allocates and frees the same large tensors: keeping freed memory saves a
        # page fault per page per step.
        retain_freed_memory()
        iterator = PositionTrackingIterator(self.batches)
        self._first_step = self.step  # the iterator counts batches from here
        pipeline = self._build_pipeline()
        self.model.train()
        rates: Mapping[str, float] = {}
        with self._progress_bar() as bar, self._watchdog:
            while self.step < settings.num_train_steps:
                self._watchdog.beat(self.step)
                if self.stop_request is not None and self.stop_request.agreed():
                    self._announce_stop()
                    break
                started = time.perf_counter()
                rates = self.scheduler.apply(self.step)
                for _ in range(settings.gradient_accumulation):
                    outputs = pipeline.progress(iterator)
                    self._interval.add(outputs)
                    self._finite.add(outputs["loss"])
                self._finite.step_done()
                # Each rank's batch norm layers track their own batches (torchrec's data
                # parallelism does not broadcast buffers). Averaging after every step, not only
                # before a checkpoint, keeps the ranks equal at every step, so a checkpoint
                # written at any step (a preempted one too) resumes bit-exactly.
                average_running_statistics(self.model)
                self.step += 1
                elapsed = time.perf_counter() - started
                self.wall_time += elapsed
                self._interval.elapsed += elapsed
                self._interval.steps += 1
                bar.update(1)
                self.checkpoints.poll()
                self._after_step(rates, iterator, pipeline)
        if self._interval.steps:
            self._log(rates)
        # Stopped before its first step, a resumed job already has its checkpoint.
        if self.step % settings.checkpoint_every_n != 0 and self.step > self._first_step:
            self._save_checkpoint(iterator)
        evaluate = self.evaluate is not None and not self._evaluated_at(self.step)
        if evaluate and not self.stopped_early:  # a preempted job has no time to evaluate
            self._run_evaluation(pipeline)
        self.checkpoints.wait()
        if self.stopped_early:
            logger.info("stopped at step %d with a checkpoint; a relaunch resumes there", self.step)

    def _announce_stop(self) -> None:
        self.stopped_early = True
        received = self.stop_request.received if self.stop_request is not None else None
        if received is not None:
            # Every rank that received the signal says so: the one that did may not be rank 0.
            logger.warning(
                "rank %d received %s: every rank stops after step %d",
                self.environment.rank,
                received.name,
                self.step,
            )

    def _after_step(
        self,
        rates: Mapping[str, float],
        iterator: PositionTrackingIterator,
        pipeline: Any,
    ) -> None:
        if self.step % self.settings.log_every_n == 0:
            self._log(rates)
        if self.step % self.settings.checkpoint_every_n == 0:
            self._save_checkpoint(iterator)
        if self.evaluate is not None and self._evaluated_at(self.step):
            self._run_evaluation(pipeline)

    def _evaluated_at(self, step: int) -> bool:
        every = self.settings.eval_every_n
        return every is not None and step % every == 0

    def _build_pipeline(self) -> Any:
        accumulation = self.settings.gradient_accumulation
        autocast_dtype = self.settings.autocast_dtype
        device_type = self.environment.device.type

        def forward(batch: Any) -> tuple[torch.Tensor, Any]:
            autocast = (
                torch.autocast(device_type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                loss, outputs = self.model(batch)
            return loss / accumulation, outputs

        pipeline = TrainPipelineSparseDist(
            self.model, self.optimizer, self.environment.device, custom_model_fwd=forward
        )
        if accumulation == 1:
            return pipeline
        return GradientAccumulationWrapper(
            pipeline,
            self.optimizer,
            self.model,
            GradientAccumulationConfig(is_enabled=True, num_steps=accumulation),
        )

    def _log(self, rates: Mapping[str, float]) -> None:
        self._check_finite(weights=False)
        totals = self._interval.all_reduced()
        steps = self._interval.steps
        elapsed = max(self._interval.elapsed, 1e-9)
        examples = steps * self.settings.gradient_accumulation * self.settings.per_rank_batch_size
        metrics = {"loss": totals["loss"]}
        for name, value in zip(self.settings.task_names, totals["task_losses"], strict=True):
            metrics[f"loss/{name}"] = value
        metrics.update({f"lr/{group}": rate for group, rate in rates.items()})
        metrics["steps_per_second"] = steps / elapsed
        metrics["examples_per_second_per_worker"] = examples / elapsed
        metrics["examples_per_second"] = examples * self.environment.world_size / elapsed
        metrics["wall_time"] = self.wall_time
        if self.extra_metrics is not None:
            metrics.update(self.extra_metrics())
        self.loggers.log(self.step, metrics)
        self._interval.reset()

    def _check_finite(self, *, weights: bool) -> None:
        """Raises on every rank when the loss of any step so far, or (``weights``) any weight,
        on any rank is not finite (a collective)."""
        first_bad_step = self._finite.first_bad_step()
        bad_weights = _count_non_finite(self.model.state_dict()) if weights else 0
        if first_bad_step is None and not bad_weights:
            return
        newest = self.checkpoints.latest_step()
        kept = "none written" if newest is None else f"the newest complete one is step {newest}"
        what = (
            f"the loss is not finite from step {first_bad_step}"
            if first_bad_step is not None
            else "the loss is finite"
        )
        if bad_weights:
            what += f" and {bad_weights} weight tensors (counted per rank) are not"
        raise NonFiniteTrainingError(
            f"{what} (checked at step {self.step}): stopping without a checkpoint ({kept}); "
            "lower the learning rates or check the inputs for huge values"
        )

    def _save_checkpoint(self, iterator: PositionTrackingIterator) -> None:
        self._check_finite(weights=True)
        consumed = (self.step - self._first_step) * self.settings.gradient_accumulation
        rank_state = {
            "data": iterator.position_after(consumed),
            "world_size": self.environment.world_size,
        }
        self.checkpoints.save(self.step, self.state_dict(), rank_state)

    def _run_evaluation(self, pipeline: Any) -> None:
        assert self.evaluate is not None
        inner = getattr(pipeline, "_pipeline", pipeline)
        # The pipeline rewrites sharded modules' forwards for overlap; evaluation needs the
        # plain forward, so the model is detached for the duration.
        model = inner.detach()
        try:
            with self._watchdog.paused():
                self.evaluate(model, self.step)
        finally:
            model.train()
            inner.attach(model)

    def _refresh_bf16_copies(self) -> None:
        if self._bf16_copies is not None:
            self._bf16_copies.refresh()

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self._refresh_bf16_copies()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["progress"]["step"])
        self.wall_time = float(state["progress"]["wall_time"])
        # Fused kernels count their own steps (fbgemm's Adam corrects its bias by that count),
        # outside the optimizer's state dict: torchrec's optimizers take it from here.
        set_optimizer_step = getattr(self.optimizer, "set_optimizer_step", None)
        if set_optimizer_step is not None:
            set_optimizer_step(self.step)

    def _restore_data_position(self, rank_state: dict[str, Any] | None, step: int) -> None:
        if rank_state is not None and rank_state.get("world_size") == self.environment.world_size:
            try:
                self.batches.load_state_dict(rank_state["data"])
            except UserInputError as error:
                # E.g. files were added under the inputs glob since: an exact resume is not
                # possible, and refusing to resume would lose the training done so far.
                logger.warning("%s; reading data from the start", error)
            return
        # Another number of ranks wrote the checkpoint (this rank may have no file of its own):
        # the old ranks' positions together say what of the epoch is left to share out.
        rank_states = self.checkpoints.rank_states(step)
        if not rank_states:
            logger.warning("the checkpoint has no data position; reading data from the start")
            return
        self._reshard_data_position(rank_states)

    def _reshard_data_position(self, rank_states: list[dict[str, Any]]) -> None:
        reshard = getattr(self.batches, "load_resharded_state_dicts", None)
        old_world_size = len(rank_states)
        if reshard is None or any("data" not in state for state in rank_states):
            logger.warning(
                "the checkpoint was written by %d ranks, this job has %d, and the data cannot "
                "be reshared: data is read from the start",
                old_world_size,
                self.environment.world_size,
            )
            return
        try:
            report = reshard([state["data"] for state in rank_states])
        except UserInputError as error:
            logger.warning("%s; reading data from the start", error)
            return
        logger.info(
            "the checkpoint was written by %d ranks, this job has %d: epoch %d continues; of "
            "the %d rows the old ranks had in it, %d read are skipped and the other %d are "
            "shared over the ranks (%d to this one); granularity one shuffle window: %d rows "
            "of windows an old rank had partly read are read again",
            report.old_world_size,
            self.environment.world_size,
            report.epoch,
            report.rows_in_epoch,
            report.rows_skipped,
            report.rows_remaining,
            report.rows_for_this_rank,
            report.rows_read_again,
        )

    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator[tqdm]:
        interactive = sys.stderr.isatty()
        with logging_redirect_tqdm():
            bar = tqdm(
                total=self.settings.num_train_steps,
                initial=self.step,
                desc="train",
                unit="step",
                disable=not self.environment.is_main,
                mininterval=0.5 if interactive else 30.0,
                dynamic_ncols=True,
            )
            try:
                yield bar
            finally:
                bar.close()


class _IntervalStats:
    """Loss sums over a logging interval, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, num_tasks: int) -> None:
        self._device = device
        self._num_tasks = num_tasks
        self.reset()

    def reset(self) -> None:
        # [loss sum, task loss sums..., micro-batch count]
        self._sums = torch.zeros(self._num_tasks + 2, dtype=torch.float64, device=self._device)
        self.elapsed = 0.0
        self.steps = 0

    def add(self, outputs: Mapping[str, torch.Tensor]) -> None:
        self._sums[0] += outputs["loss"].double()
        if self._num_tasks:
            self._sums[1:-1] += outputs["task_losses"].double()
        self._sums[-1] += 1

    def all_reduced(self) -> dict[str, Any]:
        sums = self._sums.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        count = max(float(sums[-1]), 1.0)
        means = (sums / count).tolist()
        return {"loss": means[0], "task_losses": means[1:-1]}


class _FiniteLossGuard:
    """Remembers, on the device, the first step whose loss was not finite; read only at log and
    checkpoint steps, so a GPU job does not wait for the device at every step."""

    def __init__(self, device: torch.device) -> None:
        self._step = torch.zeros((), dtype=torch.int64, device=device)
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_now = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, loss: torch.Tensor) -> None:
        self._bad_now |= ~torch.isfinite(loss.detach()).all()

    def step_done(self) -> None:
        self._step += 1
        first = self._bad_now & (self._first_bad < 0)
        self._first_bad = torch.where(first, self._step, self._first_bad)
        self._bad_now.zero_()

    def first_bad_step(self) -> int | None:
        """The first step (over all ranks) whose loss was not finite (a collective)."""
        # The earliest over ranks: MIN with "none" as the largest value.
        none = torch.iinfo(torch.int64).max
        first = torch.where(self._first_bad < 0, none, self._first_bad).reshape(1).cpu()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first.item())
        return None if value == none else value


def _count_non_finite(state: Mapping[str, Any]) -> int:
    """Non-finite floating tensors in a model state dict, over all ranks (a collective)."""
    count = 0
    for value in state.values():
        if isinstance(value, ShardedTensor):
            tensors = [shard.tensor for shard in value.local_shards()]
        elif isinstance(value, torch.Tensor):
            tensors = [value]
        else:
            continue
        count += sum(
            1 for tensor in tensors if tensor.is_floating_point() and not tensor.isfinite().all()
        )
    total = torch.tensor([count], dtype=torch.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return int(total.item())
