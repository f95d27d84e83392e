import pydantic
import pytest
import yaml

from tml.core.config import BaseConfig, Field


class Choice(BaseConfig):
    first: int | None = Field(None, description="a", one_of="pick")
    second: str | None = Field(None, description="b", one_of="pick")
    extra_a: int | None = Field(None, description="c", at_most_one_of="maybe")
    extra_b: int | None = Field(None, description="d", at_most_one_of="maybe")


def test_unknown_keys_are_rejected():
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        Choice(first=1, thrid=2)


def test_exactly_one_of_accepts_one_choice():
    assert Choice(first=1).chosen("pick") == "first"
    assert Choice(second="x", first=None).chosen("pick") == "second"


@pytest.mark.parametrize(
    ("values", "got"), [({}, "got none"), ({"first": 1, "second": "x"}, "got 'first', 'second'")]
)
def test_exactly_one_of_names_the_group(values, got):
    with pytest.raises(pydantic.ValidationError) as info:
        Choice(**values)
    message = str(info.value)
    assert "exactly one of 'first', 'second' must be set" in message
    assert got in message


def test_at_most_one_of():
    assert Choice(first=1).chosen("maybe") is None
    assert Choice(first=1, extra_b=3).chosen("maybe") == "extra_b"
    with pytest.raises(pydantic.ValidationError, match="at most one of 'extra_a', 'extra_b'"):
        Choice(first=1, extra_a=1, extra_b=2)


def test_pretty_print_is_yaml_that_loads_back():
    config = Choice(second="x", extra_a=4)
    printed = config.pretty_print()
    assert yaml.safe_load(printed) == {"first": None, "second": "x", "extra_a": 4, "extra_b": None}
    assert Choice.model_validate(yaml.safe_load(printed)) == config


def test_every_field_needs_a_description():
    with pytest.raises(TypeError):

        class Undescribed(BaseConfig):
            value: int = Field(1)  # type: ignore[call-arg]
