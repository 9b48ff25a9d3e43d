"""The original design's central claim, measured: with every host's link capped at the
same rate, forwarding through the proxy saturates the proxy's link, while p2p (look up,
then post straight to a worker) grows with the number of worker hosts.

Simulated hosts in network namespaces (tests/netlab.py): a Consul server, the proxy,
up to 4 worker hosts (each with a local Consul client agent) and 4 client hosts, every
link capped with `tc tbf`. The photo is large (coffee upscaled to 3000x2000, ~1.5 MB), so
links, not CPUs, are the limit. For each worker count, the workers beyond it are put in
Consul maintenance (the proxy drops them in milliseconds), then every client host runs
`python -m client bench` in each mode at once, and their img/s are added up.

    sudo .venv/bin/python scripts/bench/bandwidth.py [--rate 50mbit] [--duration 10]

Prints the table and writes run/bench/bandwidth.json and run/bench/bandwidth.png.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.netlab import Lab, can_create_namespaces  # noqa: E402
from tests.processes import ProxyProcess, WorkerProcess, serve_model  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"


def big_photo(path: Path, side: int) -> bytes:
    img = Image.open(ROOT / ".cache" / "photos" / "coffee.jpg")
    img = img.resize((side, side * 2 // 3), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    path.write_bytes(out.getvalue())
    return out.getvalue()


def set_maintenance(lab: Lab, host, worker_id: str, enable: bool) -> None:
    url = f"http://127.0.0.1:8500/v1/agent/service/maintenance/{worker_id}?enable={str(enable).lower()}"
    out = lab.exec(host, ["curl", "-sf", "-X", "PUT", url])
    if out.returncode != 0:
        raise RuntimeError(f"maintenance {enable} for {worker_id} failed: {out.stderr}")


def live_workers(lab: Lab, client, proxy_url: str) -> int:
    out = lab.exec(client, ["curl", "-s", f"{proxy_url}/workers"]).stdout
    return json.loads(out)["live"] if out else 0


def run_clients(lab: Lab, clients, proxy_url: str, photo: Path, mode: str, concurrency: int,
                duration: float) -> list[dict]:
    procs = [lab.run(c, [sys.executable, "-m", "client", "--proxy", proxy_url, "bench", str(photo),
                         "--mode", mode, "--concurrency", str(concurrency), "--duration", str(duration),
                         "--json", "--retries", "2"],
                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in clients]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=duration + 120)
        if not out.strip():
            raise RuntimeError(f"client bench printed nothing: {err[-500:]}")
        results.append(json.loads(out))
    return results


def plot(rows: list[dict], rate: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("proxy", "o-"), ("p2p", "s-")):
        pts = [(r["workers"], r["per_second"]) for r in rows if r["mode"] == mode]
        ax.plot(*zip(*pts), style, label="forward (through the proxy)" if mode == "proxy" else "p2p (lookup, then direct)")
    ax.set_xlabel("worker hosts")
    ax.set_ylabel("images / s")
    ax.set_xticks(sorted({r["workers"] for r in rows}))
    ax.set_ylim(bottom=0)
    ax.set_title(f"Every host's link capped at {rate}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="50mbit", help="tc rate for every host's link, each way")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clients", type=int, default=4, help="client hosts")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight per client host")
    p.add_argument("--photo-side", type=int, default=3000)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    if not can_create_namespaces():
        sys.exit("needs root and iproute2 (network namespaces)")
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    with Lab() as lab:
        photo_path = Path(lab.tmp) / "big.jpg"
        photo = big_photo(photo_path, args.photo_side)
        print(f"photo {args.photo_side}x{args.photo_side * 2 // 3}, {len(photo) / 1e6:.2f} MB; links capped at "
              f"{args.rate}", flush=True)
        consul = lab.add_host("consul")
        lab.start_consul_server(consul)
        proxy_host = lab.add_host("proxy")
        worker_hosts = [lab.add_host(f"w{i}") for i in range(1, max(args.workers) + 1)]
        clients = [lab.add_host(f"c{i}") for i in range(1, args.clients + 1)]
        for host in (proxy_host, *worker_hosts):
            lab.start_consul_client(host)
        for host in lab.hosts.values():
            lab.cap(host, args.rate)

        workers = [WorkerProcess("127.0.0.1:8500", *serve_model(MODEL_DIR), host="0.0.0.0",
                                 wrapper=h.wrapper, log_path=args.out / f"bandwidth-{h.name}.log")
                   for h in worker_hosts]
        proxy = ProxyProcess("127.0.0.1:8500", host="0.0.0.0", port=12480, reach_at=proxy_host.ip,
                             wrapper=proxy_host.wrapper, log_path=args.out / "bandwidth-proxy.log")
        proxy_url = f"http://{proxy_host.ip}:12480"
        try:
            for w in workers:
                w.wait_ready(timeout=180)
            for n in args.workers:
                for i, (w, h) in enumerate(zip(workers, worker_hosts)):
                    set_maintenance(lab, h, w.worker_id, enable=i >= n)
                deadline = time.monotonic() + 10
                while live_workers(lab, clients[0], proxy_url) != n:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the proxy did not settle on {n} workers")
                    time.sleep(0.1)
                for mode in ("proxy", "p2p"):
                    results = run_clients(lab, clients, proxy_url, photo_path, mode, args.concurrency,
                                          args.duration)
                    row = {
                        "mode": mode,
                        "workers": n,
                        "per_second": round(sum(r["per_second"] for r in results), 2),
                        "ok": sum(r["ok"] for r in results),
                        "errors": sum(r["errors"] for r in results),
                        "p50_ms": round(max(r["p50_ms"] for r in results), 1),
                        "p99_ms": round(max(r["p99_ms"] for r in results), 1),
                        "mbit_per_s": round(sum(r["per_second"] for r in results) * len(photo) * 8 / 1e6, 1),
                    }
                    rows.append(row)
                    print(f"  {n} worker host(s)  {mode:5s}  {row['per_second']:6.2f} img/s  "
                          f"({row['mbit_per_s']} Mbit/s of photos)  p50 {row['p50_ms']} ms  errors {row['errors']}",
                          flush=True)
        finally:
            proxy.stop()
            for w in workers:
                w.stop()

    result = {"rate": args.rate, "photo_bytes": len(photo), "clients": args.clients,
              "concurrency_per_client": args.concurrency, "duration_s": args.duration, "rows": rows}
    (args.out / "bandwidth.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.rate, args.out / "bandwidth.png")
    print("\n| worker hosts | forward img/s | p2p img/s | p2p / forward |\n|---:|---:|---:|---:|")
    for n in args.workers:
        fwd = next(r for r in rows if r["workers"] == n and r["mode"] == "proxy")["per_second"]
        p2p = next(r for r in rows if r["workers"] == n and r["mode"] == "p2p")["per_second"]
        print(f"| {n} | {fwd:.2f} | {p2p:.2f} | {p2p / fwd:.2f} |")
    print(f"\nwrote {args.out / 'bandwidth.json'} and {args.out / 'bandwidth.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
