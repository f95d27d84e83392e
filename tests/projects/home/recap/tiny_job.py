"""The tiny end-to-end job (fixtures/tiny_e2e.yaml) through the real command line: its data,
generated once per test session, and its whole flow, run once per session for local disk
(the ``tiny_job`` fixture in conftest.py) and again on a bucket by test_remote_job.py."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from projects.home.recap.tools import generate_random_data

REPO = Path(__file__).resolve().parents[4]
CONFIG = Path(__file__).parent / "fixtures" / "tiny_e2e.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TWO_RANKS = [*TORCHRUN, "--standalone", "--nproc_per_node", "2"]
MAIN = ["-m", "projects.home.recap.main", "--config_path", str(CONFIG)]
# A label the model does not train on, passed through to the predictions.
PASSTHROUGH = "recap.engagement.is_bookmarked"
INFERENCE = ["--mode", "inference", f"inference.passthrough_features=[{PASSTHROUGH}]"]
SCORE = [sys.executable, "-m", "projects.home.recap.evaluation.score", "--config_path", str(CONFIG)]
EXPORT = [str(Path(sys.executable).with_name("tml-recap-export")), "--config_path", str(CONFIG)]


def environment(run_dir: Path) -> dict[str, str]:
    # Two ranks on the CPU over Gloo, also on a machine with one GPU.
    return {
        **os.environ,
        "TML_TEST_RUN": str(run_dir),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        # Where a job with a bucket save_dir keeps its TensorBoard files (never the checkout).
        "TML_TENSORBOARD_DIR": str(run_dir / "tensorboard"),
    }


def run(command: list[str], run_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        cwd=REPO,
        env=environment(run_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"
    return result


def run_tiny_job(run_dir: Path, *overrides: str) -> None:
    """Training on 2 ranks with a 2-rank evaluator that was started before training began,
    then inference on 2 ranks and the installed export command. The evaluator's output goes to
    ``run_dir/evaluator.log``."""
    # On as many ranks as training, so that both read the same batches (a float32 forward can
    # round a row differently in a batch of another size) and their metrics agree to 1e-6.
    evaluator = subprocess.Popen(
        [*TWO_RANKS, *MAIN, "--mode", "evaluate", "training.eval_timeout_in_s=120", *overrides],
        cwd=REPO,
        env=environment(run_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run([*TWO_RANKS, *MAIN, *overrides], run_dir)
        run([*TWO_RANKS, *MAIN, *INFERENCE, *overrides], run_dir)
        output, _ = evaluator.communicate(timeout=240)
    finally:
        evaluator.kill()
        evaluator.communicate()
    assert evaluator.returncode == 0, output[-4000:]
    (run_dir / "evaluator.log").write_text(output)
    run([*EXPORT, *overrides], run_dir)


def generate(run_dir: Path) -> None:
    """640 training examples and 300 validation examples (2 files each, row groups of 64)
    under ``run_dir/data``, where the tiny config with ``TML_TEST_RUN=run_dir`` reads them.

    Generated once per session, in this process, and copied for every job: a generator process
    per job would spend most of its time importing torch.
    """
    shutil.copytree(_generated() / "data", Path(run_dir) / "data")


@functools.cache
def _generated() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tml-test-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    common = ["--config_path", str(CONFIG), "--num_files", "2", "--row_group_size", "64"]
    saved = os.environ.get("TML_TEST_RUN")
    os.environ["TML_TEST_RUN"] = str(root)
    try:
        training = ["--num_examples", "640"]
        validation = ["--num_examples", "300", "--partition", "all_tasks"]
        for partition in (training, validation):
            status = generate_random_data.main([*common, *partition])
            assert status == 0, f"generating {partition} failed"
    finally:
        if saved is None:
            del os.environ["TML_TEST_RUN"]
        else:
            os.environ["TML_TEST_RUN"] = saved
    return root
