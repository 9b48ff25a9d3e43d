"""The client library: classify through the proxy, or look up a worker and post to it.

    async with Client("http://127.0.0.1:12480") as c:
        result = await c.classify("photo.jpg")                # p2p: lookup, then POST to the worker
        result = await c.classify(image_bytes, mode="proxy")  # forward through the proxy

In p2p mode a connection failure or a 5xx from the worker means a fresh lookup and
another try (bounded by `retries`, with exponential backoff); addresses that just failed
are avoided for the rest of that request. When the proxy itself cannot be reached (it is
restarting), the client falls back to workers it has recently been served by, so p2p
traffic rides through a proxy restart. A 4xx is the caller's problem and raised at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from client.images import downscale

RETRYABLE_STATUS = {500, 502, 503, 504}


class ClassifyError(Exception):
    def __init__(self, status: int, body: dict | str):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.code = error.get("code")
        self.body = body


class Client:
    def __init__(self, proxy_url: str = "http://127.0.0.1:12480", *, retries: int = 6,
                 timeout_s: float = 30.0, max_side: int | None = None, token: str | None = None,
                 session: aiohttp.ClientSession | None = None):
        self.proxy_url = proxy_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.max_side = max_side  # downscale bigger photos before sending (see client/images.py)
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None
        self.stats = {"requests": 0, "retries": 0}
        self._known_workers: dict[str, None] = {}  # recently served us, newest last (an ordered set)

    async def __aenter__(self) -> "Client":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_session and self._session:
            await self._session.close()

    async def lookup(self) -> str:
        """One live worker's host:port, from the proxy's GET /."""
        async with self._session.get(self.proxy_url + "/", headers=self.headers) as r:
            if r.status != 200:
                raise ClassifyError(r.status, await _body(r))
            return (await r.text()).strip()

    async def classify(self, image: bytes | str | Path, *, mode: str = "p2p", k: int = 5) -> dict:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if self.max_side:  # decoding a big photo takes tens of ms: keep it off the event loop
            data = await asyncio.to_thread(downscale, data, self.max_side)
        self.stats["requests"] += 1
        if mode == "proxy":
            return await self._with_retries(lambda avoid: self._post(self.proxy_url, data, k))
        if mode == "p2p":
            return await self._with_retries(lambda avoid: self._p2p_once(data, k, avoid))
        raise ValueError(f"mode must be 'p2p' or 'proxy', not {mode!r}")

    async def _p2p_once(self, data: bytes, k: int, avoid: set[str]) -> dict:
        address = await self._worker_address(avoid)
        try:
            result = await self._post(f"http://{address}", data, k)
        except (aiohttp.ClientError, ClassifyError, asyncio.TimeoutError):
            avoid.add(address)
            self._known_workers.pop(address, None)
            raise
        self._known_workers.pop(address, None)
        self._known_workers[address] = None
        while len(self._known_workers) > 16:
            self._known_workers.pop(next(iter(self._known_workers)))
        return result

    async def _worker_address(self, avoid: set[str]) -> str:
        """A fresh lookup; a just-failed address is asked about again (bounded); if the
        proxy is unreachable, a worker that served us recently."""
        try:
            address = await self.lookup()
            for _ in range(3):
                if address not in avoid:
                    break
                address = await self.lookup()
            return address
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            fallback = [a for a in reversed(self._known_workers) if a not in avoid]
            if not fallback:
                raise
            return fallback[0]

    async def _with_retries(self, attempt) -> dict:
        avoid: set[str] = set()
        for n in range(self.retries + 1):
            try:
                return await attempt(avoid)
            except ClassifyError as exc:
                if exc.status not in RETRYABLE_STATUS or n == self.retries:
                    raise
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError):
                if n == self.retries:
                    raise
            self.stats["retries"] += 1
            await asyncio.sleep(min(0.05 * 2**n, 1.0))  # 0.05, 0.1, 0.2, ... up to 1 s
        raise AssertionError("unreachable")

    async def _post(self, url: str, data: bytes, k: int) -> dict:
        form = aiohttp.FormData()
        form.add_field("data", data, filename="image", content_type="application/octet-stream")
        async with self._session.post(url + "/", params={"k": str(k)}, data=form, headers=self.headers) as r:
            body = await _body(r)
            if r.status != 200:
                raise ClassifyError(r.status, body)
            return body


async def _body(r: aiohttp.ClientResponse):
    try:
        return await r.json(content_type=None)
    except ValueError:
        return await r.text()
