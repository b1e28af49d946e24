"""The search space of `jaxforge tune`, written like config overrides: `--search.KEY=SPEC`.

    --search.optimizer.learning_rate=loguniform:1e-4:1e-2   a float, uniform in log space
    --search.model.dropout_rate=uniform:0:0.5                a float
    --search.dataset.batch_size=int:32:256:log               an integer (`:log`: in log space)
    --search.model.hidden_sizes=choice:(32,),(64,),(64,64)   one of the values (as --config. takes)

Each parameter is checked against the resolved config before the first trial: the key exists,
the range fits the field's type, and its ends (or each choice) resolve and validate like a run.
Parsing needs no Optuna; `suggest` takes an `optuna.Trial`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from framework import config as config_lib
from framework.errors import ConfigError
from framework.sweep import split_prefixed_args, split_values

KINDS = ("uniform", "loguniform", "int", "choice")
_PRIMITIVE = (bool, int, float, str, type(None))  # What Optuna stores as a categorical value.


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config value: a float or integer range, or a list of choices."""

    key: str  # The config key, e.g. "optimizer.learning_rate"; Optuna's parameter name.
    kind: str  # One of KINDS.
    spec: str  # As written after `--search.KEY=`.
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()  # As Optuna stores them: numbers and words typed, else text.
    texts: tuple[str, ...] = ()  # Each choice as written: the override text of the config.

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an `optuna.Trial` (sampled, or fixed by a retry)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def override(self, value: Any) -> str:
        """The `--config.KEY=` text that sets the config to `value`."""
        if self.kind == "choice":
            return self.texts[self.choices.index(value)]
        return repr(float(value)) if self.kind in ("uniform", "loguniform") else str(int(value))

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a float range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1))
        return None

    def ends(self) -> list[str]:
        """The override texts checked before the first trial: both ends, or every choice."""
        return list(self.texts) if self.kind == "choice" else [
            self.override(self.low), self.override(self.high)]


def split_search_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate `--search.KEY=SPEC` (or `--search.KEY SPEC`) from the config overrides."""
    return split_prefixed_args(
        args, "search", "has no range; write e.g. --search.{key}=uniform:0:1 or "
                        "--search.{key}=choice:A,B.", "give one range.")


def parse_param(key: str, spec: str) -> Param:
    """`loguniform:1e-4:1e-2` -> Param(kind="loguniform", low=1e-4, high=1e-2, log=True)."""
    kind, _, rest = spec.partition(":")
    flag = f"--search.{key}={spec}"
    if kind not in KINDS:
        raise ConfigError(f"{flag}: the range starts with one of {', '.join(KINDS)}, e.g. "
                          f"uniform:0:0.5, loguniform:1e-4:1e-2, int:32:256:log, choice:32,64.")
    if kind == "choice":
        return _parse_choices(key, spec, rest, flag)
    parts = rest.split(":")
    log = kind == "loguniform" or (kind == "int" and parts[2:] == ["log"])
    if len(parts) != (3 if kind == "int" and log else 2):
        shape = "int:LOW:HIGH or int:LOW:HIGH:log" if kind == "int" else f"{kind}:LOW:HIGH"
        raise ConfigError(f"{flag}: write {shape}.")
    number = int if kind == "int" else float
    try:
        low, high = number(parts[0]), number(parts[1])
    except ValueError:
        raise ConfigError(f"{flag}: LOW and HIGH must be {number.__name__}s.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{flag}: LOW must be less than HIGH (and both finite).")
    if log and low <= 0:
        raise ConfigError(f"{flag}: a log range needs LOW > 0.")
    return Param(key, kind, spec, low, high, log)


def _parse_choices(key: str, spec: str, rest: str, flag: str) -> Param:
    texts = split_values(rest)
    if not rest or "" in texts:
        raise ConfigError(f"{flag}: write choice:A,B,... with no empty value.")
    choices = tuple(_typed(text) for text in texts)
    if len(set(map(repr, choices))) < len(choices):
        raise ConfigError(f"{flag}: a value is listed twice.")
    return Param(key, "choice", spec, choices=choices, texts=tuple(texts))


def _typed(text: str) -> Any:
    """`64` -> 64, `relu` -> "relu", `(8,8)` -> "(8,8)": Optuna stores numbers, words, None."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, _PRIMITIVE) else text


def parse(specs: dict[str, str]) -> list[Param]:
    """Every `--search.` flag as a Param; at least one."""
    if not specs:
        raise ConfigError("Nothing to search: give at least one --search.KEY=RANGE, e.g. "
                          "--search.optimizer.learning_rate=loguniform:1e-4:1e-2.")
    return [parse_param(key, spec) for key, spec in specs.items()]


def check(params: Sequence[Param], user: ml_collections.ConfigDict,
          fixed: dict[str, str]) -> None:
    """Raise ConfigError (naming the flag) unless every parameter's ends resolve and validate
    like a run, and each range fits its field: floats for float fields, integers for integer
    (or float) fields."""
    for param in params:
        if param.key in fixed:
            raise ConfigError(f"config.{param.key} is both searched (--search.{param.key}) and "
                              f"set (--config.{param.key}); keep one.")
    for param in params:
        for text in param.ends():
            try:
                config = config_lib.resolve_config(user, {**fixed, param.key: text})
            except ConfigError as error:
                detail = (str(error).removeprefix(f"--config.{param.key}={text}: ")
                          .removeprefix(f"--config.{param.key}: "))
                raise ConfigError(f"--search.{param.key}={param.spec}: {detail}") from None
        _check_field_type(param, config)


def _check_field_type(param: Param, config: ml_collections.ConfigDict) -> None:
    *path, name = param.key.split(".")
    parent = functools.reduce(lambda node, part: node[part], path, config)
    field = parent.get_type(name)
    wanted = {"uniform": (float,), "loguniform": (float,), "int": (int, float)}.get(param.kind)
    if wanted and (field not in wanted or field is bool):
        hint = "write int:LOW:HIGH" if field is int else "list its values with choice:A,B"
        raise ConfigError(f"--search.{param.key}={param.spec}: config.{param.key} holds a "
                          f"{field.__name__}, which the range {param.spec} cannot set; {hint}.")
