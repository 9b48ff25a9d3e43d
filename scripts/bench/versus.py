"""Us against the best peer, alternating, so that a noisy machine shows as spread and not
as a lead: mosec (scripts/bench/mosec_baseline.py: the same model file, our
preprocessing) in three shapes (one inference process on every core's threads;
`mosec-1t`: one one-thread inference process per core, the mosec way to what our
--batch-interpreters does; `mosec-fp16`: mosec-1t with the model in half precision, as
our worker runs it on a CPU with native fp16), our worker and our proxy in front of it,
and `worker-fp32`: a second worker kept in fp32 by --fp32 (outside the proxy's service),
all started once and measured in turn, round after round (the order rotates each
round), with wrk (a C load generator, far lighter than the suite's Python client)
POSTing the same raw JPEG body to each. Each round also measures the in-process ceiling
(the suite's: decode and preprocess on 2 threads pipelined with the model, no HTTP).
Prints every round, then the medians of img/s, of the per-round ratios over the better
mosec of that round, and of the fraction of that round's ceiling.

    .venv/bin/python scripts/bench/versus.py [--rounds 3] [--duration 8] [--connections 1 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from proxy_rate import POST_LUA, wrk, wrk_scratch  # noqa: E402
from suite import PHOTO, ceiling, mosec_server  # noqa: E402

from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import WorkerProcess, serve_model, worker_and_proxy  # noqa: E402


def in_turn(targets: dict[str, str], connections: list[int], round_no: int, duration: float,
            script: Path) -> list[dict]:
    """One round: every target at every concurrency with wrk, after a warm-up; the order
    of the targets rotates by round, so none always runs first."""
    names, rows = list(targets), []
    order = names[(round_no - 1) % len(names):] + names[:(round_no - 1) % len(names)]
    for c in connections:
        for name in order:
            wrk(targets[name], c, 2, script)  # warm-up
            row = {"round": round_no, "target": name, "connections": c, **wrk(targets[name], c, duration, script)}
            print(f"  round {round_no} c={c:<3d} {name:8s} {row['per_second']:7.1f} img/s  p50 {row['p50_ms']:7.1f} ms"
                  f"  p99 {row['p99_ms']:7.1f} ms  non-2xx {row['non_2xx']}", flush=True)
            rows.append(row)
    return rows


def rounds(targets: dict[str, str], connections: list[int], n: int, duration: float, script: Path,
           photo: bytes) -> tuple[list[dict], list[float]]:
    """Each round measures the ceiling, then every target in turn."""
    rows, ceilings = [], []
    for r in range(1, n + 1):
        ceilings.append(ceiling(photo, duration)["per_second"])
        print(f"  round {r} in-process ceiling {ceilings[-1]:7.1f} img/s", flush=True)
        rows += in_turn(targets, connections, r, duration, script)
    return rows, ceilings


def summary(rows: list[dict], ceilings: list[float], connections: list[int]) -> str:
    lines = [f"in-process ceiling, median of the rounds: {statistics.median(ceilings):.1f} img/s", "",
             "| c | target | median img/s | median p99 ms | per-round img/s over the better mosec | median ratio | "
             "median of ceiling |",
             "|---:|---|---:|---:|---|---:|---:|"]
    for c in connections:
        at = [r for r in rows if r["connections"] == c]
        mosec: dict[int, float] = {}  # the better mosec shape of each round
        for r in at:
            if r["target"].startswith("mosec"):
                mosec[r["round"]] = max(mosec.get(r["round"], 0.0), r["per_second"])
        for target in dict.fromkeys(r["target"] for r in at):
            mine = [r for r in at if r["target"] == target]
            ratios = [r["per_second"] / mosec[r["round"]] for r in mine]
            of_ceiling = statistics.median(r["per_second"] / ceilings[r["round"] - 1] for r in mine)
            lines.append(f"| {c} | {target} | {statistics.median(r['per_second'] for r in mine):.1f} | "
                         f"{statistics.median(r['p99_ms'] for r in mine):.1f} | "
                         f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f}x | "
                         f"{of_ceiling:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    tmp = wrk_scratch(a.out)
    (tmp / "post.lua").write_text(POST_LUA.format(content_type="image/jpeg", body=a.photo.resolve()))
    print(f"{a.photo.name}, {a.rounds} rounds of {a.duration:g} s per target and concurrency", flush=True)
    agent = DevAgent(log_path=a.out / "consul-versus.log").start()
    try:
        with mosec_server(a.out) as (mosec_url, _), mosec_server(a.out, os.cpu_count()) as (mosec_1t_url, _), \
                mosec_server(a.out, os.cpu_count(), fp16=True) as (mosec_fp16_url, _), \
                worker_and_proxy(agent.address, a.out, name="versus") as (worker, proxy):
            fp32 = WorkerProcess(agent.address, *serve_model(ROOT / "models" / "efficientnet_lite0"), "--fp32",
                                 "--service-name", "versus-fp32", log_path=a.out / "worker-versus-fp32.log")
            try:
                targets = {"mosec": mosec_url + "/inference", "mosec-1t": mosec_1t_url + "/inference",
                           "mosec-fp16": mosec_fp16_url + "/inference", "worker": worker.url + "/",
                           "worker-fp32": fp32.wait_ready().url + "/", "proxy": proxy.url + "/"}
                rows, ceilings = rounds(targets, a.connections, a.rounds, a.duration, tmp / "post.lua",
                                        a.photo.read_bytes())
            finally:
                fp32.stop()
    finally:
        agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + summary(rows, ceilings, a.connections))
    (a.out / "versus.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
