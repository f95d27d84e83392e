"""Loading configs from YAML files and command-line overrides.

A config file may use YAML anchors and ``<<`` merge keys, and ``$VAR`` / ``${VAR}`` environment
variables inside strings, ``${VAR:-default}`` for one that may be unset, and ``$$`` for a literal
dollar. ``$USER`` always resolves, and
``$TML_BASE`` defaults to the directory holding the installed ``tml`` package, so configs written
for the original monorepo (``${TML_BASE}/projects/home/recap/...``) load unchanged.

An override of a value the file writes once under an anchor changes it wherever the file refers
to it: ``train_data.inputs=...`` on a config whose validation partitions read ``*data_root``
moves them all, as editing the anchor in the file would. A field that an override names itself
keeps that override's value.

Every failure is a :class:`ConfigError` whose message is a single line naming the file and the
dotted path of the offending field.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import getpass
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from tml.core.config.base_config import BaseConfig, ConfigValueError
from tml.core.errors import UserInputError

ConfigT = TypeVar("ConfigT", bound=BaseConfig)

_VARIABLE = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
_MAX_SHOWN_INPUT = 60
_LIST_INDEX = re.compile(r"\[(-?\d+)\]")


class ConfigError(UserInputError):
    """A config could not be read or does not validate; the message is one line."""


def default_variables() -> dict[str, str]:
    """Variables that resolve even when the environment does not define them."""
    return {
        "USER": getpass.getuser(),
        "TML_BASE": str(Path(__file__).resolve().parents[3]),
    }


def load_config_from_yaml(
    config_type: type[ConfigT], path: str | os.PathLike, overrides: Iterable[str] = ()
) -> ConfigT:
    """Reads, substitutes, overrides and validates a YAML config.

    Args:
        config_type: The config class the file describes.
        path: The YAML file.
        overrides: ``dotted.path=value`` strings applied after loading; values are parsed as YAML
            (``3``, ``true``, ``[1, 2]``, ``null``) and typed by the schema.

    Raises:
        ConfigError: naming the file and the dotted path of the problem.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read config file: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {_describe_yaml_error(error)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of fields")
    variables = {**default_variables(), **os.environ}
    data = _substitute(raw, variables, source, ())
    applied = [
        (*apply_override(data, override, config_type, variables), override)
        for override in overrides
    ]
    if applied:
        _follow_aliases(data, applied, _aliased_paths(text))
    return validate_config(config_type, data, source)


def validate_config(config_type: type[ConfigT], data: Any, source: str) -> ConfigT:
    """Validates plain data against ``config_type``, turning pydantic's report into one line."""
    try:
        return config_type.model_validate(data)
    except pydantic.ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(config_type, error)}") from None


def apply_override(
    data: dict[str, Any],
    override: str,
    config_type: type[BaseConfig] | None = None,
    variables: Mapping[str, str] | None = None,
) -> tuple[tuple[Any, ...], Any]:
    """Sets ``dotted.path=value`` in nested config data, in place.

    Keys may themselves contain dots (task names such as ``recap.engagement.is_favorited``). At
    each mapping the longest run of segments naming an existing key wins; a new key of a
    ``dict[str, Config]`` field extends up to the first segment that is a field of ``Config``.
    A list item is named by its index, ``tables.0.name`` or ``tables[0].name`` (negative
    indices count from the end).

    Args:
        data: Config data as loaded from YAML.
        override: ``dotted.path=value``; the value is parsed as YAML.
        config_type: The schema of ``data``, used to split new dotted keys.
        variables: Environment variables substituted into the value.

    Returns:
        The path of keys and list indices that was set, and the value set there.
    """
    dotted, separator, text = override.partition("=")
    if not separator or not dotted:
        raise ConfigError(f"override '{override}' must look like dotted.path=value")
    # A list item may be written tables[0] as well as tables.0.
    dotted = _LIST_INDEX.sub(r".\1", dotted)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override '{override}': invalid value: {_describe_yaml_error(error)}"
        ) from None
    if variables is not None:
        value = _substitute(value, variables, f"override '{override}'", ())
    segments = dotted.split(".")
    node: Any = data
    schema: Any = config_type
    walked: list[Any] = []
    while segments:
        schema = _unwrap_optional(schema)
        if isinstance(node, list):
            index_text = segments.pop(0)
            if not index_text.lstrip("-").isdigit() or not -len(node) <= int(index_text) < len(
                node
            ):
                raise ConfigError(
                    f"override '{override}': {_dotted(walked) or 'the top level'} has no item "
                    f"{index_text}"
                )
            # Counted from the front, as the file's own paths are (for following aliases).
            key: Any = int(index_text) % len(node)
            schema = _value_type(schema)
        elif isinstance(node, dict):
            key = _override_key(node, segments, schema)
            del segments[: len(key.split("."))]
            schema = _field_type(schema, key)
        else:
            raise ConfigError(f"override '{override}': {_dotted(walked)} is not a mapping")
        walked.append(key)
        if not segments:
            node[key] = value
            return tuple(walked), value
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = {}
        node = node[key]
    raise AssertionError("unreachable: a non-empty dotted path always reaches a value")


KeyPath = tuple[Any, ...]


