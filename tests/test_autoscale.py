"""The autoscaler on a real cluster (loopback): a bounded load ramp, low -> high -> low,
in forward and p2p modes at once. Workers go up to at least 3 and back to the minimum,
no request fails, and the number of scale events stays within a stated bound. The
actuators' commands are checked against a recording executable (no Docker engine here)."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
import uuid

import aiohttp
import pytest

from autoscaler.actuators import CommandHook, ComposeScale, LocalProcesses
from autoscaler.load import WorkerLoad
from client import Client
from client.load import run_load
from tests.conftest import MODEL_DIR
from tests.processes import AutoscalerProcess, wait_for

RAMP = ((2, 6.0), (24, 22.0), (2, 14.0))  # (concurrency, seconds): low, high, low
MAX_EVENTS = 6  # up to 4 workers and back: at most 3 ups and 3 downs, whatever the ramp's noise


async def live_series(proxy_url: str, samples: list, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(proxy_url + "/workers") as r:
                samples.append((asyncio.get_running_loop().time(), (await r.json())["live"]))
            await asyncio.sleep(0.25)


async def ramp(proxy_url: str, photo: bytes) -> tuple[list, list]:
    """Each phase: half the concurrency plain HTTP through the proxy (no client retries),
    half through the client library's p2p lookup. Returns (forward errors, p2p errors)."""
    forward_errors, p2p_errors = [], []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s, Client(proxy_url, session=s) as client:
        async def post():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg")
            async with s.post(proxy_url, data=form) as r:
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {await r.text()}")
                await r.read()

        for concurrency, seconds in RAMP:
            forward, p2p = await asyncio.gather(
                run_load(post, concurrency=concurrency // 2, duration_s=seconds),
                run_load(lambda: client.classify(photo, mode="p2p"), concurrency=concurrency // 2, duration_s=seconds))
            forward_errors += forward.errors
            p2p_errors += p2p.errors
    return forward_errors, p2p_errors


@pytest.mark.system
async def test_load_ramp_scales_up_and_back_down_losing_nothing(consul_agent, start_proxy, artifacts_dir,
                                                                coffee_jpeg):
    service = f"autoscaled-{uuid.uuid4().hex[:6]}"
    proxy = start_proxy("--service-name", service)
    scaler = AutoscalerProcess(
        consul_agent.address, "--service-name", service, "--min", "1", "--max", "4", "--target-in-flight", "3",
        "--upscale-delay", "1", "--downscale-delay", "5", "--interval", "0.25", "--log-dir", str(artifacts_dir),
        "--worker-command", f"python -m worker --host 127.0.0.1 --port 0 --model-repository {MODEL_DIR.parent} "
                            f"--models {MODEL_DIR.name}",
        log_path=artifacts_dir / "autoscaler.log").wait_ready()
    try:
        wait_for(lambda: proxy.workers()["live"] == 1, timeout=30, what="the minimum of 1 worker")
        samples, stop = [], asyncio.Event()
        sampler = asyncio.create_task(live_series(proxy.url, samples, stop))
        forward_errors, p2p_errors = await ramp(proxy.url, coffee_jpeg)
        await asyncio.to_thread(wait_for, lambda: proxy.workers()["live"] == 1, 30, 0.25, "back to 1 worker")
        stop.set()
        await sampler
        async with aiohttp.ClientSession() as s, s.get(scaler.url + "/decisions") as r:
            changes = (await r.json())["changes"]
    finally:
        scaler.signal(signal.SIGTERM)
        assert scaler.wait(60) == 0  # it drained the workers it started
    peak = max(live for _, live in samples)
    print(f"\npeak {peak} workers; {len(changes)} scale events: "
          + ", ".join(f"{c['direction']} {c['current']}->{c['desired']}" for c in changes))
    assert not forward_errors and not p2p_errors, (forward_errors[:3], p2p_errors[:3])
    assert peak >= 3
    assert len(changes) <= MAX_EVENTS and changes[-1]["direction"] == "down"


def recorder(tmp_path):
    """An executable that appends its arguments, as JSON, to a file."""
    log = tmp_path / "calls.jsonl"
    exe = tmp_path / "record"
    exe.write_text(f"#!{sys.executable}\nimport json, sys\n"
                   f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe, lambda: [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.system
async def test_compose_and_command_actuators_run_their_commands(tmp_path):
    exe, calls = recorder(tmp_path)
    await ComposeScale(f"{exe} compose").scale(3, [])
    hook = CommandHook(f"{exe} scale deploy/{{model}} --replicas={{desired}}", "efficientnet_lite0")
    await hook.scale(2, [WorkerLoad("w1", "127.0.0.1:1", ("efficientnet_lite0",), 0.0)])
    assert calls() == [["compose", "up", "-d", "--scale", "worker=3", "--no-recreate", "worker"],
                       ["scale", "deploy/efficientnet_lite0", "--replicas=2"]]
    assert hook.pending([WorkerLoad("w1", "127.0.0.1:1", ("m",))]) == 1  # asked for 2, 1 live so far


@pytest.mark.system
async def test_local_actuator_drains_the_idlest_newest_first():
    local = LocalProcesses([sys.executable, "-c", "import time; time.sleep(60)"])
    await local.scale(3, [])
    a, b, c = local.children
    a.worker_id, b.worker_id, c.worker_id = "a", "b", "c"
    live = [WorkerLoad("a", "", ("m",), 0.0), WorkerLoad("b", "", ("m",), 5.0), WorkerLoad("c", "", ("m",), 0.0)]
    await local.scale(2, live)  # a and c are idle: c is the newer
    assert [x.draining for x in (a, b, c)] == [False, False, True]
    await local.close()
    assert all(x.proc.returncode is not None for x in (a, b, c))
