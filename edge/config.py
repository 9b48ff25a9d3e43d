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
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes,
                   help="request bodies being read at once, in bytes (chunked ones count --max-body-bytes); "
                        "beyond, 503 overloaded (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="bigger images are refused before decoding")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help="seconds for the whole request body to arrive, else 408 (default %(default)s)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads)
    p.add_argument("--auth-token", default=os.environ.get(ENV_VAR) or None,
                   help=f"require this bearer token (default ${ENV_VAR}; prefer the variable, ps shows flags)")
    p.add_argument("--version-labels", type=flag_type(labels_flag), default={},
                   help="TF Serving version labels, e.g. stable=1,canary=2 (/v1/models/M/labels/stable)")
    p.add_argument("--default-model", default=d.default_model,
                   help="the model for requests that name none (?model=NAME does); when it is not served and "
                        "only one model is, that one (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level)
    p.add_argument("--log-format", choices=["text", "json"], default=d.log_format,
                   help="json: one JSON object per line")


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
