"""Configs and flags: one dataclass per process, each flag fills the field of its name."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
import typing

import pytest

from autoscaler.__main__ import build_parser as autoscaler_parser
from autoscaler.config import AutoscalerConfig
from edge.config import byte_size
from proxy.__main__ import build_parser as proxy_parser
from proxy.__main__ import parse_args as proxy_args
from proxy.config import ProxyConfig
from tests.consul_dev import PROJECT_ROOT
from worker.__main__ import build_parser as worker_parser
from worker.__main__ import parse_args as worker_args
from worker.config import WorkerConfig

pytestmark = pytest.mark.unit

FOLDED = {"consul_token"}  # --consul-token becomes part of the `consul` field (a ConsulAddress)


def leaves(cls: type, flags: set[str]) -> set[str]:
    """Field names as from_args fills them: a nested config without a flag of its name
    contributes its own fields."""
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        nested = dataclasses.is_dataclass(hints[f.name]) and f.name not in flags
        names |= leaves(hints[f.name], flags) if nested else {f.name}
    return names


@pytest.mark.parametrize("parser, config", [(worker_parser, WorkerConfig), (proxy_parser, ProxyConfig),
                                            (autoscaler_parser, AutoscalerConfig)])
def test_every_flag_has_its_field_and_every_field_its_flag(parser, config):
    flags = {a.dest for a in parser()._actions if a.dest not in ("help", "version")}
    assert flags - FOLDED == leaves(config, flags)


@pytest.mark.parametrize("parser", [worker_parser, proxy_parser, autoscaler_parser])
def test_help_has_every_option_explained_with_its_default_in_two_sections(parser):
    p = parser()
    text = p.format_help()
    assert "essential options:" in text and text.index("essential options:") < text.index("tuning (")
    for action in p._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{action.option_strings[0]} has no help"
    for flag in ("--max-body-bytes", "--max-zmq-message-bytes"):
        if flag in p._option_string_actions:  # sizes read and shown in MiB
            assert p.parse_args([flag, "2MiB"]).__dict__[flag[2:].replace("-", "_")] == 2 * 2**20
    assert "(default 20 MiB)" in text or "--max-body-bytes" not in text
    assert "(default " in text and text.startswith("usage: ")


def test_the_roles_say_their_version(capsys):
    with pytest.raises(SystemExit) as done:
        worker_parser().parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("python -m worker ")


def test_flags_reach_nested_and_shared_settings():
    w = worker_args(["--read-timeout", "3", "--max-batch-delay-ms", "0.5", "--consul", "h:1", "--consul-token", "t",
                     "--drain-timeout", "7", "--service-name", "s"])
    assert (w.edge.read_timeout, w.batch.max_batch_delay_ms, w.drain_timeout, w.edge.service_name) == (3, 0.5, 7, "s")
    assert (w.consul.host, w.consul.port, w.consul.token) == ("h", 1, "t")
    p = proxy_args(["--split", "1=90,2=10", "--watch-wait", "4", "--max-pixels", "9"])
    assert p.split == {"1": 90, "2": 10} and p.watch_wait == 4 and p.edge.max_pixels == 9
    with pytest.raises(SystemExit):
        proxy_args(["--split", "1=ninety"])


@pytest.mark.parametrize("package", ["proxy", "autoscaler"])
def test_other_tiers_import_only_the_worker_protocol(package):
    imported = set()
    for path in (PROJECT_ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    assert {m for m in imported if m == "worker" or m.startswith("worker.")} == {"worker.protocol"}


def test_servers_and_client_stay_in_their_lanes():
    """edge imports neither tier; the client and discovery import no server package; no
    server imports the model tooling (image_cluster.models, which needs TensorFlow)."""
    tools = ("image_cluster.models",)  # build-time tooling: serving never imports it
    rules = {"edge": ("worker", "proxy", "client", "autoscaler", *tools),
             "client": ("worker", "proxy", "edge", "discovery", "autoscaler", *tools),
             "discovery": ("worker", "proxy", "client", "edge", "autoscaler", *tools),
             "worker": ("proxy", "client", "autoscaler", *tools), "proxy": ("client", "autoscaler", *tools),
             "autoscaler": ("proxy", "client", *tools), "image_cluster/models": ("proxy", "client", "autoscaler")}
    for package, forbidden in rules.items():
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    assert not any(name == f or name.startswith(f + ".") for f in forbidden), \
                        f"{path}: imports {name}"


def test_no_product_function_is_over_60_lines():
    long = []
    for package in ("edge", "worker", "proxy", "discovery", "client", "autoscaler", "image_cluster"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 60:
                        long.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long


def test_the_worker_protocol_loads_no_decoder_or_runtime():
    """The proxy and the autoscaler read Consul Meta through worker.protocol: in a fresh
    interpreter it (and the autoscaler's load reader) loads no OpenCV, compiler, model
    runtime or TensorFlow."""
    code = ("import sys, worker.protocol, autoscaler.load\n"
            "heavy = ('cv2', 'numba', 'llvmlite', 'onnxruntime', 'ai_edge_litert', 'tensorflow', 'edge._resample')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serving_never_imports_tensorflow_but_for_the_savedmodel_backend():
    """TensorFlow is the [tensorflow] extra's: in worker/ only the SavedModel backend's
    loader imports it, inside the function, so a [server] install serves without it."""
    users = []
    tooling = PROJECT_ROOT / "image_cluster" / "models"  # the [tensorflow] extra's own
    for package in ("edge", "worker", "proxy", "discovery", "autoscaler", "client", "image_cluster"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if path.is_relative_to(tooling):
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(n.split(".")[0] in ("tensorflow", "keras") for n in names):
                    users.append((str(path.relative_to(PROJECT_ROOT)), node.col_offset > 0))
    assert users == [("worker/backends.py", True)]  # indented: inside the loader, never at import


@pytest.mark.parametrize("text, size", [("1048576", 2**20), ("20MiB", 20 * 2**20), ("512k", 512 * 1024),
                                        ("1G", 2**30), ("1.5MB", 3 * 2**19), ("64mib", 64 * 2**20)])
def test_sizes_take_units(text, size):
    assert byte_size(text) == size


@pytest.mark.parametrize("text", ["lots", "20XB", "-1MiB", ""])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)
