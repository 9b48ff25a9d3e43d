"""Flags from the environment (image_cluster/envflags.py) and the image-cluster command's
dispatch (image_cluster/cli.py), in process; tests/test_installs.py runs the installed
command against a real cluster."""

from __future__ import annotations

import argparse

import pytest

from client.load import percentile
from image_cluster import cli
from image_cluster.envflags import apply_environment
from proxy.__main__ import build_parser as proxy_parser
from tests.consul_dev import PROJECT_ROOT
from worker.__main__ import parse_args as worker_args

pytestmark = pytest.mark.unit


def parsed(parser: argparse.ArgumentParser, environ: dict, argv: list[str]) -> argparse.Namespace:
    apply_environment(parser, environ)
    return parser.parse_args(argv)


def test_every_kind_of_option_reads_its_variable():
    env = {"IMAGE_CLUSTER_MAX_BATCH_SIZE": "8", "IMAGE_CLUSTER_POLICY": "round-robin",
           "IMAGE_CLUSTER_REGISTER": "no", "IMAGE_CLUSTER_SPLIT": "1=90,2=10", "IMAGE_CLUSTER_CONSUL": "c:85"}
    args = parsed(proxy_parser(), env, [])
    assert (args.max_batch_size, args.policy, args.register, args.split, args.consul) == \
        (8, "round-robin", False, {"1": 90, "2": 10}, "c:85")
    assert parsed(proxy_parser(), env, ["--max-batch-size", "2", "--register"]).max_batch_size == 2  # flag wins
    assert parsed(proxy_parser(), env, ["--register"]).register is True


def test_the_worker_config_is_filled_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGE_CLUSTER_FP32", "true")
    monkeypatch.setenv("IMAGE_CLUSTER_MAX_BATCH_DELAY_MS", "0.5")
    monkeypatch.setenv("IMAGE_CLUSTER_MODEL_REPOSITORY", "/app/models")
    config = worker_args(["--port", "8601"])
    assert (config.fp32, config.batch.max_batch_delay_ms, str(config.model_repository), config.port) == \
        (True, 0.5, "/app/models", 8601)


def test_lists_and_store_true_flags():
    p = argparse.ArgumentParser()
    p.add_argument("--mean", type=float, nargs="+")
    p.add_argument("--json", action="store_true")
    args = parsed(p, {"IMAGE_CLUSTER_MEAN": "0.5 0.25 1", "IMAGE_CLUSTER_JSON": "1"}, [])
    assert (args.mean, args.json) == ([0.5, 0.25, 1.0], True)
    assert parsed(p, {"IMAGE_CLUSTER_JSON": "off"}, []).json is False


@pytest.mark.parametrize("name, value, said", [
    ("IMAGE_CLUSTER_MAX_BATCH_SIZE", "eight", "IMAGE_CLUSTER_MAX_BATCH_SIZE='eight'"),
    ("IMAGE_CLUSTER_POLICY", "random", "choose from"),
    ("IMAGE_CLUSTER_REGISTER", "maybe", "expected one of"),
])
def test_a_bad_value_is_an_error_naming_the_variable(capsys, name, value, said):
    with pytest.raises(SystemExit) as exited:
        parsed(proxy_parser(), {name: value}, [])
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_hidden_options_are_not_read():
    args = parsed(proxy_parser(), {"IMAGE_CLUSTER_LISTEN_FD": "7"}, [])
    assert args.listen_fd == -1  # the default: the handover's internals come only from the parent proxy


def test_client_options_go_before_or_after_the_subcommand(monkeypatch):
    from client.__main__ import main

    seen = {}

    async def lookup(args):
        seen.update(proxy=args.proxy, token=args.token)
        return 0

    monkeypatch.setattr("client.__main__.lookup", lookup)
    monkeypatch.setenv("IMAGE_CLUSTER_TOKEN", "from-env")
    assert main(["lookup", "--proxy", "http://after:1"]) == 0 and seen == {"proxy": ["http://after:1"],
                                                                          "token": "from-env"}
    assert main(["--proxy", "before:1,http://b:2/", "lookup"]) == 0
    assert seen["proxy"] == ["http://before:1", "http://b:2"]  # no scheme: http, as curl takes it


def test_the_command_lists_its_subcommands_and_refuses_others(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in ("worker", "proxy", "autoscaler", "classify", "models"))
    assert cli.main(["serve"]) == 2
    assert "no command 'serve'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_a_missing_install_names_its_extra(monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["worker", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "image-cluster worker: needs numpy, which this install lacks: pip install 'image-cluster[server]'"


def test_the_console_script_is_declared():
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'image-cluster = "image_cluster.cli:main"' in text


def test_percentile_interpolates_as_numpy_does():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert [percentile(values, q) for q in (0, 50, 90, 100)] == [1.0, 3.0, 4.6, 5.0]
    assert percentile([7.0], 99) == 7.0
