"""The command-line options, generated from the config dataclasses of ``mobiforge.config``.

``add_options(parser, Config)`` adds one option per field that carries ``option(...)`` metadata, and the options of
nested config fields (``TrainConfig.data``, ``.optim``, ``.distill``) in their own groups; ``read_options(args,
Config)`` builds the dataclass back from the flags given, and ``to_argv(config)`` writes the flags that build it
(a ship run's rerun command; ``tests/test_cli.py`` round-trips the two). Every option defaults to
``argparse.SUPPRESS``: a flag left out is absent from the namespace, so the dataclass field's own default applies,
and the help text shows that default. The flag, help text, choices and default of an option therefore live on its
field and nowhere else. Torch-free and argparse-only: the base layer, so ship can write its rerun command.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from mobiforge import config as config_module
from mobiforge.config import flag_of as flag_of  # public here too: the CLI tests read it

ALWAYS_NESTED = ("data", "optim")  # a command whose config has these offers their options


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(config_module))


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return hint, False


def nested_config(hint: Any) -> type | None:
    """The dataclass of a nested config field (``DataConfig``, ``DistillConfig | None``), else None."""
    inner, _ = _unwrap(hint)
    return inner if dataclasses.is_dataclass(inner) and isinstance(inner, type) else None


def shown_default(field: dataclasses.Field[Any], default: Any) -> str | None:
    meta = field.metadata["cli"]
    if default is None or default is dataclasses.MISSING or default == () or default is False:
        return None
    return meta["show"](default) if meta["show"] else str(default)


def _argument(field: dataclasses.Field[Any], hint: Any, default: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The ``add_argument`` call of one field."""
    meta = field.metadata["cli"]
    inner, _ = _unwrap(hint)
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    shown = shown_default(field, default)
    help_text = meta["help"] + (f" (default: {shown})" if shown is not None and "default" not in meta["help"] else "")
    kwargs: dict[str, Any] = {"help": help_text or None, "metavar": meta["metavar"]}
    if choices is not None:
        kwargs["choices"] = list(choices)
    if meta["positional"]:
        kwargs["nargs"] = meta["nargs"]
        if meta["nargs"] == "?":
            kwargs["default"] = default
        return (field.name,), {key: value for key, value in kwargs.items() if value is not None}
    kwargs.update(dest=field.name, default=argparse.SUPPRESS)
    if meta["parse"] is not None:
        pass  # the text is parsed by read_options, where a bad value is a one-line MobiforgeError
    elif inner is bool:
        kwargs.pop("metavar")
        kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    elif meta["nargs"] is not None:
        kwargs.update(nargs=meta["nargs"], const=meta["const"])
        kwargs["type"] = _scalar(inner)
    else:
        kwargs["type"] = _scalar(inner)
    return flag_of(field), {key: value for key, value in kwargs.items() if value is not None}


