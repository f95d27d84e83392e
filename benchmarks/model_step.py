"""Training-step throughput of the production-shaped ranker, read against the GEMM ceilings.

Run:  .venv/bin/python benchmarks/model_step.py [--batch_sizes 128 512 2048] [--steps 8]
      [--rounds 3] [--loss_steps 30] [--compile]

For the model of projects/home/recap/config/local_prod.yaml on synthetic tensors, in this process
with every core, prints:

* the machine (CPU, threads, load average at the start and the end: read figures from a loaded
  machine with care) and the analytic FLOPs of one example's forward + backward (6 x the
  multiply-accumulates of every Linear: 2 forward, 2 for the input gradient, 2 for the weight
  gradient);
* both GEMM ceilings, fp32 and bf16, measured in this run: the *square* one (a 2048^3 GEMM's
  rate divided by the step's FLOPs: the issue's definition) and the *shapes* one (the step's own
  GEMMs, ``x W^T + b``, ``dY W``, ``dY^T x`` per Linear, timed alone);
* the bound that fp32 masters and Adam state put on any step: the shapes' GEMMs plus one fused
  Adam step over the model's parameters, each timed alone (Adam moves 28 bytes per parameter
  whatever the dtype of the GEMMs), as a fraction of both ceilings;
* forward + backward + fused Adam, examples/s from the median step, for the trainer's path
  first (eager; in bf16 the Linear layers' persistent bf16 weight copies refreshed by the
  optimizer step, ``tml.training.bf16_weights``; freed memory kept,
  ``tml.training.host_memory``), then plain autocast, torch.optim.Adam's default, and with
  ``--compile`` the dense part compiled; each as a fraction of both ceilings of its dtype;
* the trainer's path at every batch size;
* the loss curves of fp32 and bf16 on the trainer's path from one initialisation;
* the process's peak RSS.

Timings alternate between the paths and the ceilings round by round, so load elsewhere hits
them alike; every figure is a median.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from projects.home.recap.config import RecapConfig
from projects.home.recap.data.features import build_input_spec
from projects.home.recap.inputs import DenseInputs, InputSpec, RecapBatch
from projects.home.recap.model.model_and_loss import ModelAndLoss, build_model_and_loss
from projects.home.recap.model.ranking_model import compile_dense
from tml.core.config import load_config_from_yaml
from tml.training.bf16_weights import Bf16WeightCopies
from tml.training.host_memory import retain_freed_memory

CONFIG = Path(__file__).resolve().parents[1] / "projects/home/recap/config/local_prod.yaml"
TARGET_FRACTION = 0.85  # of each dtype's square GEMM ceiling at batch 512
LOSS_TOLERANCE = 0.02  # largest relative gap between the bf16 and fp32 loss curves
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
SQUARE = 2048


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per path and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of interleaved timing.")
    parser.add_argument("--loss_steps", type=int, default=30, help="Steps of each loss curve.")
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile.")
    args = parser.parse_args(argv)

    retain_freed_memory()
    config = load_config_from_yaml(RecapConfig, CONFIG)
    spec = build_input_spec(config.train_data, list(config.model.tasks))
    torch.manual_seed(0)
    model = build_model_and_loss(config.model, spec)
    flops = 6 * multiply_accumulates(model)
    print(describe_machine())
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {CONFIG.name}, {parameters / 1e6:.1f} M parameters, {flops / 1e6:.1f} MFLOP")
    print("  per example, forward + backward")

    batch_size = 512 if 512 in args.batch_sizes else args.batch_sizes[0]
    batch = synthetic_batch(spec, batch_size, len(config.model.tasks))
    paths = build_paths(model, args.compile)
    timings = interleaved_timings(paths, model, batch, args.rounds, args.steps)
    ceilings = {
        (kind, name): batch_size / timings[kind, name]
        for kind in ("square", "shapes")
        for name in DTYPES
    }
    print(f"\nGEMM ceilings at batch {batch_size} (ex/s if the step were only GEMMs):")
    for name in DTYPES:
        gflops = flops * batch_size / timings["square", name] / 1e9
        print(
            f"  {name}: square {SQUARE}^3 at {gflops:6.1f} GFLOP/s -> "
            f"{ceilings['square', name]:7.1f} ex/s; the step's GEMM shapes alone -> "
            f"{ceilings['shapes', name]:7.1f} ex/s"
        )
    adam = {name: timings["adam", name] for name in DTYPES}
    print(
        "  with fp32 masters and Adam state, a step also makes Adam's pass over every parameter"
        f" (fused Adam alone: {1e3 * statistics.median(adam.values()):.0f} ms); the step's"
        " GEMMs + that pass bound any such step at:"
    )
    for name in DTYPES:
        bound = batch_size / (timings["shapes", name] + adam[name])
        print(
            f"  {name}: {bound:7.1f} ex/s = {bound / ceilings['square', name]:.1%} of the square"
            f" ceiling, {bound / ceilings['shapes', name]:.1%} of the shapes one"
        )
    print(f"\nforward + backward + Adam at batch {batch_size}, median step:")
    print(f"{'path':<44} {'dtype':>5} {'ex/s':>8} {'of square':>10} {'of shapes':>10}")
    fractions: dict[str, float] = {}
    for label in paths:
        for name in DTYPES:
            if (label, name) not in timings:
                continue
            rate = batch_size / timings[label, name]
            of_square = rate / ceilings["square", name]
            of_shapes = rate / ceilings["shapes", name]
            if label == TRAINER_PATH:
                fractions[name] = of_square
            print(f"{label:<44} {name:>5} {rate:8.1f} {of_square:10.1%} {of_shapes:10.1%}")
    trainer_rates = {name: batch_size / timings[TRAINER_PATH, name] for name in DTYPES}
    print(
        f"  bf16 / fp32 on the trainer's path: {trainer_rates['bf16'] / trainer_rates['fp32']:.2f}x"
    )

    other_sizes = [size for size in args.batch_sizes if size != batch_size]
    if other_sizes:
        print("\nthe trainer's path at other batch sizes (ex/s, median step):")
        print(f"{'batch':>6} {'fp32':>8} {'bf16':>8}")
        for size in other_sizes:
            other = synthetic_batch(spec, size, len(config.model.tasks))
            rates = [
                size
                / statistics.median(
                    step_times(paths[TRAINER_PATH], model, other, dtype, args.rounds * args.steps)
                )
                for dtype in DTYPES.values()
            ]
            print(f"{size:>6} {rates[0]:8.1f} {rates[1]:8.1f}")

    gap, fp32_losses, bf16_losses = loss_curves(config, spec, args.loss_steps)
    print(f"\nloss curves on the trainer's path, {args.loss_steps} steps at batch 512:")
    print(
        f"  fp32: {fp32_losses[0]:.4f} -> {fp32_losses[-1]:.4f}; "
        f"bf16: {bf16_losses[0]:.4f} -> {bf16_losses[-1]:.4f}"
    )
    print(f"  largest relative gap {gap:.2%} (tolerance {LOSS_TOLERANCE:.0%})")
    print(f"\npeak RSS: {peak_rss_mib():,.0f} MiB; {load_average()}")

    print("\ntargets:")
    checks = [
        (
            f"trainer's path, {name}, >= {TARGET_FRACTION:.0%} of the square {name} ceiling",
            fractions[name] >= TARGET_FRACTION,
            f"{fractions[name]:.1%}",
        )
        for name in DTYPES
    ]
    checks.append(
        (
            f"bf16 loss curve within {LOSS_TOLERANCE:.0%} of fp32",
            gap <= LOSS_TOLERANCE,
            f"{gap:.2%}",
        )
    )
    for text, passed, figure in checks:
        print(f"  [{'met' if passed else 'MISSED'}] {text}: {figure}")
    return 0


TRAINER_PATH = "trainer's: eager, bf16 weight copies, fused Adam"


class StepPath:
    """One way of running the step: how the model is prepared and which Adam it uses."""

    def __init__(self, model: ModelAndLoss, *, fused: bool, copies: bool, dtypes: tuple[str, ...]):
        self.model = model
        self.fused = fused
        self.copies = copies
        self.dtypes = dtypes


def build_paths(model: ModelAndLoss, compile_too: bool) -> dict[str, StepPath]:
    paths = {
        TRAINER_PATH: StepPath(model, fused=True, copies=True, dtypes=("fp32", "bf16")),
        "plain autocast (no weight copies), fused Adam": StepPath(
            model, fused=True, copies=False, dtypes=("bf16",)
        ),
        "trainer's, torch.optim.Adam default": StepPath(
            model, fused=False, copies=True, dtypes=("fp32", "bf16")
        ),
    }
    if compile_too:
        compiled = copy.deepcopy(model)
        compile_dense(compiled.model, dynamic=False)
        paths["dense part compiled, fused Adam"] = StepPath(
            compiled, fused=True, copies=False, dtypes=("fp32", "bf16")
        )
    return paths


def step_times(
    path: StepPath, initial: ModelAndLoss, batch: RecapBatch, dtype: torch.dtype | None, steps: int
) -> list[float]:
    """Seconds of each of ``steps`` steps after three of warm-up (compilation included), from
    the path's model, whose weights are put back after."""
    model = path.model
    state = copy.deepcopy(model.state_dict())
    optimizer, copies = make_optimizer_with_copies(
        model, path.fused, path.copies and dtype is not None
    )
    try:
        for _ in range(3):
            train_step(model, optimizer, batch, dtype)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(model, optimizer, batch, dtype)
            times.append(time.perf_counter() - start)
    finally:
        if copies is not None:
            copies.remove()
        model.load_state_dict(state)
    return times