def _aliased_paths(text: str) -> dict[KeyPath, list[KeyPath]]:
    """Path -> the other paths holding the same YAML node, for every node the file reaches by
    more than one path (an anchor and its aliases, also through ``<<`` merge keys)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    loader = yaml.SafeLoader("")
    paths_by_node: dict[int, list[KeyPath]] = {}

    def visit(node: yaml.Node, path: KeyPath) -> None:
        paths_by_node.setdefault(id(node), []).append(path)
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                visit(item, (*path, index))
        elif isinstance(node, yaml.MappingNode):
            for key, value in _mapping_items(node, loader):
                visit(value, (*path, key))

    if root is not None:
        visit(root, ())
    shared: dict[KeyPath, list[KeyPath]] = {}
    for paths in paths_by_node.values():
        for path in paths if len(paths) > 1 else ():
            shared[path] = [other for other in paths if other != path]
    return shared


def _mapping_items(node: yaml.MappingNode, loader: yaml.SafeLoader) -> list[tuple[Any, Any]]:
    """A mapping's (key, value node) pairs as the loader resolves them: keys written in the
    mapping win over merged ones, and an earlier merged mapping over a later one."""
    items: dict[Any, yaml.Node] = {}
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            merged.extend(
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
        else:
            items[loader.construct_object(key_node, deep=True)] = value_node
    for source in merged:
        for key, value_node in _mapping_items(source, loader):
            items.setdefault(key, value_node)
    return list(items.items())


def _follow_aliases(
    data: dict[str, Any],
    applied: list[tuple[KeyPath, Any, str]],
    shared: dict[KeyPath, list[KeyPath]],
) -> None:
    """Copies each override to the fields that alias what it set (or a mapping around it),
    leaving fields that an override names itself, or lies inside, to that override.

    Raises:
        ConfigError: when an override's field no longer exists because another override of
            the same anchored value replaced what held it (``a.list.3=...`` after the list
            became shorter through an alias).
    """
    explicit = [path for path, _, _ in applied]

    def named(path: KeyPath) -> bool:
        return any(path[: len(other)] == other for other in explicit)

    for path, value, _ in applied:
        for length in range(len(path), 0, -1):
            for other in shared.get(path[:length], ()):
                target = (*other, *path[length:])
                # An alias that another override reshaped may lack the field: nothing to copy.
                if not named(target):
                    with contextlib.suppress(LookupError, TypeError):
                        _set_path(data, target, copy.deepcopy(value))
    # An alias copied over a whole mapping may have covered a field set inside it: set again.
    for path, value, override in applied:
        try:
            _set_path(data, path, copy.deepcopy(value))
        except (LookupError, TypeError):
            raise ConfigError(
                f"override '{override}': {_dotted(list(path))} no longer exists after another "
                "override of the same anchored value"
            ) from None


def _set_path(data: Any, path: KeyPath, value: Any) -> None:
    node = data
    for key in path[:-1]:
        if isinstance(node, dict) and node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def format_validation_error(config_type: type[BaseConfig], error: pydantic.ValidationError) -> str:
    """One line: the dotted location of the first error, what is wrong, and the error count."""
    details = error.errors(include_url=False)
    first = details[0]
    location = list(first["loc"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigValueError):
        location.extend(cause.path)
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        message = _unknown_field_message(config_type, location)
    elif first["type"] != "value_error" and _is_scalar(first.get("input")):
        shown = repr(first["input"])
        if len(shown) > _MAX_SHOWN_INPUT:
            shown = shown[: _MAX_SHOWN_INPUT - 3] + "..."
        message += f" (got {shown})"
    where = _dotted(location) or "<top level>"
    more = len(details) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {message}{suffix}"


def _unknown_field_message(config_type: type[BaseConfig], location: list[Any]) -> str:
    allowed = _fields_at(config_type, location[:-1])
    name = str(location[-1])
    if not allowed:
        return "unknown field"
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
    return f"unknown field{hint}"


def _fields_at(config_type: type[BaseConfig], location: list[Any]) -> list[str]:
    """Field names of the config class found by walking ``location`` through the schema."""
    current: Any = config_type
    for part in location:
        current = (
            _field_type(_unwrap_optional(current), part)
            if isinstance(part, str)
            else (_value_type(current))
        )
    return _model_fields(current)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arguments) == 1:
            return arguments[0]
    return annotation


def _substitute(value: Any, variables: Mapping[str, str], source: str, where: tuple) -> Any:
    if isinstance(value, str):
        return _substitute_string(value, variables, source, where)
    if isinstance(value, dict):
        return {
            key: _substitute(item, variables, source, (*where, key)) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_substitute(item, variables, source, (*where, i)) for i, item in enumerate(value)]
    return value


def _substitute_string(text: str, variables: Mapping[str, str], source: str, where: tuple) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("braced") or match.group("bare")
        if name is None:
            return "$"
        if name not in variables:
            if match.group("default") is not None:
                return match.group("default")
            location = _dotted(list(where))
            raise ConfigError(
                f"{source}: {location + ': ' if location else ''}"
                f"environment variable ${name} is not set"
            )
        return variables[name]

    return _VARIABLE.sub(replace, text)


def _override_key(node: dict[str, Any], segments: list[str], schema: Any) -> str:
    for length in range(len(segments), 0, -1):
        candidate = ".".join(segments[:length])
        if candidate in node:
            return candidate
    if _is_model(schema):
        return segments[0]
    value_fields = _model_fields(_value_type(schema))
    for length in range(1, len(segments)):
        if segments[length] in value_fields:
            return ".".join(segments[:length])
    return ".".join(segments)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _model_fields(annotation: Any) -> list[str]:
    annotation = _unwrap_optional(annotation)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _field_type(annotation: Any, key: str) -> Any:
    """The declared type of ``key`` inside ``annotation`` (a model or a ``dict[str, X]``)."""
    if _is_model(annotation):
        field = annotation.model_fields.get(key)
        return field.annotation if field is not None else None
    return _value_type(annotation)


def _value_type(annotation: Any) -> Any:
    """X of ``dict[str, X]`` or ``list[X]``; None when unknown."""
    arguments = typing.get_args(_unwrap_optional(annotation))
    return arguments[-1] if arguments else None


def _dotted(location: list[Any]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem
