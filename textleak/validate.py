"""Checks of what users pass to the Python API and the CLI, each failing with one line.

Public API functions call these at their entry, so a wrong type or value (`labels=[True]`,
`mask_prob="0.5"`, `lr=nan`, `gradients=None`) is an `InputError` naming the argument, never a
TypeError, ValueError or KeyError from deep inside. `arg(...)` makes the same checks argparse
types, so the CLI's messages are the API's.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Iterable, Sequence

from .errors import InputError


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool, float or string) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__index__") and not isinstance(value, bool) and not hasattr(value, "shape"):
            value = value.__index__()  # numpy integers
        else:
            raise InputError(f"{name} must be an integer, got {_kind(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be at most {maximum}, got {value}")
    return value


def optional_integer(value: Any, name: str, **bounds: int) -> int | None:
    return None if value is None else integer(value, name, **bounds)


def number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
           positive: bool = False) -> float:
    """A finite real number (int or float, not a bool or string) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if hasattr(value, "item") and getattr(value, "size", getattr(value, "numel", lambda: 1)) in (1, None):
            try:
                return number(value.item(), name, minimum=minimum, maximum=maximum, positive=positive)
            except (TypeError, ValueError, RuntimeError):
                pass
        raise InputError(f"{name} must be a number, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise InputError(f"{name} must be positive, got {value:g}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be at most {maximum:g}, got {value:g}")
    return value


def optional_number(value: Any, name: str, **bounds: Any) -> float | None:
    return None if value is None else number(value, name, **bounds)


def probability(value: Any, name: str) -> float:
    value = number(value, name)
    if not 0 < value <= 1:
        raise InputError(f"{name} must be in (0, 1], got {value:g}")
    return value


def sequence(value: Any, name: str) -> list:
    """A list or tuple (not a string, dict or set) as a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        out = value.tolist()
        return out if isinstance(out, list) else [out]
    raise InputError(f"{name} must be a list, got {_kind(value)}")


def labels(value: Any, name: str = "labels", *, classes: int | None = None) -> list[int] | None:
    """None, or class indices: non-negative ints (no bools), below `classes` when given."""
    if value is None:
        return None
    out = [integer(y, f"{name}[{i}]", minimum=0) for i, y in enumerate(sequence(value, name))]
    if classes is not None:
        bad = [y for y in out if y >= classes]
        if bad:
            raise InputError(f"label {bad[0]} is not a class of this model (0..{classes - 1})")
    return out


def texts(value: Any, name: str = "batch") -> list[str]:
    """A sentence or a list of sentences as a list of strings."""
    if isinstance(value, str):
        return [value]
    items = sequence(value, name) if value is not None else []
    if not items:
        raise InputError("no text given")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        raise InputError(f"{name}[{bad[0]}] must be a string, got {_kind(items[bad[0]])}")
    return items


def names(value: Any, name: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """Strings, each one of `allowed`."""
    if isinstance(value, str):
        value = [value]
    items = sequence(value, name) if value is not None else []
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise InputError(f"{name}: {item!r:.60} is not one of {', '.join(allowed)}")
    return tuple(items)


def choice(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r:.60}")
    return value


def mapping(value: Any, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{name} must be a dict of settings by name, got {_kind(value)}")
    return dict(value)


def arg(check: Callable[..., Any], **bounds: Any) -> Callable[[str], Any]:
    """An argparse type running `check` on the parsed number, so CLI and API say the same."""
    parse = int if check in (integer, optional_integer) else float

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if parse is int else 'a number'}") \
                from None
        try:
            return check(value, "the value", **bounds)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("the value must", "must")) from None

    convert.__name__ = "integer" if parse is int else "number"
    return convert


# -- composite checks at the API's entry points ------------------------------------------------------
def attack_instance(name: Any, options: Any, seed: Any, *, modality: str | None = None) -> Any:
    """The configured attack `name`, every option checked (names, types, values) before any work."""
    from dataclasses import fields, replace

    from .attacks import ATTACKS
    from .attacks.base import MatchOptions
    from .core.matching import MatchConfig

    if not isinstance(name, str):
        raise InputError(f"attack must be a name, got {_kind(name)}")
    cls = ATTACKS.get(name)
    if modality is not None and modality not in cls.modalities:
        raise InputError(f"attack {name!r} does not handle {modality}; it handles {', '.join(cls.modalities)}")
    options = mapping(options, "options")
    seed = integer(seed, "seed")
    try:
        attacker = cls(seed=seed, **options)
    except TypeError as exc:
        raise InputError(f"bad option for attack {name!r}: {exc}") from None
    _check_fields(attacker, "")
    for stage in _stages(attacker):
        _check_fields(stage, f"{getattr(stage, 'name', type(stage).__name__)}.")
    if isinstance(attacker, MatchOptions):
        allowed = {f.name for f in fields(MatchConfig)}
        replace(MatchConfig(), **{f.name: getattr(attacker, f.name) for f in fields(attacker)
                                  if f.name in allowed and getattr(attacker, f.name) is not None})
    return attacker


def _stages(attacker: Any) -> list[Any]:
    """A composite's stages (`auto.stages_for`, each modality's), each checked as an attack of its own."""
    stages_for = getattr(attacker, "stages_for", None)
    return [stage for m in getattr(attacker, "modalities", ()) for stage in stages_for(m)] if stages_for else []


def _check_fields(attacker: Any, stage: str) -> None:
    """Each option value against its field's type (numbers, true/false, strings; `auto` where the attack gates it),
    then the attack's own check of its values (`check_options`), before any work; `stage`: "NAME." in a composite."""
    from dataclasses import fields

    auto = getattr(attacker, "auto_options", {})  # option -> its value where on, for `auto`
    for f in fields(attacker) if hasattr(attacker, "__dataclass_fields__") else ():
        value, default = getattr(attacker, f.name), auto.get(f.name, f.default)
        if value is None or value is default or (f.name in auto and value == "auto"):
            continue
        takes_bool = isinstance(default, bool) or "bool" in str(f.type)
        if str(f.type) == "int" and isinstance(default, int):  # a count: `rounds=x` or `rounds=2.5` refused
            integer(value, f"option {stage}{f.name}")
        elif isinstance(default, float) and not isinstance(default, bool):
            number(value, f"option {stage}{f.name}")
        elif isinstance(default, bool) and not isinstance(value, bool) and (f.name in auto or "str" not in str(f.type)):
            more = " or auto" if f.name in auto else ""
            raise InputError(f"option {stage}{f.name} must be true or false{more}, got {_kind(value)}")
        elif isinstance(default, str) and not isinstance(value, str) and not (takes_bool and isinstance(value, bool)):
            raise InputError(f"option {stage}{f.name} must be a string, got {_kind(value)}")
    check = getattr(attacker, "check_options", None)  # an attack's own check of its values (e.g. a mode's names)
    if callable(check):
        check()


