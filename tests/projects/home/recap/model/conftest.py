"""Shared pieces of the model tests: a tiny input spec, YAML models, batches, training."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import yaml
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from projects.home.recap.inputs import (
    ContinuousSource,
    DenseInputs,
    InputSpec,
    InputWidths,
    RecapBatch,
    TaskSampling,
)
from projects.home.recap.model.config import ModelConfig
from projects.home.recap.model.model_and_loss import ModelAndLoss, build_model_and_loss
from tml.core.config import validate_config

WIDTHS = InputWidths(
    continuous=12, binary=5, discrete=6, embeddings={"user_embedding": 4, "author_embedding": 4}
)
# The data carries more labels than the models train on, in another order, with distinct rates.
DATA_TASKS = {
    "recap.engagement.is_shared": TaskSampling(),
    "recap.engagement.is_replied": TaskSampling(
        pos_downsampling_rate=1.0, neg_downsampling_rate=0.01
    ),
    "recap.engagement.is_favorited": TaskSampling(
        pos_downsampling_rate=0.5, neg_downsampling_rate=0.1
    ),
    "recap.engagement.is_retweeted": TaskSampling(),
}
MODEL_TASKS = ["recap.engagement.is_favorited", "recap.engagement.is_replied"]


def input_spec(
    widths: InputWidths = WIDTHS, continuous_source: ContinuousSource | None = None
) -> InputSpec:
    """What the data stage would report for data with user and author TwHIN embeddings whose
    continuous columns are all of the schema feature ``cont`` (unless told otherwise)."""
    source = continuous_source or ContinuousSource(feature="cont", raw_width=widths.continuous)
    return InputSpec(widths=widths, task_sampling=dict(DATA_TASKS), continuous_source=source)


def model_config(text: str) -> ModelConfig:
    """A ModelConfig from YAML text (dedented)."""
    return validate_config(ModelConfig, yaml.safe_load(textwrap.dedent(text)), "test YAML")


def mlp_towers(layer_sizes: str = "[8, 1]", indent: int = 0) -> str:
    """YAML of an MLP tower per model task."""
    lines = ["tasks:"]
    for task in MODEL_TASKS:
        lines += [f"  {task}:", f"    mlp_config: {{layer_sizes: {layer_sizes}}}"]
    return textwrap.indent("\n".join(lines), " " * indent)


def make_batch(
    batch_size: int = 32,
    tasks: int = len(MODEL_TASKS),
    tables: dict[str, int] | None = None,
    seed: int = 0,
    widths: InputWidths = WIDTHS,
) -> RecapBatch:
    """A random batch; ``tables`` maps large table name -> rows (one id per example)."""
    generator = torch.Generator().manual_seed(seed)
    sparse = None
    if tables:
        ids = [
            torch.randint(0, rows, (batch_size,), generator=generator) for rows in tables.values()
        ]
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=list(tables),
            values=torch.cat(ids),
            lengths=torch.ones(batch_size * len(tables), dtype=torch.int32),
        )
    # Drawn in the order the tests' expectations were computed with.
    continuous = torch.randn(batch_size, widths.continuous, generator=generator) * 3
    binary = torch.randint(0, 2, (batch_size, widths.binary), generator=generator)
    discrete = torch.randint(0, 40, (batch_size, widths.discrete), generator=generator)
    labels = torch.randint(0, 2, (batch_size, tasks), generator=generator).float()
    weights = torch.rand(batch_size, tasks, generator=generator) + 0.5
    embeddings = {
        name: torch.randn(batch_size, width, generator=generator)
        for name, width in widths.embeddings.items()
    }
    inputs = DenseInputs(
        continuous_features=continuous,
        binary_features=binary,
        discrete_features=discrete,
        **embeddings,
    )
    return RecapBatch(inputs=inputs, labels=labels, weights=weights, sparse_features=sparse)


def build(text: str, spec: InputSpec | None = None, **kwargs: object) -> ModelAndLoss:
    """ModelAndLoss for a YAML model over the test spec, tables materialised on the CPU."""
    return build_model_and_loss(
        model_config(text),
        spec or input_spec(),
        large_embedding_device=torch.device("cpu"),
        **kwargs,
    )


def train(model: ModelAndLoss, batch: RecapBatch, steps: int = 12, lr: float = 1e-2) -> list[float]:
    """Losses of ``steps`` Adam steps on one batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def recap() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    helpers: dict[str, Callable | object] = {
        "WIDTHS": WIDTHS,
        "MODEL_TASKS": MODEL_TASKS,
        "DATA_TASKS": DATA_TASKS,
        "input_spec": input_spec,
        "model_config": model_config,
        "mlp_towers": mlp_towers,
        "make_batch": make_batch,
        "build": build,
        "train": train,
    }
    return SimpleNamespace(**helpers)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
