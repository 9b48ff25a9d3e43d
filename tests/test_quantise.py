"""The quantised variants (image_cluster/models/quantise.py): built offline beside the float model as
models of their own, served by a real worker next to it, and agreeing with it on the
test photos the float model is sure about. (How far they agree elsewhere, and how fast
they are, is scripts/bench/quantise.py's job: figures, not assertions.)"""

from __future__ import annotations

import aiohttp
import pytest

from image_cluster.models.default_model import PROJECT_LABELS_DIR
from image_cluster.models.quantise import build_variants
from tests.conftest import DOMESTIC_CATS, ESPRESSO, MODEL_DIR, SKIMAGE_DATA

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def repository(tmp_path_factory, built_model):
    repo = tmp_path_factory.mktemp("quantised") / "models"
    repo.mkdir()
    (repo / MODEL_DIR.name).symlink_to(MODEL_DIR)
    written = build_variants(MODEL_DIR / "1", repo, PROJECT_LABELS_DIR)
    assert [p.parent.name for p in written] == ["efficientnet_lite0_int8", "efficientnet_lite0_dynamic"]
    assert build_variants(MODEL_DIR / "1", repo, PROJECT_LABELS_DIR) == []  # present: skipped
    return repo


async def test_variants_serve_beside_the_float_model_and_agree(start_worker, repository, coffee_jpeg,
                                                                chelsea_png):
    worker = start_worker("--model-repository", str(repository), "--models", "")
    assert set(worker.ready["models"]) == {"efficientnet_lite0", "efficientnet_lite0_int8",
                                           "efficientnet_lite0_dynamic"}
    rocket = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    async with aiohttp.ClientSession() as session:
        for model in ("efficientnet_lite0", "efficientnet_lite0_int8", "efficientnet_lite0_dynamic"):
            top1 = []
            for photo in (coffee_jpeg, chelsea_png, rocket):
                form = aiohttp.FormData()
                form.add_field("data", photo, filename="photo")
                async with session.post(f"{worker.url}/?model={model}", data=form) as r:
                    body = await r.json()
                    assert r.status == 200 and body["model"] == model
                    top1.append(body["predictions"][0])
            assert top1[0]["index"] == ESPRESSO and top1[1]["index"] in DOMESTIC_CATS, model
            assert top1[2]["label"] in ("space shuttle", "missile", "projectile"), model
