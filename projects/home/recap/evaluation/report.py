"""Print a job's latest evaluation results as tables, and where its predictions are.

    python -m projects.home.recap.evaluation.report --config_path CFG [dotted.path=value ...]

Reads the in-training evaluation stream or, failing that, the follower's (``--mode evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys

from projects.home.recap.config import RecapConfig
from projects.home.recap.evaluation.evaluator import format_summary
from projects.home.recap.job_folder import JobFolder, MetricStream
from tml.core.cli import add_config_arguments, exit_status, parse_command_line
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.observability.metric_json import metrics_from_json

_STREAMS = (MetricStream.EVAL, MetricStream.EVALUATOR)


def latest_results(job: JobFolder) -> tuple[int, dict[str, float]]:
    """The step and metrics of the newest evaluation of a job, every partition's records merged
    (each partition logs its own record at a step)."""
    for stream in _STREAMS:
        path = job.metrics_file(stream)
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if records:
                step = records[-1]["step"]
                merged: dict[str, float] = {}
                for record in records:
                    if record["step"] == step:
                        merged.update(metrics_from_json(record))
                merged.pop("step")
                merged.pop("time", None)
                return step, merged
    names = " or ".join(job.metrics_file(stream).name for stream in _STREAMS)
    raise UserInputError(f"no evaluation results in {job.root} ({names})")


def report(config: RecapConfig) -> str:
    """Tables of per-task AUROC and RCE for each partition, and the prediction files."""
    job = JobFolder(config.training.save_dir)
    step, metrics = latest_results(job)
    lines = []
    for partition in config.validation_data:
        prefix = f"{partition}/"
        own = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if not own:
            continue
        examples = int(own.get("examples", 0))
        lines.append(f"{partition} at step {step} ({examples} examples):")
        lines.append(format_summary(own, list(config.model.tasks)))
        lines.append("")
    predictions = job.all_predictions_files()
    if predictions:
        lines.append("predictions:")
        lines.extend(f"  {path}" for path in predictions)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line; a mistake is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m projects.home.recap.evaluation.report",
        description="Print a job's latest evaluation results.",
    )
    add_config_arguments(parser)
    args = parse_command_line(parser, argv)
    return exit_status(
        lambda: print(report(load_config_from_yaml(RecapConfig, args.config_path, args.overrides)))
    )


if __name__ == "__main__":
    sys.exit(main())