def interleaved_timings(
    paths: dict[str, StepPath], model: ModelAndLoss, batch: RecapBatch, rounds: int, steps: int
) -> dict[tuple[str, str], float]:
    """Median seconds per step of every (path, dtype), and of the square and shapes GEMM
    ceilings (seconds the step's FLOPs would take), rounds interleaved."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    shapes: dict[tuple[int, int], int] = {}
    for linear in linears:
        key = (linear.in_features, linear.out_features)
        shapes[key] = shapes.get(key, 0) + 1
    flops = 6 * multiply_accumulates(model) * batch.batch_size
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, dtype in DTYPES.items():
            torch_dtype = dtype or torch.float32
            square = square_gemm_seconds(torch_dtype)
            samples.setdefault(("square", name), []).append(square * flops / (2 * SQUARE**3))
            shape_seconds = 0.0
            for (fan_in, fan_out), count in shapes.items():
                gemms = linear_gemms(batch.batch_size, fan_in, fan_out, torch_dtype)
                shape_seconds += count * median_seconds(gemms, 3)
            samples.setdefault(("shapes", name), []).append(shape_seconds)
            samples.setdefault(("adam", name), []).append(adam_seconds(model))
            for label, path in paths.items():
                if name in path.dtypes:
                    times = step_times(path, model, batch, dtype, steps)
                    samples.setdefault((label, name), []).extend(times)
    return {key: statistics.median(values) for key, values in samples.items()}


def adam_seconds(model: nn.Module) -> float:
    """Median seconds of one fused Adam step over parameters shaped like the model's, alone:
    the pass over fp32 masters, gradients and both moments (28 bytes per parameter moved)
    that no step keeping fp32 masters and Adam state avoids."""
    parameters = [torch.zeros_like(p, requires_grad=True) for p in model.parameters()]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer = make_optimizer(parameters, fused=True)
    return median_seconds(optimizer.step, 3)


def multiply_accumulates(model: nn.Module) -> int:
    """Multiply-accumulates of one example's forward: those of every Linear (the element-wise
    rest is negligible next to them). A training step costs 6 x this per example: 2 forward,
    2 for the input gradient, 2 for the weight gradient."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def synthetic_batch(spec: InputSpec, batch_size: int, tasks: int, seed: int = 0) -> RecapBatch:
    """Heavy-tailed continuous values, binary flags, TwHIN-like vectors, teacher labels.

    Labels come from a fixed random linear teacher over the features, so a loss curve falls.
    """
    widths = spec.widths
    generator = torch.Generator().manual_seed(seed)
    continuous = torch.randn(batch_size, widths.continuous, generator=generator).exp() * 10
    binary = torch.randint(0, 2, (batch_size, widths.binary), generator=generator)
    embeddings = {
        name: torch.randn(batch_size, width, generator=generator)
        for name, width in widths.embeddings.items()
    }
    teacher = torch.Generator().manual_seed(1234)
    signal = torch.log1p(continuous[:, :64]) @ torch.randn(64, tasks, generator=teacher) / 8
    labels = torch.bernoulli(torch.sigmoid(signal - 2.0), generator=generator)
    # Drawn in this order so the batches (and the loss curves) stay as they were.
    discrete = torch.randint(0, 100, (batch_size, widths.discrete), generator=generator)
    inputs = DenseInputs(
        continuous_features=continuous,
        binary_features=binary.float(),
        discrete_features=discrete,
        **embeddings,
    )
    return RecapBatch(inputs=inputs, labels=labels, weights=torch.ones(batch_size, tasks))


def make_optimizer(
    model: nn.Module | list[torch.Tensor], fused: bool, lr: float = 1e-4
) -> torch.optim.Optimizer:
    """Adam with the config's betas; ``fused=False`` is torch.optim.Adam's default path."""
    options = {"fused": True} if fused else {}
    parameters = model.parameters() if isinstance(model, nn.Module) else model
    return torch.optim.Adam(parameters, lr=lr, betas=(0.95, 0.999), eps=1e-7, **options)


def make_optimizer_with_copies(
    model: nn.Module, fused: bool, copies: bool, lr: float = 1e-4
) -> tuple[torch.optim.Optimizer, Bf16WeightCopies | None]:
    """Adam, and with ``copies`` the Linear layers' bf16 weight copies refreshed after each of
    its steps, as the trainer sets them up under bf16 autocast (``copies.remove()`` undoes)."""
    optimizer = make_optimizer(model, fused, lr)
    if not copies:
        return optimizer, None
    weight_copies = Bf16WeightCopies(model)
    optimizer.register_step_post_hook(lambda *_: weight_copies.refresh())
    return optimizer, weight_copies


def train_step(
    model: ModelAndLoss,
    optimizer: torch.optim.Optimizer,
    batch: RecapBatch,
    dtype: torch.dtype | None,
) -> float:
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss, _ = model(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def square_gemm_seconds(dtype: torch.dtype) -> float:
    """Median seconds of one SQUARE^3 GEMM."""
    a, b = torch.randn(SQUARE, SQUARE, dtype=dtype), torch.randn(SQUARE, SQUARE, dtype=dtype)
    return median_seconds(lambda: a @ b, 5)


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {load_average()}"
    )


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest finished child), in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def linear_gemms(
    batch_size: int, fan_in: int, fan_out: int, dtype: torch.dtype
) -> Callable[[], None]:
    """The three GEMMs of one Linear layer's training step, on random operands."""
    x = torch.randn(batch_size, fan_in, dtype=dtype)
    weight = torch.randn(fan_out, fan_in, dtype=dtype)
    bias = torch.randn(fan_out, dtype=dtype)
    grad = torch.randn(batch_size, fan_out, dtype=dtype)

    def gemms() -> None:
        torch.addmm(bias, x, weight.t())
        grad.mm(weight)
        grad.t().mm(x)

    return gemms


def loss_curves(
    config: RecapConfig, spec: InputSpec, steps: int
) -> tuple[float, list[float], list[float]]:
    """fp32 and bf16 losses on the trainer's path (bf16: the Linear layers' weight copies) from
    one initialisation on the same batches (eager, fused Adam, lr 3e-4), and the largest
    relative gap between them."""
    torch.manual_seed(0)
    initial = build_model_and_loss(config.model, spec)
    curves = []
    for dtype in DTYPES.values():
        model = copy.deepcopy(initial)
        optimizer, _ = make_optimizer_with_copies(model, True, dtype is not None, lr=3e-4)
        torch.manual_seed(1)  # the same dropout masks in both runs
        curves.append(
            [
                train_step(model, optimizer, synthetic_batch(spec, 512, 10, seed=step), dtype)
                for step in range(steps)
            ]
        )
    gap = max(abs(b - a) / a for a, b in zip(*curves, strict=True))
    return gap, curves[0], curves[1]


if __name__ == "__main__":
    sys.exit(main())
