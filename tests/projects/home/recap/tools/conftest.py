"""The data tests' tiny schema and config, for the generator's tests."""

from ..data.conftest import make_config, schema_path, write_files

__all__ = ["make_config", "schema_path", "write_files"]
