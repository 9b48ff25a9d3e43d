"""The client library: classify through the proxy, or look up a worker and post to it.

    async with Client("http://127.0.0.1:12480") as c:
        result = await c.classify("photo.jpg")                # p2p: lookup, then POST to the worker
        result = await c.classify(image_bytes, mode="proxy")  # forward through the proxy
        async for path, result in c.classify_many(paths):     # 8 at a time, answers in order
            ...

Several proxies: `Client(["http://a:12480", "http://b:12480"])`, or `Client(consul=
"127.0.0.1:8500")` to find the passing `classifier-proxy` instances in Consul; a proxy
that cannot be reached is skipped for the next one. No proxy at all: `Client(dns=
"127.0.0.1:8600")` looks workers up in Consul's DNS (SRV records of
`classifier.service.consul`) for p2p.

In p2p mode a connection failure or a 5xx from the worker means a fresh lookup and
another try (bounded by `retries`, with exponential backoff); addresses that just failed
are avoided for the rest of that request. When the proxy itself cannot be reached (it is
restarting), the client falls back to workers it has recently been served by, so p2p
traffic rides through a proxy restart. A 4xx is the caller's problem and raised at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp

from client.images import downscale

RETRYABLE_STATUS = {500, 502, 503, 504}
DEADLINE_HEADER = "X-Request-Timeout-Ms"  # the servers' name for it (edge/deadline.py; clients import no server)
TIMEOUT_S = 30.0  # each HTTP request's limit (aiohttp's total), unless the caller says otherwise
UNREACHABLE = (aiohttp.ClientConnectionError, asyncio.TimeoutError)


def parse_proxy_url(text: str) -> str:
    """A proxy's base URL: `http://` added when no scheme is given (as curl takes
    `127.0.0.1:12480`); ValueError for anything that is not an http(s) URL of a host, with
    a port if one is written."""
    given, text = text, text.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    try:
        parts.port  # noqa: B018 (ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.netloc.endswith(":") \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{given!r} is not a proxy URL (http://HOST:PORT)")
    return f"{parts.scheme}://{parts.netloc}"


class ClassifyError(Exception):
    def __init__(self, status: int, body: dict | str):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.code = error.get("code")
        self.body = body


class Client:
    def __init__(self, proxy_url: str | list[str] = "http://127.0.0.1:12480", *, retries: int = 6,
                 timeout_s: float = TIMEOUT_S, max_side: int | None = None, token: str | None = None,
                 session: aiohttp.ClientSession | None = None, consul: str | None = None,
                 dns: str | None = None, service: str = "classifier", proxy_service: str = "classifier-proxy",
                 deadline_s: float | None = None):
        urls = [proxy_url] if isinstance(proxy_url, str) else list(proxy_url)
        if retries < 0 or (max_side is not None and max_side < 0):
            raise ValueError(f"retries and max_side must be at least 0, not {retries} and {max_side}")
        self.proxies = Proxies([parse_proxy_url(u) for u in urls], consul, proxy_service)
        self.dns = WorkerDns(dns, service) if dns else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.max_side = max_side  # downscale bigger photos before sending (see client/images.py)
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Each classify's deadline, retries included: sent as X-Request-Timeout-Ms (the time
        # left), so the cluster refuses at once what it could only answer too late.
        self.deadline_s = deadline_s
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

    @property
    def known_workers(self) -> list[str]:
        """Workers that served this client recently (host:port), oldest first."""
        return list(self._known_workers)

    @property
    def proxy_url(self) -> str:
        """The proxy in use now."""
        return self.proxies.urls[self.proxies.current] if self.proxies.urls else ""

    async def lookup(self, model: str | None = None) -> str:
        """One live worker's host:port (serving `model`, when named): from Consul's DNS when
        configured, else from a proxy's GET / (the next proxy when one cannot be reached)."""
        if self.dns:
            return await self.dns.lookup(model)
        return await self.proxies.call(self._session, lambda url: self._lookup_at(url, model))

    async def _lookup_at(self, proxy_url: str, model: str | None) -> str:
        params = {"model": model} if model else {}
        async with self._session.get(proxy_url + "/", params=params, headers=self.headers) as r:
            if r.status != 200:
                raise ClassifyError(r.status, await _body(r))
            return (await r.text()).strip().split("/")[0]  # "host:port/?model=NAME" -> "host:port"

    async def classify(self, image: bytes | str | Path, *, mode: str = "p2p", k: int | None = None,
                       model: str | None = None) -> dict:
        """The `k` best classes of `image` (None: the server's default, 5 or fewer) from `model`
        (None: the cluster's default model)."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        if self.max_side:  # decoding a big photo takes tens of ms: keep it off the event loop
            data = await asyncio.to_thread(downscale, data, self.max_side)
        self.stats["requests"] += 1
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        if mode == "proxy":
            return await self._with_retries(
                lambda avoid: self.proxies.call(self._session, lambda url: self._post(url, data, k, model, deadline)),
                deadline)
        if mode == "p2p":
            return await self._with_retries(lambda avoid: self._p2p_once(data, k, model, avoid, deadline), deadline)
        raise ValueError(f"mode must be 'p2p' or 'proxy', not {mode!r}")

    async def classify_many(self, images: Iterable[bytes | str | Path], *, concurrency: int = 8,
                            **options) -> AsyncIterator[tuple[bytes | str | Path, dict | Exception]]:
        """classify(image, **options) for each image, `concurrency` at a time, yielding
        (image, result) in the order given; an image that failed (ClassifyError, or an
        OSError reading it) yields its exception instead, and the rest go on. One request
        at a time leaves a cluster idle while each waits out its round trip; a few at once
        keep its workers' batches full."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")

        async def outcome(image) -> dict | Exception:
            try:
                return await self.classify(image, **options)
            except UNREACHABLE:
                raise  # the cluster, not this image: every image would fail the same way
            except (ClassifyError, OSError) as exc:
                return exc

        window: deque[tuple[bytes | str | Path, asyncio.Task]] = deque()
        try:
            for image in images:
                window.append((image, asyncio.ensure_future(outcome(image))))
                if len(window) >= concurrency:
                    image, task = window.popleft()
                    yield image, await task
            while window:
                image, task = window.popleft()
                yield image, await task
        finally:  # the caller stopped early, or a request raised something else (the cluster unreachable)
            for _, task in window:
                task.cancel()

    async def _p2p_once(self, data: bytes, k: int | None, model: str | None, avoid: set[str],
                        deadline: float | None) -> dict:
        address = await self._worker_address(avoid, model)
        try:
            result = await self._post(f"http://{address}", data, k, model, deadline)
        except (aiohttp.ClientError, ClassifyError, asyncio.TimeoutError):
            avoid.add(address)
            self._known_workers.pop(address, None)
            raise
        self._known_workers.pop(address, None)
        self._known_workers[address] = None
        while len(self._known_workers) > 16:
            self._known_workers.pop(next(iter(self._known_workers)))
        return result

    async def _worker_address(self, avoid: set[str], model: str | None) -> str:
        """A fresh lookup; a just-failed address is asked about again (bounded); if the
        proxy is unreachable, a worker that served us recently."""
        try:
            address = await self.lookup(model)
            for _ in range(3):
                if address not in avoid:
                    break
                address = await self.lookup(model)
            return address
        except UNREACHABLE:
            fallback = [a for a in reversed(self._known_workers) if a not in avoid]
            if not fallback:
                raise
            return fallback[0]

    async def _with_retries(self, attempt, deadline: float | None = None) -> dict:
        avoid: set[str] = set()
        for n in range(self.retries + 1):
            last = n == self.retries or (deadline is not None and time.monotonic() >= deadline)
            try:
                return await attempt(avoid)
            except ClassifyError as exc:
                if exc.status not in RETRYABLE_STATUS or last:
                    raise
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError):
                if last:
                    raise
            self.stats["retries"] += 1
            await asyncio.sleep(min(0.05 * 2**n, 1.0))  # 0.05, 0.1, 0.2, ... up to 1 s
        raise AssertionError("unreachable")

    async def _post(self, url: str, data: bytes, k: int | None, model: str | None,
                    deadline: float | None = None) -> dict:
        form = aiohttp.FormData()
        form.add_field("data", data, filename="image", content_type="application/octet-stream")
        params = {**({"k": str(k)} if k else {}), **({"model": model} if model else {})}
        headers, options = self.headers, {}  # no `timeout` at all: the session's (None would mean none)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClassifyError(504, {"error": {"code": "timeout", "message": "the deadline passed before "
                                                                                 "an answer came"}})
            headers = {**headers, DEADLINE_HEADER: f"{left * 1000:.0f}"}
            options["timeout"] = aiohttp.ClientTimeout(total=min(left + 0.05, self.timeout.total or left + 0.05))
        async with self._session.post(url + "/", params=params, data=form, headers=headers, **options) as r:
            body = await _body(r)
            if r.status != 200:
                raise ClassifyError(r.status, body)
            return body


