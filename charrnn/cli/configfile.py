"""Config files for `charrnn train`: `--config run.toml` reads one, `--save-config run.toml` writes one.

A config file is flat TOML whose keys are ModelConfig and TrainConfig field names (`hidden_size = 256`,
`time_budget = "5m"`, `val_chars = "all"`, `beta2 = 0.95`). An unknown key, a value of the wrong type, or a number out of its range
(nan, inf, `beta1 = 2.0`: config.FIELD_RANGES) is a usage error (exit 2) naming the key. Precedence: dataclass defaults < the config file < options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from typing import Any

from ..config import FIELD_RANGES, ModelConfig, TrainConfig, check_field, parse_dropout, parse_duration, parse_val_chars
from ..errors import UsageError, unreadable

NOT_IN_FILE = {"vocab_size"}  # comes from the corpus


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in NOT_IN_FILE}


def config_keys() -> dict:
    """Every key a config file may hold -> (the dataclass, its type)."""
    keys = {name: (ModelConfig, hint) for name, hint in _fields(ModelConfig).items()}
    keys.update({name: (TrainConfig, hint) for name, hint in _fields(TrainConfig).items()})
    return keys


def _load_toml(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise unreadable(exc, path, "config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not valid UTF-8") from None


def _coerce(key: str, value: Any, hint, path: str) -> Any:
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if key == "time_budget" and isinstance(value, str):
        return parse_duration(value)
    if key == "dropout" and isinstance(value, str):
        return parse_dropout(value)  # "auto"
    if key == "val_chars" and isinstance(value, str):
        try:
            return parse_val_chars(value)  # "auto" or "all"
        except UsageError:
            raise UsageError(f"config file {path}: val_chars must be auto, all or a number, not {value!r}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise UsageError(f"config file {path}: {key} is out of range: {value}") from None
    if base is bool and isinstance(value, bool):
        return value
    if base in (int, str) and isinstance(value, base) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, float):
        return value
    raise UsageError(f"config file {path}: {key} must be {base.__name__}, not {value!r}")


def read_config(path: str) -> dict:
    """The validated values of a config file: {field name: value}. Unknown keys are an error naming the key."""
    raw = _load_toml(path)
    keys = config_keys()
    values = {}
    for key, value in raw.items():
        if key not in keys:
            hint = ""
            if key.replace("-", "_") in keys:
                hint = f" (did you mean {key.replace('-', '_')}?)"
            elif isinstance(value, dict):
                hint = " (sections are not supported: write the keys at the top level)"
            raise UsageError(f"config file {path}: unknown key {key!r}{hint}")
        values[key] = _coerce(key, value, keys[key][1], path)
        if key in FIELD_RANGES and values[key] is not None:  # a number: finite and in range, naming the key
            check_field(key, values[key], label=f"config file {path}: {key}")
    return values


def apply_config(model_config: ModelConfig, train_config: TrainConfig, values: dict,
                 explicit: set) -> tuple[ModelConfig, TrainConfig]:
    """Set the file's values on the configs, except those given on the command line (`explicit`), which win."""
    keys = config_keys()
    for key, value in values.items():
        if key in explicit:
            continue
        target = model_config if keys[key][0] is ModelConfig else train_config
        setattr(target, key, value)
    return model_config, train_config


def settle_configs(model_config: ModelConfig, train_config: TrainConfig, path: Any, explicit: set) -> set:
    """`charrnn train`'s configuration: the file at `path` (if any) over the defaults, the command line's options
    (`explicit`) over the file, then every value checked (UsageError), before anything is created or downloaded.
    Returns the names chosen on purpose (the options and the file's keys: they matter when resuming)."""
    explicit = set(explicit)
    if path is not None:
        values = read_config(path)
        apply_config(model_config, train_config, values, explicit)
        explicit |= set(values)
    model_config.validate()
    train_config.validate()
    return explicit


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def config_toml(model_config: ModelConfig, train_config: TrainConfig, explicit=None) -> str:
    """The effective configuration as TOML (unset optional values are left out: TOML has no null). Where the run
    would choose its size for the time budget (`explicit`: the options set on purpose; autosize.applies), the
    size lines are comments, so that training from the file chooses too."""
    from ..training.autosize import applies

    sized_by_budget = applies(model_config, train_config, explicit)
    lines = ["# charrnn train configuration: charrnn train CORPUS --config THIS_FILE", "", "# model"]
    for name in _fields(ModelConfig):
        value = getattr(model_config, name)
        if sized_by_budget and name in ("hidden_size", "num_layers"):
            lines.append(f"# {name} = {value}  (chosen for the time budget at start-up; set it to fix the size)")
            continue
        lines.append(f"{name} = {_toml_value('auto' if value is None else value)}")  # dropout: None is auto
    lines += ["", "# training"]
    for name in _fields(TrainConfig):
        value = getattr(train_config, name)
        if name == "val_chars" and value is None:
            value = "auto"
        if value is None:
            lines.append(f"# {name} = (not set)")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(path: str, model_config: ModelConfig, train_config: TrainConfig, explicit=None) -> str:
    """Write the effective configuration to path, atomically (fileio.write_text)."""
    from ..store.fileio import write_text

    return write_text(path, config_toml(model_config, train_config, explicit), "config file")


__all__ = ["read_config", "apply_config", "settle_configs", "config_toml", "save_config", "config_keys"]
