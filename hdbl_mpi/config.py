"""Loading a configuration: defaults, then a YAML file, then `--set key.sub=value` overrides, then the checks of
hdbl_mpi/config_checks.py.

The same order as timm's train.py (file, then command line), with one difference: every key is declared
in a dataclass (hdbl_mpi/schema.py), so a misspelt key is an error that names the closest valid key instead of
a setting that is silently ignored. What a value may be is asked of the part that implements it (its choice
list: the rules in hdbl_mpi/rules/, the optimizers, the precisions, the data sets), none of which loads torch
or MPI to answer. The resolved config (after overrides) is what a run directory keeps, and `--resume`
reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from hdbl_mpi.config_checks import validate
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.policy import KVSTORE_MODES
from hdbl_mpi.schema import Config


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one YAML value against its declared type; YAML writes 1e-4 as a string, so floats
    accept numeric strings."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and item_type is not str:
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}.")
    if annotation is float:
        number = _float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        if not math.isfinite(number):
            raise ConfigError(f"{key} is {number}; it must be a finite number.")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}.")
    if annotation is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key} must be a mapping, got {value!r}.")
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}.{hint} Valid keys here: {', '.join(valid)}.")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(f"{prefix}{key}", names)
        annotation = hints[key]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} must be a mapping of keys, got {value!r}.")
            kwargs[key] = _build(annotation, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, annotation, f"{prefix}{key}")
    return cls(**kwargs)


def _apply_override(tree: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.sub=value, got {assignment!r} (e.g. --set train.epochs=20).")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r} names no key.")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section.")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "synthetic":
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then validation of each value's type and range."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file such as configs/demo.yaml.")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections (data:, model:, ...).")
        _merge(tree, loaded)
    for assignment in overrides:
        _apply_override(tree, assignment)
    return config_from_dict(tree)


def config_from_dict(tree: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested mapping, e.g. one broadcast by rank 0."""
    config = _build(Config, _legacy(tree), "")
    if config.ps.mode == "local":  # one process: one worker, no MPI launcher needed
        config.dual.workers = 1
    config.ps.mode = KVSTORE_MODES.get(config.ps.mode, config.ps.mode)
    validate(config)
    return config


def _legacy(tree: dict) -> dict:
    """Keys of earlier versions still read (a run directory's config.yaml keeps every key): debug.slow_rank and
    debug.slow_seconds, a sleep before every push, are debug.slow.delay_s now."""
    debug = tree.get("debug")
    if not isinstance(debug, dict) or not {"slow_rank", "slow_seconds"} & set(debug):
        return tree
    debug = dict(debug)
    rank, seconds = debug.pop("slow_rank", -1), debug.pop("slow_seconds", 0.0)
    if isinstance(rank, int) and rank >= 0 and seconds:
        slow = dict(debug.get("slow") or {})
        slow["delay_s"] = {**(slow.get("delay_s") or {}), rank: seconds}
        debug["slow"] = slow
    return {**tree, "debug": debug}


def dump_config(config: Config) -> str:
    """The resolved config as YAML, in section order, as the run directory keeps it."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
