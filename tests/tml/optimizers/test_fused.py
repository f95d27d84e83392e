"""The fused table optimizers of tml.optimizers.fused, through the generic optimizer config
(TwHIN's tables): fbgemm's class and arguments, and what the CPU kernels cannot run."""

import pytest
import torchrec.optim as torchrec_optim

from tml.optimizers.algorithms import fused_optimizer_arguments
from tml.optimizers.config import OptimizerConfig
from tml.optimizers.fused import FusedOptimizerError

WHERE = "model.embeddings.tables.0 (user).optimizer"


def arguments(device_type: str, **algorithm: dict):
    return fused_optimizer_arguments(
        OptimizerConfig.model_validate(algorithm), device_type, where=WHERE
    )


def test_each_algorithm_gives_fbgemms_class_and_argument_names():
    assert arguments("cpu", sgd={"lr": 0.1}) == (torchrec_optim.SGD, {"lr": 0.1})
    assert arguments("cpu", adagrad={"lr": 0.1, "eps": 1e-6}) == (
        torchrec_optim.Adagrad,
        {"lr": 0.1, "eps": 1e-6},
    )
    assert arguments("cuda", adam={"lr": 0.1, "betas": (0.8, 0.9), "eps": 1e-7}) == (
        torchrec_optim.Adam,
        {"lr": 0.1, "beta1": 0.8, "beta2": 0.9, "eps": 1e-7},
    )


def test_what_no_kernel_runs_is_one_line_naming_the_table():
    with pytest.raises(FusedOptimizerError, match=r"\(user\).optimizer: sgd.momentum 0.9: "):
        arguments("cuda", sgd={"lr": 0.1, "momentum": 0.9})
    with pytest.raises(
        FusedOptimizerError,
        match=r"optimizer adam has no cpu kernel .* choose one of \['sgd', 'adagrad'\]",
    ):
        arguments("cpu", adam={"lr": 0.1})
