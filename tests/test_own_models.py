"""Your own models beside the default one, end to end on real processes: a scikit-learn
pipeline exported to ONNX and a network retrained on digit photos (TFLite), both brought
in with `python -m image_cluster.models`, served by one worker next to the ImageNet model, and
reached through the proxy (forward), p2p lookup and the client; answers must be exactly
what the same models answer in process. And a new version imported under a running
worker appears whole: the hot swap loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from client import Client
from edge.imaging import preprocess
from tests.conftest import ESPRESSO, MODEL_DIR, PROJECT_ROOT
from tests.consul_dev import DevAgent
from tests.digits import DIGIT_FLAGS, DIGIT_LABELS, digits, features, png, sklearn_onnx, split, write_folders
from tests.processes import client_cli
from worker.model import load_model

pytestmark = pytest.mark.system

HELD_OUT = 120  # digits sent through the cluster per model and path


def models_cli(*args: str) -> str:
    """`python -m image_cluster.models ...` as a user runs it; its stdout (fails the test on an error)."""
    done = subprocess.run([sys.executable, "-m", "image_cluster.models", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """models/: the default model (linked), digits_onnx (scikit-learn, imported) and
    digits_tflite (retrained on 30 photos per digit); plus the held-out digits."""
    root = tmp_path_factory.mktemp("own-models")
    repo = root / "models"
    repo.mkdir()
    (repo / "efficientnet_lite0").symlink_to(MODEL_DIR)
    images, labels = digits()
    train, held = split(labels, per_class=30)
    held = held[:HELD_OUT]
    fit = np.setdiff1d(np.arange(len(labels)), held)
    pipeline = sklearn_onnx(root / "digits.onnx", images[fit], labels[fit])
    (root / "labels.txt").write_text("\n".join(DIGIT_LABELS) + "\n")
    out = models_cli("import", str(root / "digits.onnx"), "--name", "digits_onnx", "--repository", str(repo),
                     "--labels", str(root / "labels.txt"), *DIGIT_FLAGS)
    print(out)
    write_folders(root / "photos", images[train], labels[train])
    out = models_cli("retrain", str(root / "photos"), "--name", "digits_tflite", "--repository", str(repo))
    print(out)
    assert "held-out accuracy" in out and f"wrote {repo}/digits_tflite/1" in out
    return {"repo": repo, "root": root, "images": images[held], "labels": labels[held], "pipeline": pipeline}


def in_process(repository) -> dict[str, np.ndarray]:
    """Each digits model's predictions for the held-out digits, computed in this process."""
    images = repository["images"]
    retrained = load_model(repository["repo"] / "digits_tflite")
    decoded = np.stack([preprocess(png(i), retrained.preprocessing, 10**7) for i in images])
    return {"digits_onnx": repository["pipeline"].predict(features(images)),
            "digits_tflite": retrained.predict(decoded).argmax(axis=1)}


async def served(client: Client, model: str, mode: str, images: np.ndarray) -> np.ndarray:
    answers = await asyncio.gather(*(client.classify(png(i), mode=mode, model=model, k=1) for i in images))
    assert {a["model"] for a in answers} == {model}
    return np.array([int(a["predictions"][0]["label"]) for a in answers])


async def test_own_models_beside_the_default_in_every_path(start_worker, start_proxy, repository, coffee_jpeg):
    repo, labels = repository["repo"], repository["labels"]
    worker = start_worker("--model-repository", str(repo), "--models", "")  # every model in the repository
    assert set(worker.ready["models"]) == {"efficientnet_lite0", "digits_onnx", "digits_tflite"}
    proxy = start_proxy().wait_live(1)
    expected = in_process(repository)
    async with aiohttp.ClientSession() as session, Client(proxy.url, session=session) as client:
        for model, predictions in expected.items():
            accuracy = np.mean(predictions == labels)
            for mode in ("proxy", "p2p"):
                got = await served(client, model, mode, repository["images"])
                print(f"{model} via {mode}: accuracy {np.mean(got == labels):.3f} (in process {accuracy:.3f})")
                assert np.array_equal(got, predictions)  # the serving path loses nothing
        for mode in ("proxy", "p2p"):  # no model named: the default, still the ImageNet model
            result = await client.classify(coffee_jpeg, mode=mode)
            assert result["model"] == "efficientnet_lite0" and result["predictions"][0]["index"] == ESPRESSO
        await check_lookup_and_404(session, proxy.url, worker.url)
        await asyncio.to_thread(check_cli, proxy.url, repository, expected["digits_tflite"])
        async with session.get(worker.url + "/stats") as r:
            batching = (await r.json())["batching"]
        async with session.get(worker.url + "/metrics") as r:
            metrics = await r.text()
    # Each model its own queue: every image counted once, under its model (the lookup check sent
    # one digit to digits_onnx, the CLI five to digits_tflite).
    images = {model: b["images"] for model, b in batching.items()}
    assert images == {"digits_onnx": 2 * HELD_OUT + 1, "digits_tflite": 2 * HELD_OUT + 5, "efficientnet_lite0": 2}
    for model in images:
        assert f'imagecluster_batch_size_count{{model="{model}"}}' in metrics
    assert {w["id"]: w["models"] for w in proxy.workers()["workers"]} == {
        worker.worker_id: {"efficientnet_lite0": "1", "digits_onnx": "1", "digits_tflite": "1"}}


