"""What a pipeline config means: the named files merged in order, then `--config` overrides, then
the schema's defaults; unknown keys and bad values are errors naming the key.

    config = resolve_config(["config/reference.yaml"], {"baseline": {...}})   # the resolved dict
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tinylm.files import file_error, read_text, yaml_problem
from tinylm.pipeline.paths import check_results_dir, results_dir_for

SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"
DEFAULT_CONFIGFILE = "config/config.yaml"


def deep_merge(base: dict, update: dict) -> dict:
    """`base` with `update` merged in, nested mappings key by key (as Snakemake merges configs)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_override(key: str, text: str) -> Any:
    """A `--config` value read as YAML. Text that is not YAML stays text, as Snakemake keeps it,
    unless it opens a mapping or a list: that one was left unclosed, a ValueError naming the key."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        if text.lstrip().startswith(("{", "[")):
            raise ValueError(f"--config {key}: {text!r} is not valid YAML ({yaml_problem(error)})") from None
        return text


def typed(value: Any) -> Any:
    """`--config key={a: 3}` gives nested values as text; read them as the YAML config file would.
    Text that is not YAML stays text."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str) and value.strip():
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


def _schema_validator():
    """A JSON-schema validator that also fills in each property's default, as Snakemake's `validate` does."""
    import jsonschema

    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(yaml.safe_load(SCHEMA.read_text()))


def validate_config(data: dict) -> dict:
    """A copy of `data` checked against the schema, defaults filled in. Raises ValueError naming the key."""
    data = copy.deepcopy(data)
    error = next(iter(sorted(_schema_validator().iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise ValueError(f"config {where}: {error.message}")
    return data


def read_config_file(path: str | Path) -> dict:
    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise file_error("config file", path, f"is not valid YAML ({yaml_problem(error)})") from None
    if not isinstance(data, dict):
        raise file_error("config file", path, "is not a mapping of config keys")
    return data


def resolve_config(configfiles: list[str | Path], overrides: dict | None = None) -> dict:
    """What a run means: the named config files merged in order, then `overrides` (--config), then
    the schema's defaults. No other file is read. `results_dir`, unless given, follows the files'
    names (tinylm.pipeline.paths.results_dir_for)."""
    data: dict = {"results_dir": results_dir_for(configfiles)}
    for path in configfiles:
        data = deep_merge(data, read_config_file(path))
    overrides = overrides or {}
    for key, value in overrides.items():
        if isinstance(value, str):  # Snakemake passes a value it could not read on as text
            read_override(key, value)
    config = validate_config(deep_merge(data, typed(overrides)))
    check_results_dir(config["results_dir"])
    return config


def parse_overrides(pairs: list[str]) -> dict:
    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--config {pair!r}: expected KEY=VALUE")
        overrides = deep_merge(overrides, {key: typed(read_override(key, value) if value.strip() else value)})
    return overrides