def _scalar(hint: Any) -> Any:
    """The type that parses one item of a field: ``tuple[float, ...]`` -> float; ``bool | str`` -> str."""
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return typing.get_args(hint)[0]
    if origin in (typing.Union, types.UnionType):
        return str
    return hint


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    base: Any = None,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    one_of: tuple[str, ...] = (),
    nested: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Add the options of ``cls``'s fields, and of its nested ``data`` and ``optim`` configs and those named in
    ``nested``, in groups titled by the dataclasses' own docstrings. ``base`` is the instance whose values the help
    shows as defaults (a command may own other nested defaults than the class: prune's optimiser); ``required``
    fields must be given; of the ``one_of`` group name, exactly one option must be given; ``aliases`` adds option
    strings a command offers for a field (``distill --student`` for ``--model``)."""
    hints = _hints(cls)
    title = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    group = parser.add_argument_group(title)
    exclusive: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = _default(field, base)
        inner = nested_config(hints[field.name])
        if inner is not None:
            if field.name in (*nested, *ALWAYS_NESTED):
                base_value = default if dataclasses.is_dataclass(default) else None
                add_options(parser, inner, base=base_value, required=required)
            continue
        if "cli" not in field.metadata:
            continue
        names, kwargs = _argument(field, hints[field.name], default)
        names = (*(aliases or {}).get(field.name, ()), *names)
        if field.name in required:
            kwargs["required"] = True
        target = group
        name = field.metadata["cli"]["group"]
        if name:
            if name not in exclusive:
                exclusive[name] = group.add_mutually_exclusive_group(required=name in one_of)
            target = exclusive[name]
        target.add_argument(*names, **kwargs)


def _default(field: dataclasses.Field[Any], base: Any) -> Any:
    if base is not None:
        return getattr(base, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def read_options(args: argparse.Namespace, cls: type, *, base: Any = None, nested: tuple[str, ...] = ()) -> Any:
    """``cls`` filled from the flags given (``base``: the values of the flags left out, else the field defaults).
    Nested configs named in ``nested`` are read too; an optional one (``distill``) stays None unless its required
    field was given."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        inner = nested_config(hints[field.name])
        if inner is not None:
            if field.name in (*nested, *ALWAYS_NESTED):
                values[field.name] = _read_nested(args, field, inner, _default(field, base))
            continue
        if "cli" in field.metadata and field.name in vars(args):
            value = vars(args)[field.name]
            parse = field.metadata["cli"]["parse"]
            values[field.name] = parse(value) if parse and isinstance(value, str) else _coerce(value, hints[field.name])
    if base is not None:
        return dataclasses.replace(base, **values)
    return cls(**values)


def _read_nested(args: argparse.Namespace, field: dataclasses.Field[Any], inner: type, default: Any) -> Any:
    required = [f.name for f in dataclasses.fields(inner) if f.default is dataclasses.MISSING and
                f.default_factory is dataclasses.MISSING]  # fmt: skip
    if required and not all(name in vars(args) for name in required):
        return default  # e.g. no --teacher: no distillation
    return read_options(args, inner, base=default if dataclasses.is_dataclass(default) else None)


def _coerce(value: Any, hint: Any) -> Any:
    """argparse gives lists for ``nargs``; tuple fields get tuples."""
    inner, _ = _unwrap(hint)
    if isinstance(value, list) and typing.get_origin(inner) is tuple:
        return tuple(value)
    return value


def config_fields(
    cls: type, nested: tuple[str, ...] = (), base: Any = None
) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Every field behind an option of ``cls`` (nested ``data``/``optim`` and those named in ``nested`` included),
    by dest, with the default its command shows: what the flag test checks every flag against."""
    hints = _hints(cls)
    found: dict[str, tuple[dataclasses.Field[Any], Any]] = {}
    for field in dataclasses.fields(cls):
        inner = nested_config(hints[field.name])
        default = _default(field, base)
        if inner is not None and field.name in (*nested, *ALWAYS_NESTED):
            found.update(config_fields(inner, base=default if dataclasses.is_dataclass(default) else None))
        elif "cli" in field.metadata:
            found[field.name] = (field, default)
    return found


def to_argv(config: Any, *, always: Sequence[str] = (), rewrite: Callable[[str, str], str] | None = None) -> list[str]:
    """The flags that build ``config`` (a flat config: no nested ones) from its class's defaults, the inverse of
    ``read_options``: each field that differs from its default, and those named in ``always`` even at their defaults.
    ``rewrite(field_name, text)`` may change a value's text (ship writes local paths without their absolute part)."""
    argv: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "cli" not in field.metadata or value is None:
            continue
        if field.name not in always and value == _default(field, None):
            continue
        flag, show = flag_of(field)[0], field.metadata["cli"]["show"]
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
            continue
        text = show(value) if show else ",".join(value) if isinstance(value, list) else str(value)
        argv += [flag, rewrite(field.name, text) if rewrite else text]
    return argv
