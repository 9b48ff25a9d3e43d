"""Settings both HTTP fronts share, their flags, and the one way a config is filled.

Each process has one config dataclass (worker/config.py, proxy/config.py) whose fields
are named like its flags (`--read-timeout` fills `read_timeout`, and so does
IMAGE_CLUSTER_READ_TIMEOUT: image_cluster/envflags.py); the settings both
tiers share live once, in `EdgeConfig`, nested in both. `from_args` fills a config from
parsed flags by field name, recursing into nested dataclasses, so a flag and its field
cannot drift apart (tests/test_config.py checks every flag has its field and back).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field

from edge.auth import ENV_VAR
from edge.cores import usable_cores
from image_cluster.envflags import apply_environment


@dataclass(frozen=True)
class EdgeConfig:
    service_name: str = "classifier"  # the workers' Consul service
    max_body_bytes: int = 20 * 1024 * 1024
    # Request bodies being read at once, in bytes (each counted at its Content-Length, or at
    # max_body_bytes when chunked): the memory uploads may take; beyond it, a fast 503.
    max_upload_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 40_000_000  # ~ a 7700x5200 photo; bigger is refused before decoding
    read_timeout: float = 30.0  # seconds for the whole body to arrive (else 408)
    decode_threads: int = field(default_factory=usable_cores)
    auth_token: str | None = None  # shared secret required on every route but health (edge/auth.py)
    log_level: str = "INFO"
    log_format: str = "text"
    version_labels: dict[str, str] = field(default_factory=dict)  # TF Serving labels, e.g. {"stable": "1"}
    default_model: str = "efficientnet_lite0"  # what a request that names no model gets


def add_edge_flags(p: argparse.ArgumentParser) -> None:
    d = EdgeConfig()
    p.add_argument("--service-name", default=d.service_name, help="the workers' Consul service (default %(default)s)")
    p.add_argument("--max-body-bytes", type=byte_size, default=d.max_body_bytes,
                   help="a larger request body is refused, 413 (a size: bytes or 20MiB)")
    p.add_argument("--max-upload-bytes", type=byte_size, default=d.max_upload_bytes,
                   help="request bodies being read at once (chunked ones count --max-body-bytes); beyond, "
                        "503 overloaded")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="bigger images are refused before decoding")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help="seconds for the whole request body to arrive, else 408 (default %(default)s)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="threads decoding and preprocessing images (default: the cores this process may use)")
    p.add_argument("--auth-token", default=os.environ.get(ENV_VAR) or None,
                   help=f"require this bearer token (default ${ENV_VAR}; prefer the variable, ps shows flags)")
    p.add_argument("--version-labels", type=flag_type(labels_flag), default={},
                   help="TF Serving version labels, e.g. stable=1,canary=2 (/v1/models/M/labels/stable)")
    p.add_argument("--default-model", default=d.default_model,
                   help="the model for requests that name none (?model=NAME does); when it is not served and "
                        "only one model is, that one (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--log-format", choices=["text", "json"], default=d.log_format,
                   help="json: one JSON object per line")


UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30}


def byte_size(text: str) -> int:
    """A size: bytes, or with a unit (20MiB, 512k, 1G; K, M and G are 1024-based)."""
    number = text.strip().rstrip("bBiI").rstrip("kKmMgG") or "x"
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size such as 20MiB, 512KiB or 1048576, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative, got {text!r}")
    return int(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help, sizes in MiB."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        on_off = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        empty = not default and not isinstance(default, (int, float))  # None, "", {}, (): nothing to show
        said = "%(default)" in text or "(default" in text  # the help says it in its own words
        if said or empty or on_off or default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.dest.endswith("_bytes") and isinstance(default, int):
            return f"{text} (default {default / 2**20:g} MiB)".lstrip()
        return f"{text} (default %(default)s)".lstrip()


class VersionAction(argparse._VersionAction):
    """--version, the installed version looked up only when asked: the lookup scans the
    installed packages' metadata (~90 ms here), which no other start needs."""

    def __call__(self, parser, namespace, values, option_string=None):
        from image_cluster.cli import version  # standard library only

        print(f"{parser.prog} {version()}")  # on stdout, as argparse's own --version
        parser.exit()


def finish_parser(p: argparse.ArgumentParser, essential: list[str]) -> argparse.ArgumentParser:
    """A role's --help in two sections, the options most deployments set (`essential`, by
    flag) and the tuning ones, each with its default; and --version."""
    p.formatter_class = HelpFormatter
    p.usage = "%(prog)s [options]"  # the options follow, in their two sections
    p.add_argument("--version", action=VersionAction)
    main = p.add_argument_group("essential options")
    tuning = p.add_argument_group("tuning (the defaults suit most deployments)")
    for action in list(p._optionals._group_actions):  # argparse has no public way to regroup
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        p._optionals._group_actions.remove(action)
        group = main if action.option_strings[0] in essential else tuning
        group._group_actions.append(action)
    unknown = set(essential) - {a.option_strings[0] for a in main._group_actions}
    assert not unknown, f"no such options: {unknown}"
    return p


def numbered(text: str, form: str) -> dict[str, str]:
    """'a=1,b=2' -> {'a': '1', 'b': '2'}: named whole numbers (version labels, split weights);
    ValueError names a bad entry and the expected `form`."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if not (key and value.isdigit()):
            raise ValueError(f"bad entry {part!r}: expected {form}")
        pairs[key] = value
    return pairs


def flag_type(parse: typing.Callable[[str], object]) -> typing.Callable[[str], object]:
    """An argparse `type` that shows parse()'s ValueError message as the flag's error."""
    def parse_flag(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_flag


def labels_flag(text: str) -> dict[str, str]:
    """'stable=1,canary=2' -> {'stable': '1', 'canary': '2'}."""
    return numbered(text, "LABEL=VERSION")


T = typing.TypeVar("T")


def parse_config(cls: type[T], parser: argparse.ArgumentParser, argv: list[str] | None,
                 **folds: typing.Callable[[argparse.Namespace], object]) -> T:
    """Parse `argv` into a `cls`, each flag's default read from the environment first
    (image_cluster/envflags.py); `folds` turn several flags into one field's value first
    (e.g. consul=ConsulAddress.from_flags for --consul and --consul-token)."""
    apply_environment(parser)
    args = parser.parse_args(argv)
    for name, fold in folds.items():
        setattr(args, name, fold(args))
    return from_args(cls, args)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """A `cls` whose fields are the flags of the same name; a nested dataclass field with
    no flag of its name is filled the same way from the same flags. Fields without a flag
    keep their default."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = from_args(hints[f.name], args)
    return cls(**values)
