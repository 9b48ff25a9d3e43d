"""The suite's figures as text: the tables and ratios scripts/bench/suite.py prints, and
the docs site renders from a committed run (scripts/docs_hooks.py). Pure functions of the
run's JSON, standard library only."""

from __future__ import annotations


def table(ceiling_row: dict, rows: list[dict]) -> str:
    top = ceiling_row["per_second"]
    lines = [
        "| configuration | concurrency | img/s | of ceiling | p50 ms | p90 ms | p99 ms | RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| in-process ceiling ({ceiling_row['backend']}, batch {ceiling_row['batch_size']}) | - | {top:.1f} | 1.00 "
        "| - | - | - | - | - |",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['concurrency']} | {r['per_second']:.1f} | {r['per_second'] / top:.2f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['rss_mb']} | {r['errors']} |")
    return "\n".join(lines)


def noop_table(rows: list[dict]) -> str:
    lines = ["| no-op model, wrk | req/s | p50 ms | p90 ms | p99 ms | core-ms/req | faults/req | switches/req "
             "| non-2xx |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['per_second']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_ms_per_request']:.2f} | {r['faults_per_request']:.1f} | "
                     f"{r['switches_per_request']:.1f} | {r['non_2xx']} |")
    return "\n".join(lines)


def over_mosec(rows: list[dict], baseline: str = "mosec") -> str:
    """Our img/s over the `baseline` mosec's, per configuration and concurrency."""
    by = {(r["config"], r["concurrency"]): r["per_second"] for r in rows}
    parts = []
    for config in ("direct", "proxy", "p2p", "direct-raw", "proxy-raw"):
        parts += [f"{config} c={c}: {by[(config, c)] / by[(baseline, c)]:.2f}x"
                  for _, c in sorted(k for k in by if k[0] == baseline) if (config, c) in by]
    return "; ".join(parts)


def onnx_over_tflite(rows: list[dict], ceilings: dict) -> str:
    """ONNX Runtime's img/s over TFLite's on the same network: in process and through a worker."""
    by = {(r["config"], r["concurrency"]): r["per_second"] for r in rows}
    parts = [f"in process: {ceilings['onnx']['per_second'] / ceilings['tflite']['per_second']:.2f}"]
    parts += [f"worker c={c}: {by[('direct-onnx', c)] / by[('direct', c)]:.2f}"
              for _, c in sorted(k for k in by if k[0] == "direct-onnx") if ("direct", c) in by]
    return "; ".join(parts)


def preprocessing_cost(rows: list[dict]) -> str:
    """What the exact (default) preprocessing costs against OpenCV's approximation, per concurrency."""
    by = {(r["config"], r["concurrency"]): r["per_second"] for r in rows}
    return "; ".join(f"c={c}: {by[('direct', c)] / by[('direct-opencv', c)]:.2f}"
                     for _, c in sorted(k for k in by if k[0] == "direct-opencv"))


def open_loop_table(rows: list[dict]) -> str:
    """Open-loop rows: Poisson arrivals at shares of each configuration's closed-loop c=32
    img/s, latency from each request's scheduled time."""
    lines = ["| configuration | rate/s | of closed-loop c=32 | ok | errors | goodput/s (≤200 ms) | p50 ms | p90 ms | "
             "p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['rate']:.1f} | {r['share']:.0%} | {r['ok']} | {r['errors']} | "
                     f"{r['goodput']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines)
