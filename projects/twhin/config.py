"""TwHIN's job config, in the original's format, and a checker for it.

Check a config before launching a job::

    python -m projects.twhin.config --config_path CFG [dotted.path=value ...]

prints the resolved config as YAML and exits 0, or prints a one-line error and exits 2.
"""

from __future__ import annotations

import argparse
import sys

import pydantic

from projects.twhin.data.config import TwhinDataConfig
from projects.twhin.model.config import TwhinModelConfig
from tml.core.cli import add_config_arguments, exit_status
from tml.core.config import BaseConfig, Field, load_config_from_yaml
from tml.core.config.training import BaseTrainingConfig


class RuntimeConfig(BaseConfig):
    """How the steps run on the device."""

    enable_amp: bool = Field(
        False,
        description="Run the forward pass under bfloat16 autocast; weights, gradients and "
        "optimizer state stay float32.",
    )
    enable_tensorfloat32: bool = Field(
        False, description="Let matrix products use TensorFloat-32 on GPUs that have it."
    )


class TwhinTrainingConfig(BaseTrainingConfig):
    """Length, cadence and files of a TwHIN job."""

    num_epochs: pydantic.PositiveInt = Field(
        1,
        description="Passes over the training edges; the job ends after them or at "
        "num_train_steps, whichever comes first.",
    )


class TwhinConfig(BaseConfig):
    """Everything a TwHIN job needs."""

    runtime: RuntimeConfig = Field(RuntimeConfig(), description="Device settings.")
    training: TwhinTrainingConfig = Field(
        TwhinTrainingConfig(), description="Job length, cadence and files."
    )
    model: TwhinModelConfig = Field(description="Tables, relations and their optimizers.")
    train_data: TwhinDataConfig = Field(description="The training edges.")
    validation_data: TwhinDataConfig | None = Field(
        None, description="The edges link prediction is evaluated on (null: no evaluation)."
    )


def main(argv: list[str] | None = None) -> int:
    """Loads and checks a config: prints it resolved, or one error line and exits 2."""
    parser = argparse.ArgumentParser(
        prog="tml-twhin-check-config", description="Check a TwHIN config and print it resolved."
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)

    def check() -> None:
        config = load_config_from_yaml(TwhinConfig, args.config_path, args.overrides)
        print(config.pretty_print(), end="")

    return exit_status(check)


if __name__ == "__main__":
    sys.exit(main())
