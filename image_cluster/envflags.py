"""Every flag of every command also from the environment, with one prefix.

`--max-batch-size 8` is also `IMAGE_CLUSTER_MAX_BATCH_SIZE=8`: the prefix, then the flag's
name in capitals with `_` for `-` (mosec and uvicorn read their settings the same way,
which is what containers and Kubernetes manifests want). A flag on the command line wins
over the variable; the variable wins over the built-in default. A value is checked as the
flag's would be, and a bad one is an error that names the variable. On/off flags take
1/true/yes/on or 0/false/no/off. Options whose help is hidden (internals) are not read.

Standard-library only: the client, which installs without the servers, uses it too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

PREFIX = "IMAGE_CLUSTER_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
EPILOG = (f"Every option can also be set in the environment: {PREFIX} and the option's name in capitals "
          f"with _ for -, e.g. {PREFIX}LOG_LEVEL=DEBUG for --log-level. The command line wins.")


def env_name(action: argparse.Action) -> str:
    return PREFIX + action.dest.upper()


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Make each set variable the default of its option, in `parser` and in its
    subcommands' parsers; errors (through parser.error) on a value the option refuses."""
    environ = os.environ if environ is None else environ
    for action in parser._actions:  # argparse has no public list of a parser's options
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                apply_environment(sub, environ)
        elif readable(action) and env_name(action) in environ:
            action.default = from_text(parser, action, env_name(action), environ[env_name(action)])
    if parser.epilog is None:
        parser.epilog = EPILOG


def readable(action: argparse.Action) -> bool:
    """An option the environment may set: not help, not hidden, and not a subcommand's copy
    of its command's option (default SUPPRESS), which would override the command's value."""
    return bool(action.option_strings) and argparse.SUPPRESS not in (action.help, action.default) and \
        not isinstance(action, (argparse._HelpAction, argparse._VersionAction))


def from_text(parser: argparse.ArgumentParser, action: argparse.Action, name: str, text: str) -> object:
    """The option's value for `text`, converted and checked as on the command line."""
    if action.nargs == 0:  # an on/off flag
        on = text.strip().lower()
        if on not in TRUE | FALSE:
            parser.error(f"{name}={text!r}: expected one of 1, true, yes, on, 0, false, no, off")
        if isinstance(action, argparse.BooleanOptionalAction):
            return on in TRUE
        return action.const if on in TRUE else (not action.const if isinstance(action.const, bool) else action.default)
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [one_value(parser, action, name, part) for part in text.split()]
    return one_value(parser, action, name, text)


def one_value(parser: argparse.ArgumentParser, action: argparse.Action, name: str, text: str) -> object:
    try:
        value = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        parser.error(f"{name}={text!r}: {exc}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{name}={text!r}: choose from {', '.join(map(str, action.choices))}")
    return value
