"""Product images referenced by link (``http(s)://`` URLs), fetched as a well-behaved client.

Real exports (Flipkart, Amazon) give one or several image URLs per product. ``LinkFetcher`` downloads them with
bounded concurrency, connect / read timeouts and a deadline per download, retries with exponential backoff on
timeouts, connection failures and 5xx answers (never on 4xx: they will not change), a cap on redirects, on bytes
and on decoded pixels, a content-type and magic-byte check, and a polite ``User-Agent``.

Each image fetched is stored in ``UrlImageCache``: one file per URL (named by the URL's SHA-256) under
``$DEEPFUSION_CACHE/images/``, written to a temporary file and moved into place with ``os.replace``, so a run
killed mid-write leaves no half file behind. Every verb shares it, so a second run fetches nothing it already has;
the embedding cache (by content hash) works behind it unchanged.

Failures are *not* stored on disk: a link that failed (timeout, 404, DNS...) is tried again by the next run,
because the failure may be temporary and a stored verdict would hide a fixed link for good. Within one run, each
URL is fetched at most once, and a host whose name did not resolve (or that refused connections after the
retries) is not contacted again: offline, or with every link of a host dead, a run fails each link in
microseconds instead of waiting for each one.

Every link tried gets a ``LinkResult`` (url, product id, status, reason, bytes, milliseconds); ``links_report``
turns them into the ``links.csv`` table written beside a run's outputs.

``HostPolicy`` guards the HTTP service's ``image_url`` field against SSRF: only the allowlisted hosts, and never a
private, loopback, link-local or reserved address unless the allowlist names that host (or address) itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from . import __version__
from .backbones import default_cache_dir

if TYPE_CHECKING:  # pandas, tqdm and the catalog come with the train extra; the service's image_url needs neither
    import pandas as pd

log = logging.getLogger(__name__)

USER_AGENT = f"DeepFusion/{__version__} (+catalog categorization)"
LINK_COLUMNS = ["url", "id", "status", "reason", "detail", "bytes", "ms", "host"]
# Status of a link in the report: fetched now, found in the cache (on disk, or fetched earlier in this run for
# another product), or broken (``reason`` says why).
FETCHED, CACHED, BROKEN = "fetched", "cached", "broken"
# Reasons, short and stable so a report can be counted by them; ``detail`` holds the full message.
TIMEOUT, DNS, CONNECT, REDIRECTS, TOO_LARGE = "timeout", "DNS", "connection failed", "too many redirects", "too large"
NOT_IMAGE, UNDECODABLE, TOO_MANY_PIXELS = "not an image", "undecodable", "too many pixels"
TRUNCATED, BAD_URL, BLOCKED, NETWORK = "truncated", "bad URL", "blocked address", "network error"
# Content types a server may label an image with: image/*, plus the generic binary types some CDNs send (the
# magic bytes decide then). text/html (an error page served with 200) is refused before its body is read.
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream", "application/binary", "")
# The file formats accepted, by their first bytes, and the suffix the cached file gets.
MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
)
SUFFIXES = (".jpg", ".png", ".webp", ".gif", ".bmp")
MAX_IMAGE_PIXELS = 40_000_000  # catalog.MAX_IMAGE_PIXELS, without importing the catalog (and pandas)


def is_url(value: str) -> bool:
    """Whether an image reference is a link (``http://`` or ``https://``) rather than a file path."""
    return value.strip().lower().startswith(("http://", "https://"))


def image_suffix(data: bytes) -> str | None:
    """The file suffix of the image format ``data`` starts with (JPEG, PNG, WebP, GIF, BMP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in MAGIC if data.startswith(magic)), None)


@dataclass(frozen=True)
class LinkOptions:
    """How links are fetched. The defaults suit a public CDN: 16 downloads at once, 5 s to connect, 15 s between
    two reads and 60 s for a whole image, 2 retries (0.5 s then 1 s, with jitter), 5 redirects, 20 MB."""

    workers: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    retries: int = 2
    backoff: float = 0.5
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    max_pixels: int = MAX_IMAGE_PIXELS
    cache_dir: Path | None = None  # default: $DEEPFUSION_CACHE/images (~/.cache/deepfusion/images)
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        for name in ("workers", "max_redirects", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"link option {name} must be at least 1, got {getattr(self, name)}")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"link option {name} must be a positive number of seconds")
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("link options retries and backoff cannot be negative")

    @classmethod
    def with_timeout(cls, timeout: float | None = None, workers: int | None = None) -> LinkOptions:
        """The CLI's ``--link-timeout`` and ``--link-workers``: one timeout (seconds) bounds the connection, each
        read, and (four times over) a whole download."""
        options = cls()
        if timeout is not None:
            options = replace(options, connect_timeout=min(timeout, options.connect_timeout), read_timeout=timeout,
                              total_timeout=4 * timeout)
        if workers is not None:
            options = replace(options, workers=workers)
        return options


@dataclass
class LinkResult:
    """What happened to one link of one product. ``path`` is the cached image file when it worked."""

    url: str
    id: str
    status: str
    reason: str = ""
    detail: str = ""
    bytes: int = 0
    ms: float = 0.0
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status != BROKEN

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def row(self) -> dict[str, object]:
        return {"url": self.url, "id": self.id, "status": self.status, "reason": self.reason, "detail": self.detail,
                "bytes": self.bytes, "ms": round(self.ms, 1), "host": self.host}


def links_report(results: Iterable[LinkResult]) -> pd.DataFrame:
    """The link report (``links.csv``): one row per link tried, with ``LINK_COLUMNS``."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in results], columns=LINK_COLUMNS)


class UrlImageCache:
    """Fetched images on disk, one file per URL: ``<root>/<h[:2]>/<h><suffix>`` with h the URL's SHA-256."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "images"

    def _stem(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / digest[:2] / digest

    def get(self, url: str) -> Path | None:
        """The cached file of ``url``, or None."""
        stem = self._stem(url)
        for suffix in SUFFIXES:
            path = stem.with_suffix(suffix)
            if path.is_file():
                return path
        return None

    def put(self, url: str, data: bytes, suffix: str) -> Path:
        """Store ``data`` atomically: a killed run leaves either the whole file or none (and perhaps a temporary
        file, which no lookup ever reads)."""
        path = self._stem(url).with_suffix(suffix)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=suffix)
        except OSError as exc:
            raise UrlCacheError(self.root, exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise UrlCacheError(self.root, exc) from exc
            raise
        return path


class UrlCacheError(ValueError):
    """The URL cache cannot be written (a read-only or full disk): the user's to fix, so the message says how."""

    def __init__(self, root: Path, exc: OSError) -> None:
        super().__init__(f"Cannot write fetched images to the URL cache {root} ({exc}). Free some space, or point "
                         "DEEPFUSION_CACHE at a writable folder.")


class LinkError(Exception):
    """A link that gave no image: ``reason`` (one of the short reasons above) and ``detail`` (the message)."""

    def __init__(self, reason: str, detail: str, *, host_down: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.host_down = host_down  # no connection to the host at all (DNS, refused, connect timeout)


class _Retry(LinkError):
    """A failure worth another attempt (timeout, connection failure, 5xx)."""


class _Fail(LinkError):
    """A failure that another attempt would not change."""


def _is_dns_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    causes = [exc, exc.__cause__, exc.__context__]
    return any(isinstance(c, socket.gaierror) for c in causes) or any(
        phrase in text for phrase in ("name or service not known", "nodename nor servname", "name resolution",
                                      "no address associated", "getaddrinfo failed")
    )


class LinkFetcher:
    """Fetches image links into ``UrlImageCache``; thread-safe, so one fetcher serves a whole thread pool.

    ``request_hook`` is called with each request before it is sent, redirects included (the service's SSRF
    guard raises from it). Use as a context manager, or call ``close``.
    """

    def __init__(self, options: LinkOptions | None = None, *,
                 request_hook: Callable[[httpx.Request], None] | None = None) -> None:
        self.options = options or LinkOptions()
        self.cache = UrlImageCache(self.options.cache_dir)
        o = self.options
        hooks = {"request": [request_hook]} if request_hook else {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(o.read_timeout, connect=o.connect_timeout, pool=o.total_timeout),
            limits=httpx.Limits(max_connections=o.workers, max_keepalive_connections=o.workers),
            follow_redirects=True,
            max_redirects=o.max_redirects,
            headers={"User-Agent": o.user_agent, "Accept": "image/webp,image/png,image/jpeg,image/*;q=0.8"},
            event_hooks=hooks,
        )
        self.results: list[LinkResult] = []
        self.requests = 0  # HTTP attempts made, retries included
        self._lock = threading.Lock()
        self._url_locks: dict[str, threading.Lock] = {}
        self._done: dict[str, LinkResult] = {}  # url -> its result in this run
        self._dead_hosts: dict[str, LinkResult] = {}  # host -> the failure that condemned it for this run
        self._host_gates: dict[str, threading.Lock] = {}
        self._known_hosts: set[str] = set()  # hosts contacted once in this run (alive or dead)

    def __enter__(self) -> LinkFetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, product_id: str = "") -> LinkResult:
        """The image at ``url``: from the cache, from this run's earlier result, or downloaded now. The result is
        also appended to ``results`` (with ``product_id``) for the link report."""
        url = url.strip()
        with self._lock:
            url_lock = self._url_locks.setdefault(url, threading.Lock())
        with url_lock:  # two products with the same link: the second waits and reuses the first's result
            earlier = self._done.get(url)
            if earlier is not None:
                result = replace(earlier, id=product_id, ms=0.0,
                                 status=CACHED if earlier.ok else BROKEN)
            else:
                result = self._fetch_new(url, product_id)
                with self._lock:
                    self._done[url] = result
        with self._lock:
            self.results.append(result)
        return result

    def _fetch_new(self, url: str, product_id: str) -> LinkResult:
        cached = self.cache.get(url)
        if cached is not None:
            return LinkResult(url, product_id, CACHED, bytes=cached.stat().st_size, path=cached)
        host = urlsplit(url).hostname or ""
        with self._lock:
            gate = self._host_gates.setdefault(host, threading.Lock())
        if host not in self._known_hosts:
            # The first link to a host goes alone: if the host is dead (offline, no DNS), the links queued behind
            # it learn so without each trying for themselves.
            with gate:
                if host not in self._known_hosts:
                    result = self._attempt(url, product_id, host)
                    self._known_hosts.add(host)
                    return result
        return self._attempt(url, product_id, host)

    def _attempt(self, url: str, product_id: str, host: str) -> LinkResult:
        with self._lock:
            dead = self._dead_hosts.get(host)
        if dead is not None:
            return LinkResult(url, product_id, BROKEN, dead.reason,
                              f"{dead.detail} (host {host} already failed in this run; not contacted again)")
        started = time.perf_counter()
        try:
            data = self.get_bytes(url)
            suffix = self._verify(data)
            path = self.cache.put(url, data, suffix)
            ms = 1000 * (time.perf_counter() - started)
            return LinkResult(url, product_id, FETCHED, bytes=len(data), ms=ms, path=path)
        except LinkError as exc:
            failure = exc
        result = LinkResult(url, product_id, BROKEN, failure.reason, failure.detail,
                            ms=1000 * (time.perf_counter() - started))
        if failure.host_down and host:
            with self._lock:
                self._dead_hosts.setdefault(host, result)
        log.debug("link %s failed: %s", url, failure.detail)
        return result

    def get_bytes(self, url: str) -> bytes:
        """The body at ``url``, retried with backoff on timeouts, connection failures and 5xx, and checked to start
        like an image (magic bytes); no cache, no decoding. Raises ``LinkError``."""
        o = self.options
        started = time.perf_counter()
        failure: LinkError | None = None
        for attempt in range(o.retries + 1):
            if attempt:
                # Exponential backoff with jitter, so many workers retrying one host do not retry in step.
                time.sleep(o.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                data = self._download(url, started)
                if image_suffix(data) is None:
                    raise _Fail(NOT_IMAGE, f"the content is not JPEG, PNG, WebP, GIF or BMP (starts {data[:8]!r})")
                return data
            except _Retry as exc:
                failure = exc
                if exc.reason == DNS or time.perf_counter() - started > o.total_timeout:
                    break  # a name that does not resolve now will not in a second: fail fast offline
            except _Fail as exc:
                failure = exc
                break
        assert failure is not None
        raise failure

    def _download(self, url: str, started: float) -> bytes:
        o = self.options
        with self._lock:
            self.requests += 1
        try:
            with self.client.stream("GET", url) as response:
                status = response.status_code
                if status >= 500:
                    raise _Retry(f"HTTP {status}", f"server error {status} {response.reason_phrase}")
                if status >= 400:
                    raise _Fail(f"HTTP {status}", f"{status} {response.reason_phrase}")
                if status != 200:
                    raise _Fail(f"HTTP {status}", f"unexpected status {status} {response.reason_phrase}")
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not (ctype.startswith("image/") or ctype in GENERIC_TYPES):
                    raise _Fail(NOT_IMAGE, f"content type {ctype!r}, not an image")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > o.max_bytes:
                    raise _Fail(TOO_LARGE, f"{int(declared):,} bytes declared, over the limit of {o.max_bytes:,}")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > o.max_bytes:
                        raise _Fail(TOO_LARGE, f"over the limit of {o.max_bytes:,} bytes")
                    if time.perf_counter() - started > o.total_timeout:
                        # A server trickling bytes never trips the read timeout: the deadline bounds the whole.
                        raise _Retry(TIMEOUT, f"download not complete after {o.total_timeout:g} s")
                    chunks.append(chunk)
                data = b"".join(chunks)
                if declared.isdigit() and len(data) < int(declared):
                    raise _Retry(TRUNCATED, f"body ended after {len(data):,} of {int(declared):,} bytes")
                return data
        except (_Retry, _Fail):
            raise
        except httpx.TooManyRedirects as exc:
            raise _Fail(REDIRECTS, f"more than {o.max_redirects} redirects ({exc})") from None
        except httpx.ConnectTimeout as exc:
            # A host that drops packets (a firewall, no route): as dead as one that does not resolve.
            raise _Retry(TIMEOUT, f"no connection within {o.connect_timeout:g} s ({exc or 'timed out'})",
                         host_down=True) from None
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__
            raise _Retry(TIMEOUT, f"{kind}: no answer within the timeout ({exc or 'timed out'})") from None
        except httpx.ConnectError as exc:
            if _is_dns_error(exc):
                raise _Retry(DNS, f"host name not resolved ({exc})", host_down=True) from None
            raise _Retry(CONNECT, f"cannot connect ({exc})", host_down=True) from None
        except httpx.RemoteProtocolError as exc:
            raise _Retry(TRUNCATED, f"connection closed mid-answer ({exc})") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _Fail(BAD_URL, str(exc)) from None
        except BlockedHost as exc:
            raise _Fail(BLOCKED, str(exc)) from None
        except httpx.HTTPError as exc:
            raise _Retry(NETWORK, f"{type(exc).__name__}: {exc}") from None

    def _verify(self, data: bytes) -> str:
        """The cached file's suffix, once ``data`` is proven a decodable image within the pixel budget."""
        from .catalog import CHECK_DECODE_SIZE, ImageTooLarge, open_image_within_budget

        suffix = image_suffix(data) or ".jpg"
        try:
            open_image_within_budget(data, self.options.max_pixels, CHECK_DECODE_SIZE).close()
        except ImageTooLarge as exc:
            raise _Fail(TOO_MANY_PIXELS, str(exc)) from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on broken data
            raise _Fail(UNDECODABLE, f"{type(exc).__name__}: {exc}") from None
        return suffix

    def fetch_many(self, items: Sequence[tuple[str, str]], *, progress: bool = True,
                   desc: str = "fetching images") -> list[LinkResult]:
        """Fetch (url, product id) pairs with ``options.workers`` at once; results in the pairs' order."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.options.workers) as pool:
            futures = pool.map(lambda item: self.fetch(*item), items)
            return list(tqdm(futures, total=len(items), desc=desc, unit="link", disable=not progress, leave=False))

    def summary(self) -> str:
        counts = links_report(self.results)["status"].value_counts()
        return ", ".join(f"{n:,} {status}" for status, n in counts.items()) or "no link"


@dataclass
class LinkStats:
    """Counts of a link report for the EDA: by status and reason, the slowest hosts, a sample of broken links."""

    total: int
    by_status: dict[str, int]
    by_reason: dict[str, int]
    slowest_hosts: list[dict[str, object]] = field(default_factory=list)
    broken_sample: list[dict[str, object]] = field(default_factory=list)


def link_stats(report: pd.DataFrame, n_hosts: int = 5, n_broken: int = 10) -> LinkStats:
    broken = report[report["status"] == BROKEN]
    timed = report[report["status"] != CACHED]  # a cache hit says nothing of the host's speed
    hosts = (timed.groupby("host")["ms"].agg(["count", "median", "max"]).sort_values("median", ascending=False)
             .head(n_hosts).reset_index()) if len(timed) else pd.DataFrame(columns=["host", "count", "median", "max"])
    return LinkStats(
        total=len(report),
        by_status={str(k): int(v) for k, v in report["status"].value_counts().items()},
        by_reason={str(k): int(v) for k, v in broken["reason"].value_counts().items()},
        slowest_hosts=[{"host": str(r.host), "links": int(r.count), "median_ms": round(float(r.median), 1),
                        "max_ms": round(float(r.max), 1)} for r in hosts.itertuples()],
        broken_sample=broken.drop_duplicates("url").head(n_broken)[["url", "id", "reason", "detail"]]
        .to_dict("records"),
    )


# ----------------------------------------------------------------------------------------- the service's guard
class BlockedHost(httpx.HTTPError):
    """A link the service refuses to fetch (host not allowlisted, or a private address); 422 to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
                                 or ip.is_multicast or ip.is_unspecified)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts the service may fetch ``image_url`` from: exactly the names (or addresses) in ``allow``
    (lower case; ``*.example.com`` allows its subdomains). A host that resolves to a private, loopback,
    link-local or reserved address is refused unless ``allow`` names that address (``10.1.2.3``) or its network
    (``10.0.0.0/8``): an allowlisted name is not enough, since its DNS answers may change; every redirect hop is
    checked again. The check resolves the name just before the request; a DNS answer that changes in
    between (rebinding) is not caught, so keep the allowlist to hosts you trust."""

    allow: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | Sequence[str]) -> HostPolicy:
        items = text.split(",") if isinstance(text, str) else list(text)
        hosts = tuple(h.strip().lower().rstrip(".") for h in items if h.strip())
        if not hosts:
            raise ValueError("the image_url allowlist is empty: name the hosts images may be fetched from")
        return cls(hosts)

    def _named(self, host: str) -> bool:
        return any(host == a or (a.startswith("*.") and host.endswith(a[1:])) for a in self.allow)

    def _address_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        for entry in self.allow:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                continue  # a host name, not an address or network
        return False

    def check(self, url: str) -> None:
        """Raise ``BlockedHost`` unless ``url`` may be fetched."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise BlockedHost(f"only http and https links are fetched, not {parts.scheme or 'a bare path'!r}")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise BlockedHost("the link has no host")
        if not self._named(host) and not (_is_address(host) and self._address_allowed(host)):
            raise BlockedHost(f"host {host!r} is not in the image_url allowlist")
        if _is_address(host):
            addresses = [host.strip("[]")]
        else:
            try:
                infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                           type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return  # unresolvable: the fetch itself fails with DNS, and nothing private is reached
            addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            if not _address_is_public(address) and not self._address_allowed(address):
                raise BlockedHost(f"host {host!r} resolves to the non-public address {address}; name that "
                                  "address (or its network) in the allowlist to allow it")

    def hook(self, request: httpx.Request) -> None:
        """``LinkFetcher``'s request hook: every request, redirects included, passes ``check``."""
        self.check(str(request.url))


class ServiceLinks:
    """The HTTP service's ``image_url``: links fetched only from ``hosts`` (``HostPolicy``), each within
    ``max_bytes`` and short timeouts (a request waits on them), nothing stored on disk (the service's embedding
    cache, by content, makes a repeated image cheap)."""

    def __init__(self, hosts: str | Sequence[str], max_bytes: int) -> None:
        self.policy = HostPolicy.parse(hosts)
        options = LinkOptions(workers=8, connect_timeout=3.0, read_timeout=5.0, total_timeout=10.0, retries=1,
                              backoff=0.2, max_bytes=max_bytes)
        self.fetcher = LinkFetcher(options, request_hook=self.policy.hook)

    def fetch(self, url: str) -> bytes:
        """The image bytes at ``url``; raises ``LinkError`` (reason ``blocked address`` for a refused host)."""
        try:
            self.policy.check(url)
        except BlockedHost as exc:
            raise LinkError(BLOCKED, str(exc)) from None
        return self.fetcher.get_bytes(url)

    def close(self) -> None:
        self.fetcher.close()