def gradient_input(gradients: Any) -> tuple[Any, str | None]:
    """(validated GradientFile, its path or None) from a GradientFile or a path to one."""
    from .gradients import GradientFile, check_gradient_file, load_gradients

    if isinstance(gradients, GradientFile):
        return check_gradient_file(gradients), None
    if gradients is None or not isinstance(gradients, (str, bytes)) and not hasattr(gradients, "__fspath__"):
        raise InputError(f"gradients must be a GradientFile or a path to one, got {_kind(gradients)}")
    return load_gradients(gradients if not isinstance(gradients, bytes) else gradients.decode()), str(gradients)


def resume_point(checkpoint: Any, resume: Any, source: Any = None) -> None:
    """The checkpoint path follows the output rule (never the gradient file, never a file that is
    not a textleak checkpoint); `resume=True` needs one to resume from, else it says so."""
    from pathlib import Path

    from .io import check_outputs

    if not isinstance(resume, bool):
        raise InputError(f"resume must be True or False, got {_kind(resume)}")
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise InputError(f"checkpoint must be a file path, got {_kind(checkpoint)}")
    if checkpoint is not None:
        check_outputs([(checkpoint, "checkpoint", "checkpoint")], [(source, "gradient file")] if source else [],
                      folders_exist=False)
    if resume and (checkpoint is None or not Path(checkpoint).is_file()):
        where = f"at {checkpoint}" if checkpoint is not None else "(none was given)"
        raise InputError(f"nothing to resume: no checkpoint {where}; the run finished, or was never "
                         "interrupted with these settings. Run without --resume to start over")
