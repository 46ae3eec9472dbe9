"""Build argparse options from the frozen config dataclasses, and configs back from the args.

Each leaf field becomes ``--field-name`` (help, default and choices from the field), so the
CLI and the config cannot drift. Nested dataclasses are flattened; leaf names must be unique.
Fields marked ``option(..., advanced=True)`` are left out of ``--help`` and listed by ``--help-all``.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Collection


class OneLineParser(argparse.ArgumentParser):
    """argparse with a bad option reported in one line, naming --help (where the usage is)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpAll(argparse.Action):
    """``--help-all``: the help with the advanced options too, then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action, text in getattr(parser, "advanced_help", {}).items():
            action.help = text
        parser.print_help()
        parser.exit()


def _add_help_all(parser: argparse.ArgumentParser) -> dict:
    """The parser's {advanced action: its help}; adds ``--help-all`` on first use."""
    if not hasattr(parser, "advanced_help"):
        parser.advanced_help = {}
        parser.add_argument("--help-all", action=_HelpAll,
                            help="show this help with the advanced tuning options too, and exit")
    return parser.advanced_help


def _leaves(cls: type) -> list[tuple[tuple[str, ...], Any, Any]]:
    """[(path, field, resolved type)] for every leaf field of a nested config dataclass."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        sub = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(sub, type) and is_dataclass(sub):
            out += [((f.name, *path), leaf, tp) for path, leaf, tp in _leaves(sub)]
        else:
            out.append(((f.name,), f, hints[f.name]))
    return out


def _scalar_type(tp: Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _is_repeated(tp: Any) -> bool:
    """``tuple[X, ...]`` fields are repeatable options (``--name A --name B``)."""
    return typing.get_origin(tp) is tuple


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: Collection[str] = ()) -> None:
    """Add one option per leaf field of ``cls`` to ``parser`` (but the leaves named in ``exclude``).

    The help is plain text: the field's help, then its choices and default, so ``--help`` lists
    every allowed value. An unset default (None, "") is not printed: the help text says what it means.
    Advanced fields are hidden from ``--help`` and shown by ``--help-all`` (added when there are any).
    """
    names = set()
    for path, f, tp in _leaves(cls):
        if f.name in names:
            raise ValueError(f"duplicate config leaf name {f.name!r}")
        names.add(f.name)
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(tp)
        kwargs = {"dest": "__".join(path), "default": f.default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_repeated(tp):
            # argparse appends to the default in place: start from None, config_from_args makes the tuple.
            kwargs.update(action="append", default=None, type=typing.get_args(tp)[0], metavar=f.name.upper())
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.name.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        text = _help(f, repeated=_is_repeated(tp))
        if f.metadata.get("advanced"):
            advanced = _add_help_all(parser)
            advanced[parser.add_argument(flag, **kwargs, help=argparse.SUPPRESS)] = text
        else:
            parser.add_argument(flag, **kwargs, help=text)


def _help(f: Any, repeated: bool) -> str:
    """``help [one of: a, b] [(default: x)]``, with ``%`` escaped for argparse."""
    text = f.metadata.get("help", "").replace("%", "%%")
    notes = []
    if f.metadata.get("choices"):
        notes.append("one of: " + ", ".join(map(str, f.metadata["choices"])))
    if repeated:
        notes.append("repeatable")
    elif f.default not in (None, ""):
        notes.append("default: %(default)s")
    return f"{text} ({'; '.join(notes)})" if notes else text


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Rebuild the nested frozen config from parsed args."""
    from rewardserve.engine.config import from_dict

    values: dict[str, Any] = {}
    for path, _f, tp in _leaves(cls):
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if not hasattr(args, "__".join(path)):  # an excluded option: the field keeps its default
            continue
        value = getattr(args, "__".join(path))
        node[path[-1]] = tuple(value or ()) if _is_repeated(tp) else value
    return from_dict(cls, values)
