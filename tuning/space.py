"""The search space: a YAML file users edit (configs/search_space.yaml) and the one function that turns it into
config overrides for a trial, `suggest(trial, space, base)`.

File format (every key of `parameters` is a dotted config key, as on the command line):

    parameters:
      classifier.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      classifier.optimizer: {type: categorical, choices: [adam, sgd]}
      classifier.momentum: {type: float, low: 0.8, high: 0.99, when: {classifier.optimizer: sgd}}
      classifier.fine_tune_fraction: {type: float, low: 0.1, high: 1.0, unless: {classifier.weights: none}}

- `type`: float (low, high, optional `log: true` or `step`), int (low, high, optional `log: true` or `step`) or
  categorical (choices).
- `when` / `unless`: {other key: value or [values]}; the parameter is suggested only when every `when` matches and
  no `unless` does. The other key is an earlier parameter of the file or, when it is not tuned, the study's base
  config (e.g. `classifier.weights`: the fine-tuning depth only means something for pretrained backbones).
  A parameter that is not suggested keeps the base config's value.

`load_space` checks everything before a study starts (unknown keys, empty ranges, values that do not fit the
config field), so a bad file never leaves a half-created study behind. Errors name the file and the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from mammo.config import CONFIG_DIR, Config, check_setting
from mammo.errors import ConfigError

# The objective trains the classifier, so only its section can be tuned: a detector key would change nothing
# that the objective measures (tuning the detector needs a detector objective; see tuning/README section).
TUNABLE_SECTIONS = ("classifier",)
TYPES = ("float", "int", "categorical")
_COMMON_KEYS = {"type", "when", "unless"}
SPEC_KEYS = {"float": _COMMON_KEYS | {"low", "high", "log", "step"},
             "int": _COMMON_KEYS | {"low", "high", "log", "step"},
             "categorical": _COMMON_KEYS | {"choices"}}
DEFAULT_SPACE = CONFIG_DIR / "search_space.yaml"


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple
    negate: bool = False  # True for `unless`

    def holds(self, value) -> bool:
        return (value in self.values) != self.negate

    def __str__(self) -> str:
        return f"{'unless' if self.negate else 'when'} {self.key} in {list(self.values)}"


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key; also the optuna parameter name
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    source: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)


# --- config field lookup ------------------------------------------------------------------------------------
def field_hint(key: str, where: str = ""):
    """The type hint of config field `key` ('section.field'); ConfigError naming the key when there is none."""
    prefix = f"{where}: " if where else ""
    parts = str(key).split(".")
    if len(parts) != 2:
        raise ConfigError(f"{prefix}{key}: expected a dotted config key 'section.field', e.g. classifier.dropout")
    section, name = parts
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        close = difflib.get_close_matches(section, list(sections), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (sections: {', '.join(sections)})"
        raise ConfigError(f"{prefix}{key}: unknown config section '{section}'{hint}")
    cls = typing.get_type_hints(Config)[section]
    hints = typing.get_type_hints(cls)
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=1)
        hint = f" (did you mean '{section}.{close[0]}'?)" if close else ""
        raise ConfigError(f"{prefix}{key}: unknown parameter: no field '{name}' in the {section} section{hint}")
    return hints[name]


def config_value(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _scalar_types(hint) -> tuple[tuple, bool]:
    """(allowed scalar types, None allowed) of a field hint; ((), ...) for non-scalar fields."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(a) for a in typing.get_args(hint))), False
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in (bool, int, float, str):
            return (inner[0],), type(None) in args
        return (), False
    if hint in (bool, int, float, str):
        return (hint,), False
    return (), False


