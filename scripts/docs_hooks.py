"""mkdocs hooks: the parts of pages that are generated from code or committed data when
the site is built, so they cannot drift from what they describe.

A page asks for one with a marker line, `<!-- generated: NAME -->`:
- `readme`: the README (the site's front page is the repository's);
- `error-catalog`: every error code, from edge/error_codes.py;
- `suite-latest`: the latest committed suite run (docs/performance/runs/*.json) as tables;
- `suite-history`: one line per committed run.
An unknown name fails the build.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]

from machine import label  # noqa: E402  (scripts/bench)
from report import noop_table, open_loop_table, over_mosec, table  # noqa: E402  (scripts/bench)

from edge.error_codes import markdown_table  # noqa: E402

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)
RUNS = ROOT / "docs" / "performance" / "runs"


def runs() -> list[tuple[Path, dict]]:
    """The committed suite runs, oldest first."""
    loaded = [(path, json.loads(path.read_text())) for path in RUNS.glob("*.json")]
    return sorted(loaded, key=lambda run: run[1]["machine"]["date"])


def latest_run() -> str:
    path, run = runs()[-1]
    parts = [f"Measured on {label(run['machine'])}, with `{run['command']}` "
             f"({run['duration_s']:g} s a point; the photo {Path(run['photo']).name}, {run['photo_bytes']:,} bytes). "
             f"The raw figures: [{path.name}](runs/{path.name}).",
             table(run["ceiling"], run["rows"]),
             f"img/s over mosec's, the same model file, preprocessing and interpreter threads: {over_mosec(run['rows'])}."]
    if run.get("open_loop"):
        parts.append("Open loop: Poisson arrivals at shares of each configuration's closed-loop c=32 img/s, "
                     "every latency counted from the request's scheduled time.")
        parts.append(open_loop_table(run["open_loop"]))
    if run.get("noop_proxy_rate"):
        parts.append(noop_table(run["noop_proxy_rate"]))
    return "\n\n".join(parts)


def suite_history() -> str:
    lines = ["| measured | machine | ceiling img/s | worker c=32 | proxy c=32 | p2p c=32 | worker c=32 over mosec | run |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for path, run in reversed(runs()):
        by = {(r["config"], r["concurrency"]): r["per_second"] for r in run["rows"]}
        c = max(k for _, k in by)
        cells = [f"{by[name, c]:.1f}" if (name, c) in by else "-" for name in ("direct", "proxy", "p2p")]
        ratio = f"{by['direct', c] / by['mosec', c]:.2f}x" if ("mosec", c) in by else "-"
        m = run["machine"]
        lines.append(f"| {m['date']} | {m['cpu']}, {m['cores']} cores ({', '.join(m['features'])}) | "
                     f"{run['ceiling']['per_second']:.1f} | {' | '.join(cells)} | {ratio} | [{path.name}](runs/{path.name}) |")
    return "\n".join(lines)


def readme() -> str:
    """The README with its links into docs/ made relative to the site's root."""
    return re.sub(r"\]\(docs/", "](", (ROOT / "README.md").read_text())


GENERATORS = {"readme": readme, "error-catalog": markdown_table,
              "suite-latest": latest_run, "suite-history": suite_history}


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)
