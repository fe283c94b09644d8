"""Experiment configs: one base config, experiment files that override it, checked overrides.

An experiment file defines `get_config()` returning `base_config()` with the fields that differ
changed. `load_config(path, overrides)` runs it, applies `--config.a.b=value` overrides with type
checks, and validates: an unknown key, a wrong type or an impossible value raises `ConfigError`
with one line naming the key (and, for a typo, the closest valid key).

Modules: `base.py` holds every key and its default, `keys.py` experiment files and overrides,
`checks.py` the validation and `model_config`.
"""

from __future__ import annotations

from typing import Iterable

from ml_collections import config_dict

from gpt2_jax.config.base import DTYPES, INT_LIMIT, SECTIONS, TASKS, TOKEN_TASKS, ConfigError, base_config
from gpt2_jax.config.checks import model_config, validate
from gpt2_jax.config.keys import load_experiment, apply_override, check_keys, flatten, to_json

__all__ = ["DTYPES", "INT_LIMIT", "SECTIONS", "TASKS", "TOKEN_TASKS", "ConfigError", "apply_override", "base_config",
           "check_keys", "flatten", "from_dict", "load_config", "model_config", "to_json", "validate"]


def load_config(path: str, overrides: Iterable[str] = ()) -> config_dict.ConfigDict:
    """Run an experiment file's get_config(), apply overrides, validate; returns the config."""
    cfg = load_experiment(path)
    check_keys(cfg)
    for assignment in overrides:
        apply_override(cfg, assignment)
    validate(cfg)
    return cfg


def from_dict(d: dict) -> config_dict.ConfigDict:
    """Rebuild a config saved by to_json, checked against the current base config."""
    cfg = base_config()
    flat = flatten(config_dict.ConfigDict(d))
    for key, value in flat.items():
        apply_override(cfg, f"{key}={value!r}")
    validate(cfg)
    return cfg
