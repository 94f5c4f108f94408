"""How a plain function becomes a `parcae` command: its parser comes from its signature and docstring.

- Parameters before `/` are positional arguments (one with a default is optional); parameters after `*`
  are options spelled `--name` (underscores, as in YAML and `parcae train`). The docstring's first line is
  the command's summary, the rest its description, and its Args section documents every option.
- Values are checked by jsonargparse against the type hints: lists are written `[1,2]`; a `bool` option
  given bare (`--compile`) means true; an enum option takes the enum's values (`--criterion kl`).
- Only the options given reach the function, so its defaults are the Python defaults in its signature.
- A command whose options are an existing library parser's (`parcae train`, the run config) is marked
  with `options_of(parser_factory)` and receives the given values as one nested mapping.

`run(commands, argv)` parses and calls; errors become one line on stderr: usage errors exit 2, a
ParcaeError or ValueError exits 1, `--debug` re-raises with the traceback, Ctrl-C exits 130.
"""

from __future__ import annotations

import copy
import enum
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from docstring_parser import parse as parse_docstring
from jsonargparse import ArgumentError, ArgumentParser

from parcae_lm.errors import ParcaeError

Command = Callable[..., Any]
PROG = "parcae"


class UsageError(ParcaeError):
    """A command line that asks for something impossible (e.g. two sources where one is expected): exit 2."""


@dataclass(frozen=True)
class Group:
    """Subcommands under one name (`parcae eval bpb`, `parcae eval core`, ...)."""

    help: str
    commands: Mapping[str, Command | Group]


def options_of(parser: Callable[[], ArgumentParser]) -> Callable[[Command], Command]:
    """Mark a command whose options are those of `parser()`; it is called with the given values as a
    nested mapping (`{"train": {"max_steps": 5}, "config": "tiny"}`)."""

    def mark(fn: Command) -> Command:
        fn.options_parser = parser  # type: ignore[attr-defined]
        return fn

    return mark


# ---------------------------------------------------------------------------------------------- parser


def build_parser(commands: Mapping[str, Command | Group]) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Parcae: stable looped language models", exit_on_error=False
    )
    _add_debug(parser)
    _add_commands(parser, commands)
    return parser


def _add_debug(parser: ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")


def _add_commands(parser: ArgumentParser, commands: Mapping[str, Command | Group]) -> None:
    subcommands = parser.add_subcommands(required=True, dest="command")
    for name, entry in commands.items():
        if isinstance(entry, Group):
            sub = ArgumentParser(description=entry.help, exit_on_error=False)
            subcommands.add_subcommand(name, sub, help=entry.help)  # jsonargparse: parents first
            _add_commands(sub, entry.commands)
        else:
            sub = command_parser(entry)
            subcommands.add_subcommand(name, sub, help=summary(entry))


def summary(fn: Command) -> str:
    return parse_docstring(inspect.getdoc(fn) or "").short_description or ""


def command_parser(fn: Command) -> ArgumentParser:
    """The parser of one command: from `fn.options_parser` or from the signature and docstring of `fn`."""
    doc = parse_docstring(inspect.getdoc(fn) or "")
    description = "\n\n".join(t for t in (doc.short_description, doc.long_description) if t)
    factory = getattr(fn, "options_parser", None)
    if factory is not None:
        parser = copy.deepcopy(factory())  # the library's parser stays as it is
        parser.description = description
        _add_debug(parser)
        return parser
    parser = ArgumentParser(description=description, exit_on_error=False)
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    for p in params.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.KEYWORD_ONLY):
            raise TypeError(f"{fn.__qualname__}: parameter {p.name!r} must come before '/' or after '*'")
    enums = {name: cls for name in params if (cls := _enum_of(hints[name])) is not None}
    parser.add_function_arguments(fn, None, as_group=False, as_positional=True, skip=set(enums))
    docs = {p.arg_name: p.description for p in doc.params}
    for name, cls in enums.items():  # spelled by value, as in the YAML files
        values: Any = Literal[tuple(m.value for m in cls)]  # type: ignore[misc]
        default = params[name].default
        parser.add_argument(
            f"--{name}",
            type=values | None if default is None else values,
            default=None if default is None else default.value,
            help=docs.get(name),
        )
    for action in parser._actions:
        param = params.get(action.dest)
        if param is None:
            continue
        if not action.option_strings and param.default is not param.empty:  # an optional positional
            action.nargs, action.default, action.required = "?", param.default, False
        if hints[param.name] is bool:
            action.nargs, action.const = "?", True  # `--compile` alone means `--compile true`
    _add_debug(parser)
    return parser


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------- running


