"""Model versions: a hot swap under load loses nothing, `?version=` routes, and a
weighted split between versions is exact (smooth weighted round-robin)."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest

from client import Client
from proxy.config import ProxyConfig
from proxy.policy import VersionSplit
from proxy.state import ProxyState
from tests.conftest import ESPRESSO, MODEL_DIR
from tests.processes import child_pids, serve_model, wait_for
from worker.backends import lane_count
from worker.model_host import native_fp16

SERVED_FILES = ("model.tflite", "labels.txt", "serving.json")  # all the TFLite backend reads


def add_version(model_dir: Path, version: int) -> None:
    """Copy the default model in as `version`, appearing at once (rename), as a deploy would."""
    staging = model_dir / f".staging-{version}"
    staging.mkdir(parents=True)
    for name in SERVED_FILES:
        shutil.copy(MODEL_DIR / "1" / name, staging / name)
    os.rename(staging, model_dir / str(version))


async def post(session, url: str, photo: bytes):
    form = aiohttp.FormData()
    form.add_field("data", photo, filename="p.jpg", content_type="image/jpeg")
    async with session.post(url, data=form) as r:
        return r.status, await r.json()


@pytest.mark.unit
def test_split_policy_is_exact_and_interleaved():
    split = VersionSplit.parse("1=90,2=10")
    picks = [split.pick({"1", "2"}) for _ in range(100)]
    assert picks.count("1") == 90 and picks.count("2") == 10
    assert "2" in picks[:10]  # interleaved, not 90 then 10
    assert [split.pick({"1"}) for _ in range(5)] == ["1"] * 5  # only what is live takes part
    assert split.pick({"3"}) is None
    with pytest.raises(ValueError):
        VersionSplit.parse("1=ninety")


@pytest.mark.unit
def test_each_model_has_its_own_exact_split():
    """Requests for two models alternating must not skew either model's shares."""
    state = ProxyState(ProxyConfig(split={"1": 90, "2": 10}), pool=None, watcher=None)
    picks = {"a": [], "b": []}
    for _ in range(100):
        for model in picks:
            picks[model].append(state.split(model).pick({"1", "2"}))
    assert all(p.count("1") == 90 and p.count("2") == 10 for p in picks.values())
    assert ProxyState(ProxyConfig(), pool=None, watcher=None).split("a") is None


@pytest.mark.system
async def test_hot_swap_under_load_loses_nothing(start_worker, start_proxy, tmp_path, coffee_jpeg):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    model_dir = tmp_path / "efficientnet_lite0"
    add_version(model_dir, 1)
    worker = start_worker("--service-name", service, *serve_model(model_dir), "--version-poll", "0.2")
    proxy = start_proxy("--service-name", service).wait_live(1)
    seen: dict[str, list[int]] = {}  # loop -> versions, in the loop's (sequential) order

    async with aiohttp.ClientSession() as session, Client(proxy.url, session=session) as client:
        async def proxy_mode():
            status, body = await post(session, proxy.url, coffee_jpeg)
            assert status == 200, body
            assert body["predictions"][0]["index"] == ESPRESSO
            return body["version"]

        async def p2p_mode():
            body = await client.classify(coffee_jpeg, mode="p2p")
            assert body["predictions"][0]["index"] == ESPRESSO
            return body["version"]

        async def loop(name, send, n, deploy_at=()):
            seen[name] = []
            for i in range(n):
                seen[name].append(int(await send()))
                if i in deploy_at:
                    add_version(model_dir, deploy_at.index(i) + 2)  # v2, then v3, mid-load
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(loop("proxy", proxy_mode, 150, deploy_at=(20, 80)),
                                              loop("p2p-a", p2p_mode, 150), loop("p2p-b", p2p_mode, 150)),
                               timeout=120)

    # Every request answered (asserted as they came), and in each sequential loop the
    # version never goes back: each swap is atomic.
    assert sum(map(len, seen.values())) == 450
    for name, versions in seen.items():
        assert versions == sorted(versions), name
        assert versions[0] == 1 and versions[-1] == 3, name
    assert {v for versions in seen.values() for v in versions} >= {1, 3}
    # Consul Meta (and so the proxy) and the worker itself report the newest version.
    wait_for(lambda: [w["models"]["efficientnet_lite0"] for w in proxy.workers()["workers"]] == ["3"],
             what="version 3 in Meta")
    async with aiohttp.ClientSession() as s, s.get(worker.url + "/info") as r:
        assert (await r.json())["models"]["efficientnet_lite0"]["version"] == "3"
    # In fp16 each version runs in child processes (worker/model_host.py): the old
    # versions' are gone, only version 3's remain (a main one, and one per lane).
    hosts = 1 + lane_count(0) if native_fp16() else 0  # the worker's default: one lane per core
    wait_for(lambda: len(child_pids(worker.proc.pid)) == hosts,
             what="only the newest version's model hosts")


@pytest.mark.system
async def test_version_routing_and_ab_split(start_worker, start_proxy, tmp_path, coffee_jpeg):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    v1_dir, v2_dir = tmp_path / "a" / "efficientnet_lite0", tmp_path / "b" / "efficientnet_lite0"
    add_version(v1_dir, 1)
    add_version(v2_dir, 2)
    v1 = start_worker("--service-name", service, *serve_model(v1_dir), wait=False)
    v2 = start_worker("--service-name", service, *serve_model(v2_dir))
    v1.wait_ready()
    proxy = start_proxy("--service-name", service, "--split", "1=90,2=10").wait_live(2)
    async with aiohttp.ClientSession() as s:
        answers = [await post(s, proxy.url, coffee_jpeg) for _ in range(100)]
        assert all(status == 200 for status, _ in answers)
        versions = [body["version"] for _, body in answers]
        assert versions.count("1") == 90 and versions.count("2") == 10  # measured, exactly
        by_worker = {body["version"]: body["worker"] for _, body in answers}
        assert by_worker == {"1": v1.worker_id, "2": v2.worker_id}

        for version, worker in (("1", v1), ("2", v2)):
            status, body = await post(s, f"{proxy.url}/?version={version}", coffee_jpeg)
            assert status == 200 and body["version"] == version and body["worker"] == worker.worker_id
            async with s.get(f"{proxy.url}/?version={version}") as r:
                assert (await r.text()).strip() == worker.url.removeprefix("http://")
        status, body = await post(s, f"{proxy.url}/?version=3", coffee_jpeg)
        assert status == 503 and "version 3" in body["error"]["message"]
        status, body = await post(s, f"{proxy.url}/?version=latest", coffee_jpeg)
        assert status == 422
