import json
import math
from pathlib import Path

import pytest
import torch

from projects.home.recap.data.features import build_input_spec, plan_features
from projects.home.recap.data.schema import FeatureDtype, SchemaError, load_schema
from projects.home.recap.inputs import ContinuousSource

SHIPPED = Path(__file__).parents[5] / "projects/home/recap/config/home_recap_2022/segdense.json"


def test_shipped_schema_has_the_22_reference_features():
    schema = load_schema(SHIPPED)
    assert len(schema) == 22
    by_name = {spec.name: spec for spec in schema}
    assert by_name["home_recap_2022_cont__segdense_vals"].length == 6000
    assert by_name["home_recap_2022_cont__segdense_vals"].dtype == FeatureDtype.FLOAT_LIST
    assert by_name["home_recap_2022_binary__segdense_vals"].length == 512
    assert by_name["home_recap_2022_discrete__segdense_vals"].length == 320
    assert sum(name.startswith("recap.engagement.") for name in by_name) == 13
    for name in ("meta.user_id", "meta.author_id", "meta.tweet_id"):
        assert by_name[name].dtype == FeatureDtype.INT64_LIST and by_name[name].length == 1
    assert sum(spec.length == 200 for spec in schema) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1"),
        (json.dumps({"features": []}), "expected an object with a 'schema' list"),
        (json.dumps({"schema": []}), "lists no feature"),
        (
            json.dumps({"schema": [{"feature_name": "x", "dtype": "int32", "length": 1}]}),
            "feature 'x': dtype must be one of int64_list, float_list, bytes_list",
        ),
        (
            json.dumps({"schema": [{"feature_name": "x", "dtype": "int64_list", "length": 0}]}),
            "length must be positive or -1",
        ),
        (
            json.dumps({"schema": [{"feature_name": "x", "dtype": "int64_list", "length": 1}] * 2}),
            "feature 'x': declared twice",
        ),
        (
            json.dumps({"schema": [{"feature_name": "x", "dtype": "int64_list", "size": 1}]}),
            "unknown keys ['size']",
        ),
    ],
)
def test_malformed_schema_files_are_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SchemaError) as error:
        load_schema(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_schema_file_is_named(tmp_path):
    with pytest.raises(SchemaError, match=r"cannot read schema file .*nowhere.json"):
        load_schema(tmp_path / "nowhere.json")


def test_unknown_renamed_feature_names_the_field_and_the_schema_file(make_config, schema_path):
    config = make_config(seg_dense_schema={"renamed_features": {"continuous": "conti"}})
    with pytest.raises(SchemaError) as error:
        plan_features(config, tasks=[], with_labels=False)
    assert "seg_dense_schema.renamed_features.continuous" in str(error.value)
    assert f"'conti' is not in the schema file {schema_path}" in str(error.value)


def test_unknown_extra_feature_and_label_are_errors(make_config, schema_path):
    config = make_config(seg_dense_schema={"features": ["nope"]})
    with pytest.raises(SchemaError, match=r"seg_dense_schema.features\[0\].*schema file"):
        plan_features(config, tasks=[], with_labels=False)
    config = make_config(tasks={"label.z": {}})
    with pytest.raises(SchemaError, match=f"tasks.label.z.*schema file {schema_path}"):
        plan_features(config, tasks=["label.z"], with_labels=True)


def test_model_task_missing_from_data_tasks_is_an_error(make_config):
    with pytest.raises(SchemaError, match=r"model task 'label.q'"):
        plan_features(make_config(), tasks=["label.q"], with_labels=True)


def test_bytes_and_wrongly_typed_features_are_rejected(make_config):
    config = make_config(seg_dense_schema={"features": ["text"]})
    with pytest.raises(SchemaError, match=r"'text' .* is bytes"):
        plan_features(config, tasks=[], with_labels=False)
    config = make_config(seg_dense_schema={"renamed_features": {"continuous": "bin"}})
    with pytest.raises(SchemaError, match=r"'bin' .* is int64_list, expected float_list"):
        plan_features(config, tasks=[], with_labels=False)


def test_input_spec_follows_truncation_and_renamed_embeddings(make_config, schema_path):
    config = make_config(
        tasks={"label.a": {"pos_downsampling_rate": 0.5, "neg_downsampling_rate": 0.25}},
        preprocess={
            "truncate_and_slice": {
                "continuous_feature_truncation": 7,
                "binary_feature_truncation": 2,
            },
            "downcast": {"features": {"continuous": "bfloat16", "binary": "bool"}},
        },
    )
    spec = build_input_spec(config, ["label.a"])
    widths = spec.widths
    assert (widths.continuous, widths.binary, widths.discrete) == (7, 2, 4)
    assert widths.embeddings == {"user_embedding": 4}
    assert spec.task_sampling["label.a"].log_ratio == pytest.approx(math.log(0.5))
    # z-score statistics cover the 12 raw columns; the reader keeps the first 7.
    assert spec.continuous_source == ContinuousSource("cont", 12, tuple(range(7)))
    assert spec.dtypes == {
        "continuous_features": torch.bfloat16,
        "binary_features": torch.bool,
        "discrete_features": torch.int64,
        "user_embedding": torch.float32,
    }
    untruncated = build_input_spec(make_config(), [])
    assert untruncated.continuous_source == ContinuousSource("cont", 12, None)
    assert untruncated.task_sampling == {}


def test_input_spec_without_continuous_has_no_source(make_config):
    config = make_config(seg_dense_schema={"renamed_features": {"binary": "bin"}})
    spec = build_input_spec(config, [])
    assert spec.continuous_source is None
    assert spec.widths.continuous == 0 and spec.widths.embeddings == {}
    assert spec.dtypes == {
        "continuous_features": torch.float32,
        "binary_features": torch.int64,
        "discrete_features": torch.int64,
    }


def test_input_spec_of_a_task_the_data_lacks_is_an_error(make_config):
    with pytest.raises(SchemaError, match=r"model task 'label.q'"):
        build_input_spec(make_config(), ["label.q"])


def test_input_spec_of_the_shipped_local_config():
    from projects.home.recap.config import RecapConfig
    from tml.core.config import load_config_from_yaml

    path = SHIPPED.parents[1] / "local_cpu.yaml"
    config = load_config_from_yaml(RecapConfig, path)
    widths = build_input_spec(config.train_data, list(config.model.tasks)).widths
    assert (widths.continuous, widths.binary, widths.discrete) == (2117, 59, 320)
    assert widths.embeddings == {
        "user_embedding": 200,
        "user_eng_embedding": 200,
        "author_embedding": 200,
    }
