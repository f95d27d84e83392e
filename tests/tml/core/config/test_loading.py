import getpass
import re
import textwrap

import pytest

from tml.core.config import BaseConfig, ConfigError, Field, apply_override, load_config_from_yaml


class Inner(BaseConfig):
    sizes: list[int] = Field([1], description="sizes")
    rate: float | None = Field(None, description="rate")


class Outer(BaseConfig):
    name: str = Field("x", description="name")
    steps: int = Field(10, description="steps")
    inner: Inner = Field(Inner(), description="inner")
    towers: dict[str, Inner] = Field({}, description="towers by dotted name")
    optional: Inner | None = Field(None, description="optional")
    layers: list[Inner] = Field([], description="a list of sections")


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_environment_variables_are_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("TML_TEST_DIR", "/data")
    path = write(
        tmp_path, "name: ${TML_TEST_DIR}/a-$TML_TEST_DIR-$USER-$$5-${UNSET_VAR:-fallback}\n"
    )
    config = load_config_from_yaml(Outer, path)
    assert config.name == f"/data/a-/data-{getpass.getuser()}-$5-fallback"


def test_unset_variable_names_file_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("TML_SURELY_UNSET", raising=False)
    path = write(tmp_path, "inner: {sizes: [1]}\nname: ${TML_SURELY_UNSET}\n")
    with pytest.raises(
        ConfigError, match=r"config.yaml: name: environment variable \$TML_SURELY_UNSET"
    ):
        load_config_from_yaml(Outer, path)


def test_anchors_and_merge_keys(tmp_path):
    path = write(
        tmp_path,
        """
        inner: &base {sizes: [3, 4], rate: 0.5}
        towers:
          a.b: *base
          c.d:
            <<: *base
            rate: 0.1
        """,
    )
    config = load_config_from_yaml(Outer, path)
    assert config.towers["a.b"] == Inner(sizes=[3, 4], rate=0.5)
    assert config.towers["c.d"] == Inner(sizes=[3, 4], rate=0.1)


ALIASED = """
inner: &base {sizes: [3, 4], rate: 0.5}
steps: &steps 3
towers:
  a.b: *base
  c.d:
    <<: *base
    rate: 0.1
layers: [{sizes: *steps}]
"""


def test_an_override_of_an_anchored_value_follows_its_aliases(tmp_path):
    path = write(tmp_path, ALIASED.replace("layers: [{sizes: *steps}]", ""))
    config = load_config_from_yaml(Outer, path, ["inner.sizes=[7]", "inner.rate=0.9"])
    assert config.inner.sizes == config.towers["a.b"].sizes == config.towers["c.d"].sizes == [7]
    # c.d writes its own rate beside the merge: not an alias of inner.rate.
    assert (config.inner.rate, config.towers["a.b"].rate, config.towers["c.d"].rate) == (
        0.9,
        0.9,
        0.1,
    )
    # From an alias (here a merged field) to the anchor too, and a whole aliased section.
    config = load_config_from_yaml(Outer, path, ["towers.c.d.sizes.-1=9"])
    assert config.inner.sizes == config.towers["a.b"].sizes == [3, 9]
    config = load_config_from_yaml(Outer, path, ["towers.a.b={sizes: [5]}"])
    assert config.inner.sizes == [5] and config.inner.rate is None


def test_a_field_an_override_names_keeps_its_value_in_any_order(tmp_path):
    path = write(tmp_path, ALIASED.replace("layers: [{sizes: *steps}]", ""))
    for overrides in (
        ["towers.a.b.sizes=[1]", "inner.sizes=[7]"],
        ["inner.sizes=[7]", "towers.a.b.sizes=[1]"],
        ["towers.a.b={sizes: [1]}", "inner.sizes=[7]"],
    ):
        config = load_config_from_yaml(Outer, path, overrides)
        assert config.inner.sizes == [7] and config.towers["a.b"].sizes == [1], overrides
    # A field that only aliases them takes the later of the two.
    assert config.towers["c.d"].sizes == [7]


def test_overrides_that_reshape_one_anchored_value_twice_are_one_line(tmp_path):
    path = write(tmp_path, ALIASED.replace("layers: [{sizes: *steps}]", ""))
    with pytest.raises(
        ConfigError, match=r"override 'towers.c.d.sizes.1=9': towers.c.d.sizes\[1\] no longer"
    ):
        load_config_from_yaml(Outer, path, ["inner.sizes=[1]", "towers.c.d.sizes.1=9"])


def test_values_that_are_only_equal_are_not_aliases(tmp_path):
    path = write(tmp_path, "inner: {sizes: [3], rate: 0.5}\ntowers: {a: {sizes: [3], rate: 0.5}}\n")
    config = load_config_from_yaml(Outer, path, ["inner.sizes=[7]", "inner.rate=0.1"])
    assert config.towers["a"].sizes == [3] and config.towers["a"].rate == 0.5


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = write(tmp_path, "towers: {a.b: {sizes: [1]}}\n")
    config = load_config_from_yaml(
        Outer,
        path,
        ["steps=7", "inner.sizes=[5, 6]", "towers.a.b.rate=0.25", "towers.new.task.sizes=[9]"],
    )
    assert config.steps == 7
    assert config.inner.sizes == [5, 6]
    assert config.towers["a.b"].rate == 0.25
    assert config.towers["new.task"].sizes == [9]


def test_override_into_a_null_section_and_a_list_item(tmp_path):
    path = write(tmp_path, "optional: null\ninner: {sizes: [1, 2]}\n")
    config = load_config_from_yaml(Outer, path, ["optional.rate=2", "inner.sizes.1=7"])
    assert config.optional == Inner(rate=2.0)
    assert config.inner.sizes == [1, 7]


def test_list_items_are_named_by_brackets_or_dots(tmp_path):
    path = write(tmp_path, "layers: [{sizes: [1, 2]}, {}, {}]\ntowers: {a.b: {sizes: [4]}}\n")
    overrides = [
        "layers[0].sizes[1]=7",
        "layers.1.rate=0.5",
        "layers[-1].sizes=[3]",
        "towers.a.b.sizes[0]=5",
    ]
    config = load_config_from_yaml(Outer, path, overrides)
    assert [layer.sizes for layer in config.layers] == [[1, 7], [1], [3]]
    assert config.layers[1].rate == 0.5
    assert config.towers["a.b"].sizes == [5]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps", "must look like dotted.path=value"),
        ("layers[5].rate=1", "layers has no item 5"),
        ("inner.sizes.5=1", "inner.sizes has no item 5"),
        ("steps=[", "invalid value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_override({"inner": {"sizes": [1]}, "layers": [{}]}, override, Outer)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz: 3\n", "stepz: unknown field; did you mean 'steps'?"),
        ("steps: many\n", "steps: Input should be a valid integer, unable to parse string"),
        ("towers: {a.b: {sizes: [x]}}\n", r"towers.a.b.sizes\[0\]: Input should be a valid int"),
        ("inner: {rate: 1, zzz: 2}\n", "inner.zzz: unknown field; allowed: sizes, rate"),
        ("steps: [1\n", "invalid YAML: line 2, column 1"),
        ("- 1\n", "the top level must be a mapping"),
    ],
)
def test_errors_are_one_line_with_file_and_path(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_from_yaml(Outer, path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path))
    assert re.search(message, text), text


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_from_yaml(Outer, tmp_path / "absent.yaml")


def test_error_count_is_reported(tmp_path):
    path = write(tmp_path, "steps: x\nname: [1]\n")
    with pytest.raises(ConfigError, match=r"\(and 1 more error\)"):
        load_config_from_yaml(Outer, path)
