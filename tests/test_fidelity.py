"""Served answers are the model's answers: photos as shipped, through the worker
(direct), the proxy (forward) and the client's lookup (p2p), against the reference top-5
stored in tests/data/reference_top5.json (the default model on the reference
preprocessing: TensorFlow's eval path). Regenerate that file with
`.venv/bin/python tests/test_fidelity.py` after a deliberate change of model."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.consul_dev import PROJECT_ROOT  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "reference_top5.json"
BOUND = 0.02  # largest top-5 probability difference allowed (docs/guide/preprocessing.md)
DARKNET = PROJECT_ROOT / ".cache" / "darknet" / "usr" / "share" / "darknet" / "data"


def photo_files() -> dict[str, Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return {"coffee.png": data / "coffee.png", "chelsea.png": data / "chelsea.png",
            "rocket.jpg": data / "rocket.jpg", "dog.jpg": DARKNET / "dog.jpg", "eagle.jpg": DARKNET / "eagle.jpg"}


async def scores(session, url: str, photo: bytes, **params) -> tuple[dict[int, float], dict]:
    form = aiohttp.FormData()
    form.add_field("data", photo, filename="photo")
    async with session.post(url, data=form, params={"k": "1000", **params}) as r:
        body = await r.json()
        assert r.status == 200, body
    return {p["index"]: p["score"] for p in body["predictions"]}, body


@pytest.mark.system
async def test_served_scores_match_the_reference_in_every_mode(start_worker, start_proxy):
    service = f"fidelity-{uuid.uuid4().hex[:6]}"
    worker = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service).wait_live(1)
    reference = json.loads(REFERENCE.read_text())
    async with aiohttp.ClientSession() as s:
        for name, path in photo_files().items():
            photo = path.read_bytes()
            direct, _ = await scores(s, worker.url, photo)
            forward, _ = await scores(s, proxy.url, photo)
            async with s.get(proxy.url + "/") as r:
                looked_up = (await r.text()).strip()
            p2p, _ = await scores(s, f"http://{looked_up}", photo)
            expected = {int(i): score for i, score in reference[name]}
            for served in (direct, forward, p2p):
                assert max(served, key=served.get) == next(iter(expected)), name
                assert max(abs(served[i] - score) for i, score in expected.items()) <= BOUND, name
            assert all(abs(forward[i] - direct[i]) <= 1e-6 for i in direct), name  # one shared implementation


def write_reference() -> None:
    from edge.imaging import preprocess
    from edge.preprocessing import Preprocessing
    from worker.model import load_model

    model = load_model(PROJECT_ROOT / "models" / "efficientnet_lite0", preprocessing="exact", fp32=True)
    out = {}
    for name, path in photo_files().items():
        probs = model.predict(preprocess(path.read_bytes(), Preprocessing(path="exact"), 10**9)[None])[0]
        best = probs.argsort()[::-1][:5]
        out[name] = [[int(i), round(float(probs[i]), 6)] for i in best]
    REFERENCE.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
    print(REFERENCE.read_text())


if __name__ == "__main__":
    write_reference()
