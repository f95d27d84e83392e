"""Table optimizers: what each device's kernel runs, the config's format, and the replicated
tables' optimizer against fbgemm's fused kernel."""

import pytest
import torch
import torchrec.optim as torchrec_optim
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)

from projects.home.recap.embedding.config import LargeEmbeddingsConfig
from projects.home.recap.optimizer.table_optimizers import (
    attach_table_optimizers,
    check_table_optimizers,
    replicated_optimizer,
)
from tml.core.config import ConfigError, validate_config
from tml.optimizers.fused import FusedOptimizerError


def tables(default: dict | None = None, **own: dict) -> LargeEmbeddingsConfig:
    """Two tables, ``user`` and ``author``; ``own`` gives a table its own optimizer."""
    return LargeEmbeddingsConfig.model_validate(
        {
            "tables": [
                {"name": name, "num_embeddings": 10, "embedding_dim": 4, "optimizer": own.get(name)}
                for name in ("user", "author")
            ],
            "optimizer": default or {"init_learning_rate": 0.05},
        }
    )


def test_the_original_format_means_sgd_for_every_table():
    config = tables({"init_learning_rate": 0.05, "learning_rate": {"constant": 0.1}})
    assert [config.table_optimizer(t).algorithm for t in config.tables] == ["sgd", "sgd"]
    check_table_optimizers(config, "cpu")


def test_a_table_may_have_its_own_optimizer():
    config = tables(user={"init_learning_rate": 0.1, "rowwise_adagrad": {"epsilon": 1e-6}})
    user, author = config.tables
    assert config.table_optimizer(user).algorithm == "rowwise_adagrad"
    assert config.table_optimizer(author).algorithm == "sgd"


def test_two_algorithms_are_rejected_at_load():
    with pytest.raises(ConfigError, match=r"optimizer: at most one of 'sgd', 'rowwise_adagrad'"):
        validate_config(
            LargeEmbeddingsConfig,
            {
                "tables": [{"name": "user", "num_embeddings": 10, "embedding_dim": 4}],
                "optimizer": {"init_learning_rate": 0.1, "sgd": {}, "rowwise_adagrad": {}},
            },
            "job.yaml",
        )


@pytest.mark.parametrize("algorithm", ["adam", "partial_rowwise_adam"])
def test_adam_needs_a_gpu_and_the_error_names_the_table_and_device(algorithm):
    config = tables(author={"init_learning_rate": 0.001, algorithm: {}})
    with pytest.raises(
        FusedOptimizerError,
        match=rf"table author: optimizer {algorithm} has no cpu kernel in fbgemm-gpu .*"
        r"choose one of \['sgd', 'rowwise_adagrad'\]",
    ):
        check_table_optimizers(config, "cpu")
    check_table_optimizers(config, "cuda")


def test_weight_decay_the_cpu_kernel_ignores_is_rejected_on_cpu():
    config = tables(user={"init_learning_rate": 0.1, "rowwise_adagrad": {"weight_decay": 0.01}})
    with pytest.raises(FusedOptimizerError, match=r"table user: rowwise_adagrad\.weight_decay is"):
        check_table_optimizers(config, "cpu")
    check_table_optimizers(config, "cuda")


def test_a_replicated_table_needs_an_optimizer_with_a_dense_counterpart():
    config = tables(user={"init_learning_rate": 0.001, "adam": {}})
    with pytest.raises(
        FusedOptimizerError, match=r"table user: optimizer adam runs only on a fused"
    ):
        check_table_optimizers(config, "cuda", replicated=["user"])
    check_table_optimizers(tables(), "cpu", replicated=["user", "author"])


def test_attached_optimizers_carry_fbgemm_arguments_and_a_kernel_of_their_own():
    config = tables(user={"init_learning_rate": 0.1, "rowwise_adagrad": {"epsilon": 1e-6}})
    weights = {name: torch.nn.Parameter(torch.zeros(10, 4)) for name in ("user", "author")}
    attach_table_optimizers(weights, config)
    assert weights["user"]._optimizer_classes == [torchrec_optim.RowWiseAdagrad]
    user_arguments = weights["user"]._optimizer_kwargs[0]
    assert user_arguments["lr"] == 0.1 and user_arguments["eps"] == 1e-6
    assert user_arguments["_batch_key"] == "user"  # never grouped with the SGD tables
    assert weights["author"]._optimizer_classes == [torchrec_optim.SGD]
    assert weights["author"]._optimizer_kwargs == [{"lr": 0.05}]


def test_the_replicated_rowwise_adagrad_steps_like_the_fused_kernel():
    # A replicated table (data_parallel, for gradient accumulation) is trained by torchrec's
    # RowWiseAdagrad; a sharded one by fbgemm's kernel. Both must give the same rows.
    rows, dim, rate = 6, 4, 0.3
    initial = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    fused = SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=rate,
        eps=1e-8,
    )
    fused.split_embedding_weights()[0].copy_(initial)
    table = torch.nn.Parameter(initial.clone())
    config = tables(user={"init_learning_rate": rate, "rowwise_adagrad": {}})
    dense = replicated_optimizer(config, config.tables[0])([table])
    dense.param_groups[0]["lr"] = rate
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, rows, (5,), generator=generator)
        scale = torch.randn(5, dim, generator=generator)
        fused_out = fused(ids, torch.arange(6))
        (fused_out * scale).sum().backward()
        dense.zero_grad()
        (torch.nn.functional.embedding(ids, table) * scale).sum().backward()
        dense.step()
    torch.testing.assert_close(table.detach(), fused.split_embedding_weights()[0])
    assert not torch.equal(table.detach(), initial)
