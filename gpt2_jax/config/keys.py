"""Experiment files, keys and overrides: `load_config(path, overrides)`, `flatten`, `to_json`."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import pathlib
from typing import Any, Iterable

from ml_collections import config_dict

from gpt2_jax.config.base import INT_LIMIT, ConfigError, base_config


def load_experiment(path: str) -> config_dict.ConfigDict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found; pass an experiments/*.py file")
    spec = importlib.util.spec_from_file_location(f"_experiment_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        cfg = module.get_config()
    except AttributeError as e:
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path} defines no get_config(); it must return a ConfigDict") from None
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    except TypeError as e:
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    if not isinstance(cfg, config_dict.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected a ConfigDict")
    return cfg


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def flatten(tree: config_dict.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """{'section.key': value} of a ConfigDict or of its saved dict form."""
    out, nested = {}, config_dict.ConfigDict if isinstance(tree, config_dict.ConfigDict) else dict
    for k in tree.keys():
        v = tree[k]
        if isinstance(v, nested):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unknown_key_error(key: str, valid: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see gpt2_jax/config/base.py:base_config for valid keys"
    return ConfigError(f"unknown config key {key}{hint}")


def check_keys(cfg: config_dict.ConfigDict) -> None:
    """Raise ConfigError if cfg has a key that base_config() does not."""
    valid = flatten(base_config())
    for key in flatten(cfg):
        if key not in valid:
            raise _unknown_key_error(key, valid)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text  # a bare string such as --config.data.tokenizer=gpt2


def _coerce(key: str, value: Any, want: type) -> Any:
    if value is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key} wants true/false, got {value!r}")
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 written for steps
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
        raise ConfigError(f"config key {key} wants {want.__name__}, got {shown} ({type(value).__name__})")
    if want is float and not math.isfinite(value):
        raise ConfigError(f"config key {key} wants a finite number, got {value!r}")
    if want is int and abs(value) > INT_LIMIT:
        raise ConfigError(f"config key {key}: {value} is out of range (at most {INT_LIMIT:,} in size)")
    return value


def apply_override(cfg: config_dict.ConfigDict, assignment: str) -> None:
    """Apply one `a.b=value` (or `--config.a.b=value`) override in place, type-checked."""
    text = assignment.removeprefix("--").removeprefix("config.")
    if "=" not in text:
        raise ConfigError(f"override {assignment!r} needs the form --config.section.key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    valid = flatten(base_config())
    if key not in valid:
        raise _unknown_key_error(key, valid)
    node = cfg
    for p in parts[:-1]:
        node = node[p]
    want = base_config()
    for p in parts[:-1]:
        want = want[p]
    wanted_type = want.get_type(parts[-1])
    value = _parse_value(raw)
    if value is None and wanted_type is str and want[parts[-1]] is not None:
        value = raw  # e.g. --config.model.remat=none: a choice named 'none', not a missing value
    elif value is None and want[parts[-1]] is not None:  # only unset-by-default keys take none
        raise ConfigError(f"config key {key} wants {wanted_type.__name__}, got none")
    value = _coerce(key, value, wanted_type)
    node[parts[-1]] = value


def to_json(cfg: config_dict.ConfigDict) -> str:
    """The config as indented JSON (saved beside every run and checkpoint)."""
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