def check_cli(proxy_url: str, repository, predictions: np.ndarray) -> None:
    """`python -m client classify DIR --model NAME`, as a user runs it: the in-process answers."""
    folder = repository["root"] / "cli"
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(repository["images"][:5]):
        (folder / f"{i}.png").write_bytes(png(image))
    done = client_cli(proxy_url, "classify", str(folder), "--model", "digits_tflite", "--top-k", "1", "--json")
    assert done.returncode == 0, done.stderr
    answers = {Path(a["file"]).stem: a for a in map(json.loads, done.stdout.splitlines())}
    assert {a["model"] for a in answers.values()} == {"digits_tflite"}
    assert [int(answers[str(i)]["predictions"][0]["label"]) for i in range(5)] == list(predictions[:5])


async def check_lookup_and_404(session: aiohttp.ClientSession, proxy_url: str, worker_url: str) -> None:
    async with session.get(proxy_url + "/?model=digits_onnx") as r:  # the two-step curl flow, per model
        target = (await r.text()).strip()
    assert target == worker_url.removeprefix("http://") + "/?model=digits_onnx"
    form = aiohttp.FormData()
    form.add_field("data", png(digits()[0][3]), filename="3.png")
    async with session.post(f"http://{target}", data=form) as r:
        assert r.status == 200 and (await r.json())["predictions"][0]["label"] == "3"
    for url in (proxy_url + "/?model=nope", worker_url + "/?model=nope"):
        form = aiohttp.FormData()
        form.add_field("data", png(digits()[0][3]), filename="3.png")
        async with session.post(url, data=form) as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == "model_not_found"
            assert "digits_onnx" in body["error"]["message"]  # it says what is served
    async with session.get(proxy_url + "/?model=nope") as r:
        assert r.status == 404
    async with session.get(proxy_url + "/v2/models/digits_onnx") as r:  # the standard protocols see it too
        meta = await r.json()
        assert r.status == 200 and meta["inputs"][0]["parameters"]["also_accepts"]["shape"] == [-1, 8, 8, 1]
        assert meta["outputs"][0]["shape"] == [-1, 10]


async def test_import_under_a_running_worker_swaps_whole_and_loses_nothing(start_worker, start_proxy, repository,
                                                                          tmp_path):
    repo = tmp_path / "models"
    (repo / "digits_onnx").mkdir(parents=True)
    os.symlink(repository["repo"] / "digits_onnx" / "1", repo / "digits_onnx" / "1")
    junk = repo / "digits_onnx" / ".staging-by-hand"  # half a version: must never be picked up
    junk.mkdir()
    (junk / "model.onnx").write_bytes(b"half")
    start_worker("--model-repository", str(repo), "--models", "digits_onnx", "--version-poll", "0.2")
    proxy = start_proxy().wait_live(1)
    image = png(repository["images"][0])
    versions: list[str] = []
    async with Client(proxy.url, retries=0) as client:
        async def load():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(versions) < 3000 and versions[-20:].count("2") < 20:
                versions.append((await client.classify(image, mode="proxy", model="digits_onnx"))["version"])

        loops = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(1.0)
        out = await asyncio.to_thread(models_cli, "import", str(repository["root"] / "digits.onnx"), "--name",
                                      "digits_onnx", "--repository", str(repo), "--labels",
                                      str(repository["root"] / "labels.txt"), *DIGIT_FLAGS)
        assert f"{repo}/digits_onnx/2" in out
        await asyncio.gather(*loops)  # any failed request would raise here
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    print(f"{len(versions)} requests during the import, none failed; swapped to version 2")


async def test_consul_dns_finds_the_workers_of_a_model(start_worker, repository, artifacts_dir, coffee_jpeg):
    """No proxy at all: workers are tagged with their models, so MODEL.classifier.service.consul
    answers only the workers serving MODEL."""
    agent = DevAgent(dns=True, log_path=artifacts_dir / "consul-dns-models.log").start()
    try:
        imagenet = start_worker(consul=agent)  # the default model only
        digits = start_worker("--model-repository", str(repository["repo"]), "--models", "digits_onnx", consul=agent)
        async with Client([], dns=f"127.0.0.1:{agent.dns_port}") as client:
            for _ in range(6):
                r = await client.classify(png(repository["images"][0]), mode="p2p", model="digits_onnx", k=1)
                assert r["worker"] == digits.worker_id and r["model"] == "digits_onnx"
                r = await client.classify(coffee_jpeg, mode="p2p", model="efficientnet_lite0", k=1)
                assert r["worker"] == imagenet.worker_id and r["predictions"][0]["index"] == ESPRESSO
    finally:
        agent.stop()
