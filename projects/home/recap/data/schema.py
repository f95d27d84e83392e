"""The segdense schema: which features a record holds, with their types and lengths.

The schema file is the source of truth for the data (``{"schema": [{"feature_name", "dtype",
"length"}, ...]}``); Parquet files carry a copy of it in their metadata, and the loader checks
every file against the schema the config names.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tml.core.errors import UserInputError
from tml.storage import as_path

VARIABLE_LENGTH = -1


class SchemaError(UserInputError):
    """The schema file, or the config's use of it, is wrong; the message names the file."""


class FeatureDtype(enum.StrEnum):
    """Value types of the schema (the names of tf.Example's lists, kept for compatibility)."""

    INT64_LIST = "int64_list"
    FLOAT_LIST = "float_list"
    BYTES_LIST = "bytes_list"


# The numpy type a feature's values decode to; bytes have no tensor form.
NUMPY_DTYPES: dict[FeatureDtype, np.dtype | None] = {
    FeatureDtype.INT64_LIST: np.dtype(np.int64),
    FeatureDtype.FLOAT_LIST: np.dtype(np.float32),
    FeatureDtype.BYTES_LIST: None,
}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One entry of the schema."""

    name: str
    dtype: FeatureDtype
    length: int

    @property
    def is_fixed_numeric(self) -> bool:
        """Whether the feature decodes to a dense ``[rows, length]`` array."""
        return self.length != VARIABLE_LENGTH and NUMPY_DTYPES[self.dtype] is not None

    @property
    def numpy_dtype(self) -> np.dtype | None:
        return NUMPY_DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {"feature_name": self.name, "dtype": self.dtype.value, "length": self.length}


@dataclasses.dataclass(frozen=True)
class SegDenseSchema:
    """The features of a schema file, in file order."""

    path: str
    features: tuple[FeatureSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {spec.name: spec for spec in self.features})

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[FeatureSpec]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def get(self, name: str, *, where: str) -> FeatureSpec:
        """The feature called ``name``.

        Args:
            name: A schema feature name.
            where: The config field that asked for it, quoted in the error.

        Raises:
            SchemaError: naming the schema file when the feature is not in it.
        """
        spec = self._by_name.get(name)  # type: ignore[attr-defined]
        if spec is None:
            raise SchemaError(f"{where}: feature '{name}' is not in the schema file {self.path}")
        return spec

    def to_json(self) -> dict[str, Any]:
        """The schema in the file format (written into Parquet metadata)."""
        return {"schema": [spec.to_json() for spec in self.features]}


def parse_schema(data: Any, path: str) -> SegDenseSchema:
    """Builds a schema from the decoded JSON of a schema file.

    Args:
        data: The decoded JSON document.
        path: Where it came from, quoted in errors.

    Raises:
        SchemaError: naming ``path`` and the offending entry.
    """
    if not isinstance(data, dict) or not isinstance(data.get("schema"), list):
        raise SchemaError(f"schema file {path}: expected an object with a 'schema' list")
    features = []
    seen: set[str] = set()
    for index, entry in enumerate(data["schema"]):
        where = f"schema file {path}: entry {index}"
        if not isinstance(entry, dict):
            raise SchemaError(f"{where}: expected an object, got {entry!r}")
        unknown = sorted(set(entry) - {"feature_name", "dtype", "length"})
        if unknown:
            raise SchemaError(f"{where}: unknown keys {unknown}")
        name = entry.get("feature_name")
        if not isinstance(name, str) or not name:
            raise SchemaError(f"{where}: 'feature_name' must be a non-empty string")
        where = f"schema file {path}: feature '{name}'"
        if name in seen:
            raise SchemaError(f"{where}: declared twice")
        seen.add(name)
        try:
            dtype = FeatureDtype(entry.get("dtype"))
        except ValueError:
            allowed = ", ".join(item.value for item in FeatureDtype)
            raise SchemaError(
                f"{where}: dtype must be one of {allowed}, got {entry.get('dtype')!r}"
            ) from None
        length = entry.get("length")
        if not isinstance(length, int) or isinstance(length, bool):
            raise SchemaError(f"{where}: length must be an integer, got {length!r}")
        if length < 1 and length != VARIABLE_LENGTH:
            raise SchemaError(f"{where}: length must be positive or -1 (variable), got {length}")
        features.append(FeatureSpec(name=name, dtype=dtype, length=length))
    if not features:
        raise SchemaError(f"schema file {path}: the schema lists no feature")
    return SegDenseSchema(path=path, features=tuple(features))


def load_schema(path: str | Path) -> SegDenseSchema:
    """Reads a segdense schema file.

    Raises:
        SchemaError: naming the file when it cannot be read or is malformed.
    """
    path = str(path)
    try:
        text = as_path(path).read_text()
    except OSError as error:
        raise SchemaError(f"cannot read schema file {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SchemaError(
            f"schema file {path}: invalid JSON at line {error.lineno}: {error.msg}"
        ) from None
    return parse_schema(data, path)
