"""Training throughput of the production-shaped ranker on one GPU, and its model FLOP utilisation.

Run:  python benchmarks/gpu/throughput.py [--batch_sizes 1024 4096 16384] [--steps 20]
      [--compile_batch_size 4096] [--trainer_batch_sizes 4096] [--trainer_steps 30]
      [--peak_tflops N]

For projects/home/recap/config/local_prod.yaml (MaskNet 4 x 1024, ten towers; the FLOPs per
example are counted as benchmarks/model_step.py counts them), prints:

* the device, its bf16 peak (the datasheet's dense figure for known GPUs, else --peak_tflops,
  else a measured 8192^3 bf16 matrix product) and a measured bf16 matrix product beside it;
* model only: forward + backward + fused Adam on one batch resident on the device, at each batch
  size, fp32 with TF32 matmuls (as the trainer sets on GPU) and bf16 autocast: examples/s, TFLOP/s,
  MFU (model FLOPs / s against the bf16 peak, for both dtypes) and peak device memory;
* end to end: the real trainer (Parquet loader, pipeline, logging, a checkpoint) under torchrun
  on one GPU, on generated data, as benchmarks/train_throughput.py runs it;
* last (compiling takes minutes): model only with the dense part compiled (torch.compile) at
  one batch size.

Without CUDA it runs the same steps on the CPU (benchmarks/gpu_check.sh --dry-run, tiny sizes),
against a measured bf16 GEMM rate: the figures then check the script, nothing else.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_step import make_optimizer, multiply_accumulates, synthetic_batch
from train_throughput import end_to_end, generate

from projects.home.recap.build import build_whole_model, model_input_spec
from projects.home.recap.config import RecapConfig
from projects.home.recap.inputs import RecapBatch
from projects.home.recap.model.model_and_loss import ModelAndLoss
from projects.home.recap.model.ranking_model import compile_dense
from tml.core.config import load_config_from_yaml

CONFIG = Path(__file__).resolve().parents[2] / "projects/home/recap/config/local_prod.yaml"
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), by a word of
# the device name. The H200 SXM has the H100 SXM's compute.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
TARGET_MFU = 0.40  # bf16, at a batch size a user would pick
DTYPES = {"fp32/tf32": None, "bf16": torch.bfloat16}


def device_peak(device: torch.device, given: float | None) -> tuple[float, str]:
    """The bf16 peak in FLOP/s and where it comes from."""
    if given is not None:
        return given * 1e12, "--peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for word, tflops in DATASHEET_BF16_TFLOPS.items():
            if word in name:
                return tflops * 1e12, f"datasheet, {word}"
    return matmul_flops(device, torch.bfloat16), "measured bf16 matrix product"


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matrix product (8192^3 on a GPU, 2048^3 on a CPU), best of 5."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=3, repeats=5, summary=min)
    return 2 * size**3 / seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, *, warmup: int, repeats: int, summary=statistics.median):
    """Seconds per call of ``function`` (the device's queued work included)."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return summary(times)


def step_seconds(
    model: ModelAndLoss, batch: RecapBatch, dtype: torch.dtype | None, steps: int
) -> float:
    """Median seconds of forward + backward + fused Adam on ``batch`` (on the model's device);
    the weights are restored after."""
    device = batch.labels.device
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    optimizer = make_optimizer(model, fused=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Warm-up includes any compilation and the optimizer's state creation.
    seconds = timed(step, device, warmup=3, repeats=steps)
    model.load_state_dict(state)
    return seconds


def model_only(
    model: ModelAndLoss,
    config: RecapConfig,
    batch_sizes: list[int],
    steps: int,
    flops_per_example: float,
    peak: float,
    device: torch.device,
    label: str,
) -> dict[tuple[int, str], float]:
    spec = model_input_spec(config)
    rates = {}
    for batch_size in batch_sizes:
        batch = synthetic_batch(spec, batch_size, len(config.model.tasks)).to(device)
        for name, dtype in DTYPES.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = step_seconds(model, batch, dtype, steps)
            rate = batch_size / seconds
            rates[batch_size, name] = rate
            achieved = rate * flops_per_example
            memory = (
                f"{torch.cuda.max_memory_allocated(device) / 2**30:8.1f}"
                if device.type == "cuda"
                else f"{'-':>8}"
            )
            print(
                f"{label:<9} {batch_size:>6} {name:>9} {rate:11.0f} {achieved / 1e12:8.1f} "
                f"{achieved / peak:6.1%} {memory}"
            )
        del batch
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per figure.")
    parser.add_argument(
        "--compile_batch_size", type=int, default=4096, help="0: no torch.compile run."
    )
    parser.add_argument(
        "--trainer_batch_sizes", type=int, nargs="*", default=[4096], help="Empty: none."
    )
    parser.add_argument("--trainer_steps", type=int, default=30)
    parser.add_argument(
        "--num_examples", type=int, default=16_384, help="Generated for the trainer."
    )
    parser.add_argument("--peak_tflops", type=float, help="The device's bf16 peak, TFLOP/s.")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # What the trainer sets on GPU (projects/home/recap/train.py).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads (dry run: the figures check the script)"
    peak, source = device_peak(device, args.peak_tflops)
    print(f"device: {name}; torch {torch.__version__}")
    print(f"  bf16 peak {peak / 1e12:.1f} TFLOP/s ({source})")
    print(f"  bf16 matrix product measured: {matmul_flops(device, torch.bfloat16) / 1e12:.1f}")

    config = load_config_from_yaml(RecapConfig, CONFIG)
    model = build_whole_model(config, model_input_spec(config)).to(device)
    flops_per_example = 6 * multiply_accumulates(model)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: {CONFIG.name}, {parameters / 1e6:.1f} M parameters, "
        f"{flops_per_example / 1e6:.0f} MFLOP per example forward + backward"
    )

    print("\nmodel only: forward + backward + fused Adam, batch on the device")
    header = (
        f"{'path':<9} {'batch':>6} {'dtype':>9} {'ex/s':>11} {'TFLOP/s':>8} {'MFU':>6} {'GiB':>8}"
    )
    print(header)
    # (path, batch, dtype) -> examples/s. Compilation (minutes) comes last, so that a run cut
    # short by its time limit has printed the other figures.
    rates = {
        ("eager", size, name): rate
        for (size, name), rate in model_only(
            model, config, args.batch_sizes, args.steps, flops_per_example, peak, device, "eager"
        ).items()
    }
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.trainer_batch_sizes:
        trainer(args, flops_per_example, peak, rates)
    if args.compile_batch_size:
        print(f"\nmodel only, dense part compiled (torch.compile), batch {args.compile_batch_size}")
        compile_dense(model.model, dynamic=False)
        compiled = model_only(
            model,
            config,
            [args.compile_batch_size],
            args.steps,
            flops_per_example,
            peak,
            device,
            "compiled",
        )
        rates |= {("compiled", size, name): rate for (size, name), rate in compiled.items()}

    (path, size, _), best = max(
        ((key, rate) for key, rate in rates.items() if key[2] == "bf16"), key=lambda kv: kv[1]
    )
    best_mfu = best * flops_per_example / peak
    print("\ntargets:")
    print(
        f"  [{'met' if best_mfu >= TARGET_MFU else 'MISSED'}] model-only bf16 MFU >= "
        f"{TARGET_MFU:.0%}: {best_mfu:.1%} ({path}, batch {size})"
    )
    return 0


def trainer(
    args: argparse.Namespace,
    flops_per_example: float,
    peak: float,
    rates: dict[tuple[str, int, str], float],
) -> None:
    """The real trainer under torchrun on generated data, beside the eager model-only figure."""
    print(f"\nend to end: the trainer under torchrun, 1 process, {args.trainer_steps} steps")
    with tempfile.TemporaryDirectory(prefix="tml-gpu-throughput-") as scratch_name:
        scratch = Path(scratch_name)
        data_dir = scratch / "data"
        started = time.perf_counter()
        generate(data_dir, args.num_examples)
        took = time.perf_counter() - started
        print(f"  ({args.num_examples} examples generated in {took:.0f} s)")
        print(f"{'batch':>6} {'dtype':>9} {'ex/s':>11} {'MFU':>6} {'of model only':>14}")
        for batch_size in args.trainer_batch_sizes:
            for name in DTYPES:
                run_dir = scratch / f"b{batch_size}"
                run_dir.mkdir(exist_ok=True)
                dtype = "bf16" if name == "bf16" else "fp32"
                rate = end_to_end(
                    1, dtype, batch_size, args.trainer_steps, data_dir, run_dir
                ).examples_per_second
                alone = rates.get(("eager", batch_size, name))
                share = f"{rate / alone:14.2f}" if alone else f"{'-':>14}"
                mfu = rate * flops_per_example / peak
                print(f"{batch_size:>6} {name:>9} {rate:11.0f} {mfu:6.1%} {share}")


if __name__ == "__main__":
    sys.exit(main())
