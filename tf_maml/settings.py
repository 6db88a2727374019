"""Rules for settings: one definition of what a value must be serves a config's validation (at creation,
before anything is written), a script flag's check and a library argument's, so they cannot drift apart."""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence


class Rule(NamedTuple):
    """What a setting must be (``holds``) and how an error message says it (``says``): one rule serves a
    config's validation, a script flag's check and a library argument's, so they cannot drift apart."""

    holds: Callable[[Any], bool]
    says: str


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(low: int) -> Rule:
    """A whole number >= ``low`` (a float or bool is a mistake, not something to round)."""
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite real number between ``low`` and ``high`` (ends included unless ``*_open``)."""

    def holds(v: Any) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    if high == math.inf:
        says = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        says = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(holds, says)


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: not isinstance(v, (list, dict)) and v in choices, f"one of {', '.join(map(repr, choices))}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.holds(v), f"None or {rule.says}")


def each(rule: Rule, nonempty: bool = False) -> Rule:
    """A list or tuple whose items all keep ``rule``."""
    return Rule(lambda v: isinstance(v, (list, tuple)) and (len(v) > 0 or not nonempty) and all(map(rule.holds, v)),
                f"a {'non-empty ' if nonempty else ''}list, each item {rule.says}")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")


def check_value(name: str, value: Any, rule: Rule) -> None:
    """Raise a ValueError naming ``name`` if ``value`` breaks ``rule``."""
    if not rule.holds(value):
        raise ValueError(f"{name} must be {rule.says}, got {value!r}.")


class InvalidSettings(ValueError):
    """A config whose values break its rules; ``problems`` says what is wrong with each."""

    def __init__(self, config_type: type, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        # Not every setting has a flag, so the hint names none rather than guess one.
        super().__init__(f"Invalid {config_type.__name__}: {'; '.join(problems)}. Choose valid values "
                         "(a script's --help lists the settings it takes as flags).")


def check_settings(config: object, rules: Mapping[str, Rule], also: Sequence[str | None] = ()) -> None:
    """Refuse a config (a dataclass; call from its ``__post_init__``) that breaks ``rules``, listing every bad
    setting and the ``also`` problems of settings together (None: no problem). Checked when the config is
    made, so a bad value stops a run before anything is written to its directory, not midway through it."""
    bad = [name for name, rule in rules.items() if not rule.holds(getattr(config, name))]
    problems = [f"{name} = {getattr(config, name)!r} (must be {rules[name].says})" for name in bad]
    problems += [p for p in also if p]
    if problems:
        raise InvalidSettings(type(config), problems)


def epochs_problem(total_steps: int, steps_per_epoch: int) -> str | None:
    """Why ``total_steps`` cannot be trained in whole epochs of ``steps_per_epoch`` (None: it can)."""
    if _is_int(total_steps) and _is_int(steps_per_epoch) and steps_per_epoch >= 1 and total_steps % steps_per_epoch:
        return (f"meta_steps ({total_steps}) must be a multiple of steps_per_epoch ({steps_per_epoch}), the "
                f"meta-steps between checkpoints: e.g. {(total_steps // steps_per_epoch + 1) * steps_per_epoch}")
    return None


def execution_problem(steps_per_epoch: int, steps_per_execution: int) -> str | None:
    """Why epochs of ``steps_per_epoch`` cannot end where asked: Keras runs whole chunks of
    ``steps_per_execution`` steps, so an epoch would overshoot, and with it the checkpoints and the step count."""
    if (_is_int(steps_per_epoch) and _is_int(steps_per_execution) and steps_per_execution >= 1
            and steps_per_epoch % steps_per_execution):
        return (f"steps_per_epoch ({steps_per_epoch}) must be a multiple of steps_per_execution "
                f"({steps_per_execution}): Keras runs whole chunks of that many meta-steps, so each epoch would "
                "overshoot; compile with a steps_per_execution that divides steps_per_epoch")
    return None


def flag_type(rule: Rule, parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type=`` that refuses a value breaking ``rule`` ("argument --tasks: must be ..., got -3")."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule.says}, got {text!r}") from None
        if not rule.holds(value):
            raise argparse.ArgumentTypeError(f"must be {rule.says}, got {text}")
        return value

    convert.__name__ = parse.__name__
    return convert
