"""The ranker's config tree: shipped configs, the original's style, each kind of mistake, CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import projects.home.recap.config as recap_config
from projects.home.recap.config import RecapConfig
from projects.home.recap.model.config import TaskModel
from tml.core.config import BaseConfig, ConfigError, load_config_from_yaml

REPO = Path(__file__).resolve().parents[4]
SHIPPED = sorted((REPO / "projects/home/recap/config").glob("*.yaml"))
ORIGINAL_STYLE = Path(__file__).parent / "fixtures" / "original_style.yaml"
LOCAL_PROD = REPO / "projects/home/recap/config/local_prod.yaml"
FAVORITED = "recap.engagement.is_favorited"
# The architecture variants as the one-of error lists them (a new variant joins the list).
ARCHITECTURES = ", ".join(
    f"'{name}'"
    for name, field in TaskModel.model_fields.items()
    if (field.json_schema_extra or {}).get("one_of") == "architecture"
)


def test_configs_are_shipped():
    names = {path.name for path in SHIPPED}
    assert {"local_prod.yaml", "local_cpu.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path):
    config = load_config_from_yaml(RecapConfig, path)
    assert config.model.tasks
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#")
    assert "python -m" in path.read_text().split("\n\n")[0] or "make run" in path.read_text()


def test_original_style_config_loads_and_round_trips(tmp_path):
    config = load_config_from_yaml(RecapConfig, ORIGINAL_STYLE)
    assert len(config.train_data.tasks) == 13
    assert len(config.model.tasks) == 10
    assert config.training.save_dir == str(Path.home() / "tmp/runs/recap_local_debug")
    # The merge key kept every task and overrode the downsampling of one.
    partition = config.validation_data[FAVORITED]
    assert len(partition.tasks) == 13
    assert partition.tasks[FAVORITED].neg_downsampling_rate == 0.01
    assert partition.evaluation_tasks == [FAVORITED]

    printed = tmp_path / "printed.yaml"
    printed.write_text(config.pretty_print())
    assert load_config_from_yaml(RecapConfig, printed) == config


def test_production_shape():
    config = load_config_from_yaml(RecapConfig, LOCAL_PROD)
    backbone = config.model.backbone.mask_net_config
    assert [block.output_size for block in backbone.mask_blocks] == [1024] * 4
    assert config.train_data.preprocess.truncate_and_slice.continuous_feature_truncation == 2117
    assert config.train_data.preprocess.truncate_and_slice.binary_feature_truncation == 59


MISTAKES = [
    pytest.param(
        ["model.tasks.recap.engagement.is_favorited.mlp_config.layer_sizez=[1]"],
        "model.tasks.recap.engagement.is_favorited.mlp_config.layer_sizez: unknown field; "
        "did you mean 'layer_sizes'?",
        id="unknown key",
    ),
    pytest.param(
        ["model.tasks.recap.engagement.is_favorited.dcn_config.poly_degree=2"],
        f"model.tasks.recap.engagement.is_favorited: exactly one of {ARCHITECTURES} must be set, "
        "got 'mlp_config', 'dcn_config'",
        id="two alternatives",
    ),
    pytest.param(
        ["model.tasks.recap.engagement.is_favorited.mlp_config=null"],
        f"model.tasks.recap.engagement.is_favorited: exactly one of {ARCHITECTURES} must be set, "
        "got none",
        id="no alternative",
    ),
    pytest.param(
        ["model.tasks.recap.engagement.is_favorited.mlp_config.layer_sizes=wide"],
        "model.tasks.recap.engagement.is_favorited.mlp_config.layer_sizes: Input should be a "
        "valid list (got 'wide')",
        id="wrong type",
    ),
    pytest.param(
        [
            "optimizer.multi_task_learning_rates.tower_learning_rates.recap.engagement.nope.constant=1"
        ],
        "optimizer.multi_task_learning_rates.tower_learning_rates.recap.engagement.nope: tower "
        "learning rate for 'recap.engagement.nope', which is not a model task",
        id="tower learning rate for an unknown task",
    ),
    pytest.param(
        ["model.tasks.recap.engagement.is_missing.mlp_config.layer_sizes=[1]"],
        "model.tasks.recap.engagement.is_missing: this model task has no label in train_data.tasks",
        id="model task missing from data",
    ),
    pytest.param(
        ["model.multi_task_type=share_none"],
        "model.backbone: multi_task_type share_none forbids a backbone",
        id="share_none with a backbone",
    ),
    pytest.param(
        ["model.multi_task_type=share_partial", "model.backbone=null"],
        "model.backbone: multi_task_type share_partial requires a backbone",
        id="share_partial without a backbone",
    ),
    pytest.param(
        ["validation_data.validation.evaluation_tasks=[recap.engagement.is_unknown]"],
        "validation_data.validation.evaluation_tasks[0]: 'recap.engagement.is_unknown' is not "
        "among this dataset's tasks",
        id="evaluation task not a data task",
    ),
    pytest.param(
        ["optimizer.multi_task_learning_rates.backbone_learning_rate.constant=0.1"],
        "optimizer.multi_task_learning_rates.backbone_learning_rate: exactly one of 'constant', "
        "'linear_ramp_to_cosine', 'linear_ramp_to_constant', 'piecewise_constant' must be set",
        id="two schedules",
    ),
    pytest.param(
        [
            "optimizer.multi_task_learning_rates.backbone_learning_rate="
            "{piecewise_constant: {learning_rate_boundaries: [5, 2], "
            "learning_rate_values: [1, 2, 3]}}"
        ],
        "optimizer.multi_task_learning_rates.backbone_learning_rate.piecewise_constant: "
        "learning_rate_boundaries must be strictly increasing",
        id="unsorted boundaries",
    ),
    pytest.param(
        [
            "optimizer.multi_task_learning_rates.backbone_learning_rate="
            "{linear_ramp_to_constant: {learning_rate: 0.1, num_ramp_steps: 0}}"
        ],
        "optimizer.multi_task_learning_rates.backbone_learning_rate.linear_ramp_to_constant."
        "num_ramp_steps: Input should be greater than 0",
        id="zero ramp",
    ),
    pytest.param(
        ["train_data.data_service_dispatcher=grpc://dds:5000"],
        "train_data.data_service_dispatcher: tf.data service is not supported",
        id="unsupported option",
    ),
    pytest.param(
        [
            "model.multi_task_type=share_none",
            "model.backbone=null",
            "optimizer.multi_task_learning_rates.backbone_learning_rate=null",
        ],
        "optimizer.multi_task_learning_rates.backbone_learning_rate: the model has parameters "
        "outside its towers (featurization batch norm, featurization layer norm, user_embedding "
        "layer norm, user_eng_embedding layer norm, author_embedding layer norm)",
        id="shared parameters without a backbone learning rate",
    ),
    pytest.param(
        [
            "model.large_embeddings={tables: [{name: meta__user_id, num_embeddings: 10, "
            "embedding_dim: 4, sharding_types: [table_wise], compute_kernels: [dense]}], "
            "optimizer: {init_learning_rate: 0.1}}"
        ],
        "model.large_embeddings.tables[0].compute_kernels: no sharding type in ['table_wise'] "
        "runs on a compute kernel in ['dense']",
        id="sharding type without a kernel",
    ),
    pytest.param(
        [
            "model.large_embeddings={tables: [{name: unknown_ids, num_embeddings: 10, "
            "embedding_dim: 4}], optimizer: {init_learning_rate: 0.1}}"
        ],
        "model.large_embeddings.tables[0].name: table 'unknown_ids' reads the renamed feature",
        id="large table without a feature",
    ),
    pytest.param(
        ["inference.passthrough_features=[meta.user_id, score]"],
        "inference.passthrough_features: ['score'] would collide with the predictions' own columns",
        id="passthrough named like a predictions column",
    ),
    pytest.param(
        ["training.save_dir="],
        "training.save_dir: is empty; name a folder or an object-store URL for the job's files",
        id="empty save_dir",
    ),
    pytest.param(
        ["inference.passthrough_features=[meta.user_id, meta.user_id]"],
        "inference.passthrough_features: features named twice: ['meta.user_id']",
        id="passthrough twice",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), MISTAKES)
def test_each_mistake_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config_from_yaml(RecapConfig, ORIGINAL_STYLE, overrides)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{ORIGINAL_STYLE}: ")
    assert message in text


def test_model_task_without_tower_learning_rate(tmp_path):
    data = yaml.safe_load(ORIGINAL_STYLE.read_text().replace("${HOME}", "/home"))
    del data["optimizer"]["multi_task_learning_rates"]["tower_learning_rates"][FAVORITED]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"model task '{FAVORITED}' has no tower learning rate"):
        load_config_from_yaml(RecapConfig, path)


def all_config_classes():
    seen, stack = set(), [BaseConfig]
    while stack:
        for subclass in stack.pop().__subclasses__():
            if subclass not in seen and subclass.__module__.startswith(("tml.", "projects.")):
                seen.add(subclass)
                stack.append(subclass)
    return sorted(seen, key=lambda cls: f"{cls.__module__}.{cls.__name__}")


def test_every_field_of_every_config_has_a_description():
    classes = all_config_classes()
    assert RecapConfig in classes
    undocumented = [
        f"{cls.__module__}.{cls.__name__}.{name}"
        for cls in classes
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert undocumented == []


def test_config_classes_are_declared_once():
    names = [cls.__name__ for cls in all_config_classes()]
    assert sorted(names) == sorted(set(names))


def run_checker(*args):
    return subprocess.run(
        [sys.executable, "-m", "projects.home.recap.config", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_checker_prints_resolved_yaml(capsys):
    arguments = ["--config_path", str(LOCAL_PROD), "training.num_train_steps=123"]
    assert recap_config.main(arguments) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["training"]["num_train_steps"] == 123
    assert "mask_net_config" in printed


def test_checker_exits_2_with_one_line():
    result = run_checker("--config_path", str(LOCAL_PROD), "training.num_train_stepz=1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "training.num_train_stepz: unknown field" in result.stderr
    assert "Traceback" not in result.stderr
