"""What each way of sending the same photo costs: `wrk` (Debian package `wrk`) at c=32
posts coffee as every body form the servers accept, straight to a worker and through the
proxy, serving the default model: the native route's raw JPEG, the Open Inference
Protocol's BYTES (base64 in JSON) and UINT8 pixels as JSON numbers (flat and nested), TF
Serving's `b64` and pixel arrays. Prints img/s, p99 and the servers' CPU per image (from
/proc), the median of the rounds; the forms take turns within a round.

    .venv/bin/python scripts/bench/body_forms.py [--duration 8] [--rounds 2] [--forms native v2-flat]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from cpu_split import measure  # noqa: E402
from proxy_rate import POST_LUA, V2_PATH, v2_base64_body, v2_body, wrk, wrk_scratch  # noqa: E402
from suite import PHOTO  # noqa: E402

from edge.imaging import preprocess  # noqa: E402
from edge.preprocessing import Preprocessing  # noqa: E402
from tests.processes import local_cluster  # noqa: E402

TFS = "/v1/models/efficientnet_lite0:predict"


def forms(photo: bytes) -> dict[str, tuple[str, str, bytes]]:
    """name: (path, Content-Type, body), every form carrying the same photo."""
    pixels = preprocess(photo, Preprocessing(), 1 << 40)
    b64 = base64.b64encode(photo).decode()
    return {
        "native": ("/", "image/jpeg", photo),
        "v2-base64": (V2_PATH, "application/json", v2_base64_body(photo)),
        "v2-flat": (V2_PATH, "application/json", v2_body("UINT8", [1, *pixels.shape], pixels.ravel().tolist())),
        "v2-nested": (V2_PATH, "application/json", v2_body("UINT8", [1, *pixels.shape], [pixels.tolist()])),
        "tfs-b64": (TFS, "application/json", json.dumps({"instances": [{"b64": b64}]}).encode()),
        "tfs-pixels": (TFS, "application/json", json.dumps({"instances": [pixels.tolist()]}).encode()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--forms", nargs="+", default=None, help="a subset of the forms, by name")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    tmp = wrk_scratch(args.out)
    bodies = forms(PHOTO.read_bytes())
    names = args.forms or list(bodies)
    if unknown := set(names) - set(bodies):
        sys.exit(f"unknown forms {sorted(unknown)}: choose from {list(bodies)}")
    for name in names:
        path, content_type, body = bodies[name]
        (tmp / f"{name}.body").write_bytes(body)
        (tmp / f"{name}.lua").write_text(POST_LUA.format(content_type=content_type, body=tmp / f"{name}.body"))
    runs = {(target, name): [] for target in ("worker", "proxy") for name in names}
    with local_cluster(args.out, "body-forms") as (worker, proxy):
        servers = {"worker": worker, "proxy": proxy}
        roles = {worker.proc.pid: "worker", proxy.proc.pid: "proxy"}
        for round_ in range(args.rounds):
            for target, name in runs:
                url, script = servers[target].url + bodies[name][0], tmp / f"{name}.lua"
                wrk(url, args.connections, 2, script)  # warm-up
                run = measure(url, roles, args.duration, args.connections, script)
                if run["non_2xx"]:
                    sys.exit(f"{target} answered {run['non_2xx']} {name} requests with an error")
                runs[(target, name)].append(run)
                print(f"  round {round_ + 1} {target:6s} {name:10s} {run['per_second']:6.1f} img/s", flush=True)
    print(f"\n| c={args.connections}, coffee | body bytes | worker img/s | p99 ms | core-ms an image "
          "| proxy img/s | p99 ms | core-ms an image |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        cells = []
        for target in ("worker", "proxy"):
            rows = runs[(target, name)]
            cells += [f"{statistics.median(r[k] for r in rows):.1f}" for k in ("per_second", "p99_ms")]
            cells.append(f"{statistics.median(sum(r['groups'].values()) for r in rows):.2f}")
        print(f"| {name} | {len(bodies[name][2]):,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
