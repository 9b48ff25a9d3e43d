"""The error catalog (edge/error_codes.py) is the one list of codes: every code the servers
raise is in it with the status they raise it with, and every code in it is raised."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge.error_codes import CATALOG, GRPC_STATUS, markdown_table

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SERVER_PACKAGES = ("edge", "worker", "proxy", "autoscaler")
# aiohttp raises these itself; edge/errors.py turns their reason into the code.
FROM_AIOHTTP = {"not_found": 404, "method_not_allowed": 405}


def raised_codes() -> dict[str, set[int]]:
    """code -> the statuses it is raised with, from every literal ApiError(status, code, ...),
    ErrorInfo(status, code, ...), retry_later(code, ...) and ImageError(code, ...)."""
    found: dict[str, set[int]] = {}
    for package in SERVER_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
                if name in ("ApiError", "ErrorInfo") and len(args) >= 2 and isinstance(args[1], str):
                    found.setdefault(args[1], set()).add(args[0])
                elif name == "retry_later" and args and isinstance(args[0], str):
                    status = next((k.value.value for k in node.keywords if k.arg == "status"), 503)
                    found.setdefault(args[0], set()).add(status)
                elif name == "ImageError" and args and isinstance(args[0], str):
                    found.setdefault(args[0], set()).add(413 if args[0] == "image_too_large" else 400)
    for code, status in FROM_AIOHTTP.items():
        found.setdefault(code, set()).add(status)
    found.setdefault("internal_error", set()).add(500)  # error_response's literal, edge/errors.py
    return found


def test_every_raised_code_is_catalogued_with_its_status():
    raised = raised_codes()
    assert len(raised) >= 25  # the scan found the servers' errors, not nothing
    wrong = {code: statuses for code, statuses in raised.items()
             if code not in CATALOG or statuses != {CATALOG[code].status}}
    assert wrong == {}


def test_every_catalogued_code_is_raised():
    assert set(CATALOG) - set(raised_codes()) == set()


def test_every_status_has_a_grpc_status_and_the_table_lists_every_code():
    assert {e.status for e in CATALOG.values()} - {500} <= set(GRPC_STATUS)
    table = markdown_table()
    assert all(f"`{code}`" in table for code in CATALOG)
    assert table.count("\n") == len(CATALOG) + 1
