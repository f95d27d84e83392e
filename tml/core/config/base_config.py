"""The base class every tml config derives from.

Configs are declarations: typed fields with descriptions. Two rules are enforced here once, for
every subclass, because the original YAML format depends on them:

* unknown keys are errors (a typo must never silently fall back to a default);
* a choice among variants is written as sibling fields, e.g. ``mlp_config: null`` next to
  ``mask_net_config: {...}``. Fields declared with ``Field(..., one_of="group")`` must have exactly
  one non-null member per group; ``at_most_one_of="group"`` allows none or one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

import pydantic
import yaml

_GROUP_KINDS = ("one_of", "at_most_one_of")


def Field(  # noqa: N802 - mirrors pydantic.Field, which it wraps.
    default: Any = ...,
    *,
    description: str,
    one_of: str | None = None,
    at_most_one_of: str | None = None,
    **kwargs: Any,
) -> Any:
    """A pydantic field that requires a description and may join a one-of group.

    Args:
        default: The default value; ``...`` makes the field required.
        description: What the field means, shown in docs and error messages.
        one_of: Name of a group of sibling fields of which exactly one must be set.
        at_most_one_of: Name of a group of sibling fields of which at most one may be set.
        **kwargs: Passed to ``pydantic.Field``.
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    if one_of is not None:
        extra["one_of"] = one_of
    if at_most_one_of is not None:
        extra["at_most_one_of"] = at_most_one_of
    return pydantic.Field(
        default, description=description, json_schema_extra=extra or None, **kwargs
    )


class ConfigValueError(ValueError):
    """A validation failure that knows which (possibly nested) field it is about.

    Raise it from a model validator when the culprit is not the model itself but one of its
    descendants; the error formatter appends ``path`` to the model's location.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.path = path


class BaseConfig(pydantic.BaseModel):
    """Base of all configs: unknown keys rejected, one-of groups enforced, YAML printing."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_default=True)

    # group kind -> group name -> field names, computed once per subclass.
    _field_groups: ClassVar[dict[str, dict[str, list[str]]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        groups: dict[str, dict[str, list[str]]] = {kind: defaultdict(list) for kind in _GROUP_KINDS}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            for kind in _GROUP_KINDS:
                if kind in extra:
                    groups[kind][str(extra[kind])].append(name)
        cls._field_groups = {kind: dict(members) for kind, members in groups.items()}

    @pydantic.model_validator(mode="after")
    def _check_field_groups(self) -> BaseConfig:
        for _group, names in self._field_groups.get("one_of", {}).items():
            chosen = [name for name in names if getattr(self, name) is not None]
            if len(chosen) != 1:
                raise ValueError(
                    f"exactly one of {_quote(names)} must be set, got "
                    + (_quote(chosen) if chosen else "none")
                )
        for _group, names in self._field_groups.get("at_most_one_of", {}).items():
            chosen = [name for name in names if getattr(self, name) is not None]
            if len(chosen) > 1:
                raise ValueError(f"at most one of {_quote(names)} may be set, got {_quote(chosen)}")
        return self

    def chosen(self, group: str) -> str | None:
        """Name of the field set in a one-of (or at-most-one-of) group, or None."""
        for kind in _GROUP_KINDS:
            for name in self._field_groups.get(kind, {}).get(group, []):
                if getattr(self, name) is not None:
                    return name
        return None

    def pretty_print(self) -> str:
        """The config as YAML, every field spelled out; it loads back into an equal config."""
        return yaml.safe_dump(
            self.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=100
        )


def _quote(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