async def _body(r: aiohttp.ClientResponse):
    try:
        return await r.json(content_type=None)
    except ValueError:
        return await r.text()


class Proxies:
    """The proxies to use, in order; found in Consul when `consul` is given (refreshed at
    most every few seconds, and whenever none answers)."""

    def __init__(self, urls: list[str], consul: str | None, service: str, refresh_s: float = 5.0):
        self.urls = urls if not consul else []
        self.consul, self.service, self.refresh_s = consul, service, refresh_s
        self.current = 0
        self._fetched = 0.0

    async def call(self, session: aiohttp.ClientSession, attempt):
        """attempt(proxy_url) on the current proxy, then on the others when it cannot be reached."""
        await self._refresh(session)
        last: Exception | None = None
        for i in range(max(1, len(self.urls))):
            if not self.urls:
                break
            index = (self.current + i) % len(self.urls)
            try:
                result = await attempt(self.urls[index])
            except UNREACHABLE as exc:
                last = exc
                continue
            self.current = index
            return result
        self._fetched = 0.0  # none answered: ask Consul again next time
        raise last or aiohttp.ClientConnectionError("no proxy is known")

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        if not self.consul or time.monotonic() - self._fetched < self.refresh_s:
            return
        url = f"http://{self.consul}/v1/health/service/{self.service}?passing=1"
        try:
            async with session.get(url) as r:
                entries = await r.json()
        except (*UNREACHABLE, ValueError):
            return  # keep the last known proxies
        found = [f"http://{e['Service']['Address'] or e['Node']['Address']}:{e['Service']['Port']}" for e in entries]
        if found:
            self.urls, self._fetched = sorted(found), time.monotonic()
            self.current %= len(self.urls)


