"""The benchmark suite: every configuration side by side in one run, on this machine.

- ceiling: the worker's own decode + preprocess (2 threads) pipelined with its model
  (TFLite, batches of 32), in process, no network;
- flask: the original approach (scripts/bench/flask_baseline.py: SavedModel, one request
  at a time, `-F data=@`);
- mosec: the best peer measured (scripts/bench/mosec_baseline.py: the same model.tflite,
  our preprocessing, a decode stage feeding a batched inference stage, the same
  interpreter threads); the suite prints our rows over its rows as ratios;
- mosec-fp16: mosec with one one-thread inference process per core running the model in
  half precision, as our worker does on a CPU with native fp16 (docs/performance/studies.md, "Half
  precision"); our rows over it are printed too;
- direct-savedmodel: a worker with the SavedModel backend, POST straight to it;
- direct: a worker with the default TFLite backend, POST straight to it;
- direct-opencv: the same with --preprocessing opencv (the faster approximation of the
  exact reference preprocessing; the ratio of the two is printed);
- direct-onnx: the same network exported to ONNX with tf2onnx (offline, cached under
  --out), served by the ONNX Runtime backend; with its in-process ceiling beside
  TFLite's (the ratio is printed);
- v2-rest-binary, v2-grpc, tfserving-rest: the same worker through each standard
  protocol (the request its usual client sends), at the highest concurrency only;
- proxy: POST to the proxy, which forwards to that worker over ZeroMQ;
- p2p: the client library's lookup on the proxy, then POST to the worker;
- direct-raw, proxy-raw: the worker and the proxy sent the photo as the raw body, the
  request mosec gets: the ratios over mosec are printed for these too, like for like
  (the multipart rows above are our documented contract, `-F data=@`, and the client
  builds each form on the same cores);

each at concurrency 1, 8 and 32 with a real photo; for the worker and the proxy also open loop
(Poisson arrivals at 40, 60, 80 and 95% of their c=32 img/s, latency from each
request's scheduled time); then, when `wrk` is installed, the
proxy with a no-op model (scripts/bench/proxy_rate.py). Each configuration runs with only
its own servers up; the load generator shares the machine's cores with them. Prints the
tables (img/s, p50/p90/p99, img/s as a ratio of the ceiling, RSS of the serving
processes; req/s for the no-op model) and writes suite.json, throughput.png and p99.png.

    .venv/bin/python scripts/bench/suite.py [--duration 8] [--concurrency 1 8 32] [--out run/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import proxy_rate  # noqa: E402  (beside this file)
from machine import describe, label as machine_label  # noqa: E402  (beside this file)
from report import noop_table, onnx_over_tflite, open_loop_table, over_mosec, preprocessing_cost, table  # noqa: E402

from client import Client  # noqa: E402
from client.load import run_load, run_open_loop  # noqa: E402
from tests.consul_dev import DevAgent, free_port  # noqa: E402
from tests.processes import ProxyProcess, WorkerProcess, child_pids, serve_model, stop_process  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
OPEN_LOOP_SHARES = (0.4, 0.6, 0.8, 0.95)  # of the closed-loop c=32 img/s: where the tail comes from
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


def ceiling(photo: bytes, seconds: float, batch: int = 32, model_dir: Path = MODEL_DIR) -> dict:
    """img/s of decode+preprocess (2 threads) pipelined with batched inference, in process:
    as many inference loops as the model runs batches at once (the worker's batcher does
    the same), each decoding its next batch while its current one runs."""
    import numpy as np

    from edge.imaging import configure_decoding, preprocess
    from worker.config import WorkerConfig
    from worker.model import load_model

    configure_decoding()  # as the worker's decode pool does
    model = load_model(model_dir, batch_interpreters=WorkerConfig().batch_interpreters)  # as the worker does
    prep = model.preprocessing
    # Three pools: 2 decode threads, and per inference loop one thread that runs it and
    # one that hands its next batch to the decode threads (a batch handed over from a
    # decode thread itself could wait for a decode thread forever).
    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(model.concurrency) as loops, \
            ThreadPoolExecutor(model.concurrency) as pool:
        def decode_batch():
            return list(decoders.map(lambda _: preprocess(photo, prep, 10**8), range(batch)))

        def infer_loop(deadline: float) -> int:
            images, pending = 0, pool.submit(decode_batch)
            while time.perf_counter() < deadline:
                ready = pending.result()
                pending = pool.submit(decode_batch)  # decode the next batch while this one runs
                model.predict(np.stack(ready))
                images += len(ready)
            return images  # the last decode finishes untimed, as the pool shuts down

        model.predict(np.stack(decode_batch()))  # warm-up
        started = time.perf_counter()
        images = sum(loops.map(infer_loop, [started + seconds] * model.concurrency))
        elapsed = time.perf_counter() - started
    return {"per_second": round(images / elapsed, 2), "images": images, "seconds": round(elapsed, 3),
            "batch_size": batch, "backend": model.backend}


def onnx_export(out: Path) -> Path | None:
    """The default model exported to ONNX by tf2onnx, as REPOSITORY/efficientnet_lite0/1/
    (cached); None when tf2onnx is not installed (pip install -e '.[bench]')."""
    import importlib.util

    from worker.repository import write_version

    repository = out / "onnx-models"
    if (repository / MODEL_DIR.name / "1" / "model.onnx").exists():
        return repository
    if importlib.util.find_spec("tf2onnx") is None:
        print("  tf2onnx is not installed: no ONNX rows", flush=True)
        return None

    def export(staging: Path) -> None:
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(MODEL_DIR / "1"), "--output",
                        str(staging / "model.onnx"), "--opset", "17"], check=True, capture_output=True)
        for name in ("labels.txt", "serving.json"):
            shutil.copy(MODEL_DIR / "1" / name, staging / name)

    print("  exporting the default model to ONNX with tf2onnx...", flush=True)
    write_version(repository / MODEL_DIR.name, export)
    return repository


def rss_mb(*pids: int) -> int:
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                total += int(line.split()[1])
    return total // 1024


@contextmanager
def flask_server(out: Path):
    with baseline_server(out, "flask_baseline.py", "/healthz") as served:
        yield served


@contextmanager
def mosec_server(out: Path, infer_workers: int = 1, fp16: bool = False):
    """mosec; `infer_workers` > 1: that many one-thread inference processes; `fp16`: the
    model in half precision (see mosec_baseline.py)."""
    env = {**os.environ, "MOSEC_INFER_WORKERS": str(infer_workers), "MOSEC_FP16": "1" if fp16 else "0"}
    with baseline_server(out, "mosec_baseline.py", "/", "--address", "127.0.0.1", env=env) as served:
        yield served


@contextmanager
def baseline_server(out: Path, script: str, probe: str, *extra: str, env: dict | None = None):
    """A baseline server (scripts/bench/SCRIPT --port N) on a free port: (url, pid)."""
    port = free_port()
    log = open(out / f"{Path(script).stem}.log", "ab")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench" / script), "--port", str(port), *extra],
                            stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + probe, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start: see its log in {out}") from None
            time.sleep(0.2)
    try:
        yield url, proc.pid
    finally:
        stop_process(proc, log)


async def measure(name: str, send, concurrencies: list[int], duration: float, pids) -> list[dict]:
    rows = []
    for c in concurrencies:
        await run_load(send, concurrency=c, duration_s=min(2.0, duration / 4))  # warm-up
        result = await run_load(send, concurrency=c, duration_s=duration)
        row = {"config": name, **result.summary(), "rss_mb": rss_mb(*pids())}
        if result.errors:
            row["first_error"] = result.errors[0]
        print(f"  {name:18s} c={c:<3d} {row['per_second']:7.1f} img/s  p50 {row['p50_ms']:7.1f} ms  "
              f"p99 {row['p99_ms']:7.1f} ms  RSS {row['rss_mb']} MB  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


async def measure_open_loop(name: str, send, capacity: float, duration: float) -> list[dict]:
    """Poisson arrivals at shares of `capacity` (this configuration's closed-loop c=32
    img/s), latency from each request's scheduled time."""
    rows = []
    for share in OPEN_LOOP_SHARES:
        result = await run_open_loop(send, rate=round(share * capacity, 1), duration_s=duration)
        row = {"config": name, "share": share, **result.summary()}
        print(f"  {name:18s} {row['rate']:6.1f}/s ({share:.0%})  goodput {row['goodput']:7.1f}/s  "
              f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


def poster(session: aiohttp.ClientSession, photo: bytes):
    async def post(url: str):
        form = aiohttp.FormData()
        form.add_field("data", photo, filename="photo.jpg", content_type="image/jpeg")
        async with session.post(url, data=form) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{r.status}: {body[:200]!r}")
    return post


async def direct_worker(name: str, agent, args, post, *flags: str, model_dir: Path = MODEL_DIR) -> list[dict]:
    """One worker started with `flags`, measured with direct POSTs."""
    w = WorkerProcess(agent.address, *serve_model(model_dir), *flags,
                      log_path=args.out / f"worker-{name}.log").wait_ready()
    try:
        return await measure(name, lambda: post(w.url), args.concurrency, args.duration,
                             lambda: with_children(w.proc.pid))
    finally:
        w.stop()


def protocol_senders(session: aiohttp.ClientSession, worker, photo: bytes) -> dict:
    """One request per standard protocol, as their clients send it, to a worker."""
    import base64

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from edge.tensors import serialize_bytes

    raw = serialize_bytes([photo])
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    tfs = json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}]}).encode()
    model = MODEL_DIR.name
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.aio.insecure_channel(worker.grpc))
    rpc = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1])], raw_input_contents=[raw])

    async def post(path: str, body: bytes, headers: dict | None = None):
        async with session.post(worker.url + path, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{r.status} from {path}")

    return {
        "v2-rest-binary": lambda: post(f"/v2/models/{model}/infer", header + raw,
                                       {"Inference-Header-Content-Length": str(len(header))}),
        "v2-grpc": lambda: stub.ModelInfer(rpc),
        "tfserving-rest": lambda: post(f"/v1/models/{model}:predict", tfs),
    }


def raw_poster(session: aiohttp.ClientSession, photo: bytes):
    """POST the photo as the raw body (mosec's convention)."""
    async def post(url: str):
        async with session.post(url, data=photo) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{r.status}: {body[:200]!r}")
    return post


def with_children(pid: int) -> list[int]:
    """The process and those it spawned (for RSS): mosec's stage processes, a worker's fp16
    model hosts."""
    return [pid, *child_pids(pid)]


async def run_all(args, photo: bytes) -> list[dict]:
    rows: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s:
        post, raw = poster(s, photo), raw_poster(s, photo)
        with flask_server(args.out) as (url, pid):
            rows += await measure("flask", lambda: post(url), args.concurrency, args.duration, lambda: [pid])
        with mosec_server(args.out) as (url, pid):
            rows += await measure("mosec", lambda: raw(url + "/inference"), args.concurrency, args.duration,
                                  lambda: with_children(pid))
        with mosec_server(args.out, os.cpu_count(), fp16=True) as (url, pid):
            rows += await measure("mosec-fp16", lambda: raw(url + "/inference"), args.concurrency, args.duration,
                                  lambda: with_children(pid))

        agent = DevAgent(log_path=args.out / "consul.log").start()
        try:
            rows += await direct_worker("direct-savedmodel", agent, args, post, "--backend", "savedmodel")
            rows += await direct_worker("direct-opencv", agent, args, post, "--preprocessing", "opencv")
            if args.onnx_models:
                rows += await direct_worker("direct-onnx", agent, args, post,
                                            model_dir=args.onnx_models / MODEL_DIR.name)

            w = WorkerProcess(agent.address, *serve_model(MODEL_DIR),
                              log_path=args.out / "worker.log").wait_ready()
            proxy = ProxyProcess(agent.address, log_path=args.out / "proxy.log")
            try:
                proxy.wait_live(1)
                both = lambda: [*with_children(w.proc.pid), proxy.proc.pid]  # noqa: E731
                rows += await measure("direct", lambda: post(w.url), args.concurrency, args.duration,
                                      lambda: with_children(w.proc.pid))
                for name, send in protocol_senders(s, w, photo).items():  # at the highest concurrency only
                    rows += await measure(name, send, args.concurrency[-1:], args.duration,
                                          lambda: with_children(w.proc.pid))
                rows += await measure("proxy", lambda: post(proxy.url), args.concurrency, args.duration, both)
                for name, url in (("direct", w.url), ("proxy", proxy.url)):
                    top = next(r["per_second"] for r in reversed(rows) if r["config"] == name)
                    args.open_loop += await measure_open_loop(name, lambda url=url: post(url), top, args.duration)
                rows += await measure("direct-raw", lambda: raw(w.url), args.concurrency, args.duration,
                                      lambda: with_children(w.proc.pid))
                rows += await measure("proxy-raw", lambda: raw(proxy.url), args.concurrency, args.duration, both)
                async with Client(proxy.url, session=s) as client:
                    rows += await measure("p2p", lambda: client.classify(photo, mode="p2p"), args.concurrency,
                                          args.duration, both)
            finally:
                proxy.stop()
                w.stop()
        finally:
            agent.stop()
    return rows


def plots(ceiling_row: dict, rows: list[dict], machine: dict, out: Path) -> list[Path]:
    """Two bar charts, one bar per configuration and concurrency: img/s (with the in-process
    ceiling) and p99 on a log axis (p99 spans two decades between c=1 and c=32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    configs = list(dict.fromkeys(r["config"] for r in rows))
    levels = sorted({r["concurrency"] for r in rows})
    by = {(r["config"], r["concurrency"]): r for r in rows}
    height = 0.8 / len(levels)
    written = []
    for key, label, name in (("per_second", "images / s", "throughput.png"), ("p99_ms", "p99 latency, ms (log)", "p99.png")):
        fig, ax = plt.subplots(figsize=(8, 0.22 * len(configs) * len(levels) + 1.2))
        for i, c in enumerate(levels):
            ys = [n + i * height for n, config in enumerate(configs) if (config, c) in by]
            xs = [by[config, c][key] for config in configs if (config, c) in by]
            ax.barh(ys, xs, height=height, label=f"{c} concurrent")
        if key == "per_second":
            ax.axvline(ceiling_row["per_second"], color="grey", linestyle="--", label="in-process ceiling")
        else:
            ax.set_xscale("log")
            ax.set_xlim(left=1)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_yticks([n + height * (len(levels) - 1) / 2 for n in range(len(configs))], labels=configs)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08 - 1.5 / fig.get_figheight() / 10), ncol=3)
        ax.set_title(machine_label(machine), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    photo = args.photo.read_bytes()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe()  # its date is the run's start

    print(f"photo {args.photo} ({len(photo)} bytes); measuring the in-process ceiling...", flush=True)
    ceiling_row = ceiling(photo, args.duration)
    print(f"  ceiling {ceiling_row['per_second']:.1f} img/s", flush=True)
    args.onnx_models = onnx_export(args.out)
    ceilings = {"tflite": ceiling_row}
    if args.onnx_models:
        ceilings["onnx"] = ceiling(photo, args.duration, model_dir=args.onnx_models / MODEL_DIR.name)
        print(f"  ceiling with ONNX Runtime {ceilings['onnx']['per_second']:.1f} img/s", flush=True)
    args.open_loop = []
    rows = asyncio.run(run_all(args, photo))
    noop_rows = []
    if shutil.which("wrk"):
        noop_rows = proxy_rate.measure(args.duration, 32, 224, args.out)
    else:
        print("wrk is not installed (apt-get install wrk): skipping the no-op-model proxy rate", flush=True)

    result = {"machine": machine, "command": " ".join(["scripts/bench/suite.py", *sys.argv[1:]]), "photo": str(args.photo), "photo_bytes": len(photo), "duration_s": args.duration,
              "ceiling": ceiling_row, "ceilings": ceilings, "rows": rows, "open_loop": args.open_loop,
              "noop_proxy_rate": noop_rows}
    (args.out / "suite.json").write_text(json.dumps(result, indent=2) + "\n")
    written = plots(ceiling_row, rows, machine, args.out)
    print()
    print(table(ceiling_row, rows))
    print(f"\nimg/s with the exact preprocessing (direct) over OpenCV's approximation (direct-opencv): "
          f"{preprocessing_cost(rows)}")
    print(f"img/s over mosec's (same model file, preprocessing and interpreter threads): {over_mosec(rows)}")
    print(f"img/s over mosec-fp16's (the model in half precision, as ours): {over_mosec(rows, 'mosec-fp16')}")
    if "onnx" in ceilings:
        print(f"ONNX Runtime over TFLite (the same network, img/s): {onnx_over_tflite(rows, ceilings)}")
    print()
    print(open_loop_table(args.open_loop))
    if noop_rows:
        print()
        print(noop_table(noop_rows))
    print(f"\nwrote {args.out / 'suite.json'}, " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