def _fitted(value, key: str, what: str):
    """`value` as config setting `key` takes it (the config's own coercion, choices and range); else ConfigError."""
    try:
        return check_setting(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{what} {value!r} does not fit the config field: {exc}") from None


def _type_name(hint) -> str:
    allowed, optional = _scalar_types(hint)
    names = "/".join(t.__name__ for t in allowed) or str(hint)
    return names + (" or null" if optional else "")


# --- loading and validation ----------------------------------------------------------------------------------
def _number(value, key: str, what: str, where: str, integer: bool = False):
    if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: '{what}' must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{where}: {key}: '{what}' must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


def _conditions(spec, key: str, where: str, earlier: dict[str, Param], later: set[str]) -> tuple[Condition, ...]:
    out = []
    for word in ("when", "unless"):
        block = spec.get(word)
        if block is None:
            continue
        if not isinstance(block, dict) or not block:
            raise ConfigError(f"{where}: {key}: '{word}' must be a mapping {{other.key: value or [values]}}, "
                              f"got {block!r}")
        for other, raw in block.items():
            if other == key:
                raise ConfigError(f"{where}: {key}: '{word}' refers to the parameter itself")
            if other in later:
                raise ConfigError(f"{where}: {key}: '{word}' refers to {other}, which is defined after it; "
                                  f"put {other} first")
            field_hint(other, f"{where}: {key}: '{word}'")
            values = [_fitted(v, other, f"{where}: {key}: '{word}' value")
                      for v in (raw if isinstance(raw, list) else [raw])]
            if not values:
                raise ConfigError(f"{where}: {key}: '{word}' {other} has an empty list of values")
            if other in earlier and earlier[other].type == "categorical" and \
                    not any(v in earlier[other].choices for v in values):
                raise ConfigError(f"{where}: {key}: '{word}' {other}: none of {values} is among its choices "
                                  f"{list(earlier[other].choices)}, so the condition never changes")
            out.append(Condition(other, tuple(values), negate=(word == "unless")))
    return tuple(out)


def _param(key: str, spec, where: str, earlier: dict[str, Param], later: set[str]) -> Param:
    hint = field_hint(key, where)
    section = key.split(".")[0]
    if section not in TUNABLE_SECTIONS:
        raise ConfigError(f"{where}: {key}: the objective trains the classifier; only keys of the "
                          f"{', '.join(TUNABLE_SECTIONS)} section can be tuned")
    allowed, _ = _scalar_types(hint)
    if not allowed:
        raise ConfigError(f"{where}: {key}: this field ({hint}) is not a number, string or flag and cannot be tuned")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping like {{type: float, low: 0.1, high: 0.5}}, "
                          f"got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: {key}: 'type' must be one of {', '.join(TYPES)}, got {kind!r}")
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(SPEC_KEYS[kind]), n=1)
        hint_txt = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(SPEC_KEYS[kind]))})"
        raise ConfigError(f"{where}: {key}: unknown setting '{unknown[0]}' for type {kind}{hint_txt}")
    conditions = _conditions(spec, key, where, earlier, later)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: 'choices' must be a non-empty list, got {choices!r}")
        converted = [_fitted(c, key, f"{where}: {key}: choice") for c in choices]
        if len(set(map(repr, converted))) != len(converted):
            raise ConfigError(f"{where}: {key}: 'choices' has duplicates: {choices}")
        return Param(key, kind, choices=tuple(converted), conditions=conditions)
    # numeric ranges
    if kind == "int" and int not in allowed:
        raise ConfigError(f"{where}: {key}: type int does not fit the config field ({_type_name(hint)})")
    if kind == "float" and float not in allowed:
        raise ConfigError(f"{where}: {key}: type float does not fit the config field ({_type_name(hint)})"
                          + ("; use type int" if int in allowed else ""))
    for word in ("low", "high"):
        if word not in spec:
            raise ConfigError(f"{where}: {key}: type {kind} needs 'low' and 'high'")
    integer = kind == "int"
    low = _number(spec["low"], key, "low", where, integer)
    high = _number(spec["high"], key, "high", where, integer)
    if low > high:
        raise ConfigError(f"{where}: {key}: empty range: low {low} > high {high}")
    if low == high:
        raise ConfigError(f"{where}: {key}: empty range: low == high == {low}; set the value in the config "
                          f"instead of tuning it")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: 'log' must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, key, "step", where, integer)
        if step <= 0:
            raise ConfigError(f"{where}: {key}: 'step' must be > 0, got {step}")
        if log:
            raise ConfigError(f"{where}: {key}: 'step' and 'log: true' cannot be combined")
        if step > high - low:
            raise ConfigError(f"{where}: {key}: empty range: step {step} is larger than high - low")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: 'log: true' needs low > 0, got {low}")
    for value in (low, high):
        _fitted(value, key, f"{where}: {key}: bound")  # the field's declared range, e.g. dropout <= 0.95
    return Param(key, kind, low=low, high=high, log=log, step=step, conditions=conditions)


def parse_space(data, source: str = "search space") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'parameters' section, got {type(data).__name__}")
    unknown = sorted(set(data) - {"parameters"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key '{unknown[0]}' (expected only 'parameters')")
    params_raw = data.get("parameters")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{source}: 'parameters' must be a non-empty mapping of config keys to ranges")
    earlier: dict[str, Param] = {}
    keys = list(params_raw)
    for i, key in enumerate(keys):
        earlier[str(key)] = _param(str(key), params_raw[key], source, earlier, set(map(str, keys[i + 1:])))
    return SearchSpace(tuple(earlier.values()), source)


def resolve_space_path(path) -> Path:
    """Relative paths are tried against the working folder, then the project root (as configs/... defaults)."""
    p = Path(path) if path else DEFAULT_SPACE
    if not p.is_absolute() and not p.exists() and (CONFIG_DIR.parent / p).exists():
        p = CONFIG_DIR.parent / p
    return p


def load_space(path=None) -> SearchSpace:
    p = resolve_space_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: search space file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_space(data, str(p))


# --- the one function of the trial ---------------------------------------------------------------------------
def suggest(trial, space: SearchSpace, base: Config) -> dict:
    """Suggest every active parameter of `space` for an optuna `trial`; returns {dotted key: value} overrides.

    A conditional parameter is suggested only when its conditions hold for the values chosen so far (or the
    base config's value for keys that are not tuned), so optuna never sees a momentum for Adam."""
    chosen: dict = {}
    for p in space.params:
        current = {c.key: chosen[c.key] if c.key in chosen else config_value(base, c.key) for c in p.conditions}
        if not all(c.holds(current[c.key]) for c in p.conditions):
            continue
        if p.type == "float":
            value = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            value = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            value = trial.suggest_categorical(p.key, list(p.choices))
        chosen[p.key] = value
    return chosen


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """A copy of `cfg` with {dotted key: value} applied; each section checks the values as a config file's."""
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        field_hint(key)
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **f) for s, f in sections.items()})