class WorkerDns:
    """Workers from Consul's DNS interface: SRV records of `<service>.service.consul`, or of
    `<model>.<service>.service.consul` for the workers serving a model (workers are tagged
    with their models), through dnspython (no proxy involved)."""

    def __init__(self, server: str, service: str):
        import dns.asyncresolver

        host, _, port = server.rpartition(":") if ":" in server else (server, "", "8600")
        self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.resolver.nameservers = [host]
        self.resolver.port = int(port)
        self.resolver.lifetime = 2.0
        self.name = f"{service}.service.consul"
        self._turn = itertools.count()

    async def lookup(self, model: str | None = None) -> str:
        """host:port of one healthy worker (serving `model`, when named; round-robin over the answer)."""
        import dns.exception

        name = f"{model}.{self.name}" if model else self.name
        try:
            answer = await self.resolver.resolve(name, "SRV", tcp=False)
        except dns.exception.DNSException as exc:
            raise aiohttp.ClientConnectionError(f"DNS lookup of {name} failed: {exc}") from None
        records = sorted(answer, key=lambda r: (r.priority, str(r.target), r.port))
        record = records[next(self._turn) % len(records)]
        addresses = {rr.name: rr[0].address for rr in answer.response.additional if rr.rdtype == 1}  # A records
        host = addresses.get(record.target) or (await self.resolver.resolve(record.target, "A"))[0].address
        return f"{host}:{record.port}"
