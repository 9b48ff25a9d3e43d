"""The original approach, as a baseline for the benchmarks: a Flask app that loads the
model once and serves one request at a time (Werkzeug's server, threaded=False), with the
seed's contract `curl -XPOST HOST:PORT -F data=@photo.jpg`. Benchmark-only.

    .venv/bin/python scripts/bench/flask_baseline.py --port 8700 [--backend savedmodel]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flask import Flask, jsonify, request  # noqa: E402

from edge.imaging import ImageError, configure_decoding, preprocess  # noqa: E402
from worker.model import load_model  # noqa: E402
from worker.service import top_k  # noqa: E402


def create_app(model_dir: Path, backend: str) -> Flask:
    configure_decoding()  # as the worker's decode pool does
    model = load_model(model_dir, backend=backend, fp32=True)  # the original approach: the model as exported
    app = Flask(__name__)

    @app.post("/")
    def classify():
        upload = request.files.get("data")
        if upload is None:
            return jsonify(error="no file in field 'data'"), 400
        try:
            image = preprocess(upload.read(), model.preprocessing, 40_000_000)
        except ImageError as exc:
            return jsonify(error=exc.message), 400
        probabilities = model.predict(image[None])[0]
        return jsonify(model=model.name, version=model.version, predictions=top_k(probabilities, model.labels, 5))

    @app.get("/healthz")
    def healthz():
        return jsonify(status="alive")

    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "efficientnet_lite0")
    p.add_argument("--backend", default="savedmodel", help="savedmodel, like the original (default)")
    a = p.parse_args()
    create_app(a.model_dir, a.backend).run(host="127.0.0.1", port=a.port, threaded=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
