"""`image-cluster`: every role and tool as a subcommand of one console command.

    image-cluster worker --port 8601            python -m worker
    image-cluster proxy                         python -m proxy
    image-cluster autoscaler --min 1 --max 4    python -m autoscaler
    image-cluster classify photo.jpg            python -m client classify
    image-cluster lookup | bench PHOTO          python -m client lookup | bench
    image-cluster models build|import|retrain   python -m image_cluster.models

Each subcommand takes the same flags as its `python -m` form, and reads them from the
environment too (image_cluster/envflags.py). A role is imported only when it runs, so a
client-only install runs classify, and a role whose install is missing says which extra
to install instead of failing with a traceback.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import dataclass

from image_cluster.envflags import EPILOG

NAME = "image-cluster"
OURS = {"autoscaler", "client", "discovery", "edge", "image_cluster", "proxy", "worker"}


@dataclass(frozen=True)
class Command:
    module: str  # its main(argv, prog)
    summary: str
    extra: str  # the pip extra that installs what it needs ("" for the base install)
    client: bool = False  # a subcommand of python -m client: its own name stays in argv


COMMANDS = {
    "worker": Command("worker.__main__", "serve models to proxies (ZeroMQ) and clients (HTTP, gRPC)", "server"),
    "proxy": Command("proxy.__main__", "the cluster's front on :12480: forward, or look a worker up", "server"),
    "autoscaler": Command("autoscaler.__main__", "start and drain workers as the load moves", "server"),
    "classify": Command("client.__main__", "classify photos (files or folders)", "", client=True),
    "lookup": Command("client.__main__", "print a live worker's host:port", "", client=True),
    "bench": Command("client.__main__", "load-test the cluster with one photo", "", client=True),
    "models": Command("image_cluster.models.__main__", "build the default model, import or retrain one", "tensorflow"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(NAME)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {NAME} COMMAND [options]   ({NAME} COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", textwrap.fill(EPILOG, 90), "", f"  {NAME} --version   the installed version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{NAME} {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None and name.startswith("-"):
        print(f"{NAME}: options go after the command's name: {NAME} COMMAND {name} ... (--help lists the "
              f"commands)", file=sys.stderr)
        return 2
    if command is None:
        print(f"{NAME}: no command {name!r}; the commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        run = importlib.import_module(command.module).main
        return run([name, *rest], prog=NAME) if command.client else run(rest, prog=f"{NAME} {name}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in OURS:
            raise
        extra = f"'{NAME}[{command.extra}]'" if command.extra else NAME
        print(f"{NAME} {name}: needs {exc.name}, which this install lacks: pip install {extra}", file=sys.stderr)
        return 2