def run(commands: Mapping[str, Command | Group], argv: list[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), call the command, and turn errors into exit codes."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(commands)
    if not argv:
        parser.print_help()
        return 2
    debug = "--debug" in argv
    try:
        try:
            ns = parser.parse_args(argv, defaults=False).as_dict()
        except ArgumentError as e:
            if debug:
                raise
            print(f"error: {usage_message(e, commands, argv)}", file=sys.stderr)
            return 2
        fn, given = _selected(commands, ns)
        return int(_call(fn, given) or 0)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (ParcaeError, ValueError) as e:
        if debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `parcae sweep FILE --emit slurm | head`
        sys.stderr.close()
        return 0


def _selected(commands: Mapping[str, Command | Group], ns: dict[str, Any]) -> tuple[Command, dict]:
    """The chosen function and the values given to it, from the parsed namespace."""
    entry: Command | Group = Group("", commands)
    while isinstance(entry, Group):
        name = ns["command"]
        entry, ns = entry.commands[name], ns.get(name, {})
    ns.pop("debug", None)
    return entry, ns


def _call(fn: Command, given: dict[str, Any]) -> Any:
    if getattr(fn, "options_parser", None) is not None:
        return fn(given)
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    for name, value in given.items():
        cls = _enum_of(hints[name])
        if cls is not None and value is not None:
            given[name] = cls(value)
    positional = [
        given.pop(p.name) for p in params.values() if p.kind == p.POSITIONAL_ONLY and p.name in given
    ]
    return fn(*positional, **given)


# ---------------------------------------------------------------------------------------------- messages

_KEY = re.compile(r'^Parser key "([^"]+)": (.*)$')
_VALUE = re.compile(r"(?:Given value|Got value): (.*?)$")
_SUBTYPES = re.compile(r"Subtypes: \[(.*)\] Errors:")
_EXPECTED = re.compile(r"Expected an? (.*?)\. Got value")
_NOT_OF_TYPE = re.compile(r"Not of type (\w+): (.*)$")
_REQUIRED = re.compile(r"the following arguments are required: (.*)$")
_NO_SUBCOMMAND = re.compile(r'expected "[^"]+" to be one of \{(.*)\}, but it was not provided')


def usage_message(err: ArgumentError, commands: Mapping[str, Command | Group], argv: list[str]) -> str:
    """One line naming the option, what it expects and the value given, and where the options are listed."""
    lines = [line.strip() for line in str(err).splitlines()]
    text = " ".join(line for line in lines if line)
    path = _command_path(commands, argv)
    fn = _function_at(commands, path)
    where = f"`{' '.join([PROG, *path, '--help'])}` lists the options"
    if m := _NO_SUBCOMMAND.search(text):
        return f"give a command: {m.group(1).replace(',', ', ')} ({where})"
    if m := _REQUIRED.search(text):
        missing = [name.rsplit(".", 1)[-1] for name in m.group(1).split(", ")]
        return f"missing {', '.join(_spell(fn, n) for n in missing)} ({where})"
    m = _KEY.match(text)
    if m is None:
        return f"{text} ({where})"
    key, rest = m.groups()
    if m2 := _SUBTYPES.search(rest):
        expected = " or ".join(_type_name(t) for t in _split_top(m2.group(1)))
    elif m2 := _EXPECTED.search(rest):
        expected = _type_name(m2.group(1))
    elif m2 := _NOT_OF_TYPE.search(rest):
        expected = f"{m2.group(1)} ({m2.group(2)})"
    else:
        expected = rest
    value = next((v.group(1) for line in lines if (v := _VALUE.search(line))), None)
    got = f", got {value!r}" if value is not None else ""
    hint = " (lists are written [a,b])" if "list[" in expected or "tuple[" in expected else ""
    return f"{_spell(fn, key)}: expected {expected}{got}{hint} ({where})"


def _spell(fn: Command | None, name: str) -> str:
    """`--name` for an option, NAME for a positional argument."""
    params = inspect.signature(fn).parameters if fn is not None and not hasattr(fn, "options_parser") else {}
    param = params.get(name)
    return name.upper() if param is not None and param.kind == param.POSITIONAL_ONLY else f"--{name}"


def _command_path(commands: Mapping[str, Command | Group], argv: list[str]) -> list[str]:
    path: list[str] = []
    level: Mapping[str, Command | Group] | None = commands
    for token in argv:
        if token.startswith("-"):
            continue
        if level is None or token not in level:
            break
        path.append(token)
        entry = level[token]
        level = entry.commands if isinstance(entry, Group) else None
    return path


def _function_at(commands: Mapping[str, Command | Group], path: list[str]) -> Command | None:
    entry: Command | Group = Group("", commands)
    for name in path:
        if not isinstance(entry, Group):
            return None
        entry = entry.commands[name]
    return None if isinstance(entry, Group) else entry


def _split_top(text: str) -> list[str]:
    """'list[int], <class 'NoneType'>' -> the two types (commas inside brackets stay)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


def _type_name(text: str) -> str:
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("NoneType", "null")
    if m := re.fullmatch(r"Literal\[(.*)\]", text):
        return "one of " + ", ".join(v.strip().strip("'\"") for v in m.group(1).split(","))
    return text
