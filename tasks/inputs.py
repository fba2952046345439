"""Input images given by URL: fetched once at submit, checked, and kept content-addressed for workers.

A shop export names its photos by ``https://`` URL. At submit each distinct URL is fetched once (per
intake run), with limits — size (:data:`MAX_BYTES`), time (:data:`TIMEOUT_SECONDS` for the whole
download), pixels (:data:`MAX_PIXELS`, against decompression bombs) and format (PNG, JPEG, WebP) —
and stored content-addressed as ``inputs/<sha256>.<ext>`` in the image store by :func:`put_input`
(docs/storage.md). The task row records where: a local path on the local backend (workers read a
file they can trust, exactly as for a local input image), the object's URI (``s3://…``) on an object
store, so workers on any host read it from there. Local input files are uploaded the same way at
submit when the store is an object store (:func:`put_input`, called by intake).

SSRF guard: the host is resolved here and every address must be public; the connection goes to
that checked address (no second DNS lookup an attacker could answer differently), TLS still
verifies the host name, and each redirect is checked the same way. Private, loopback, link-local,
CGNAT, multicast and reserved addresses are refused unless ``NANOBATCH_ALLOW_PRIVATE_URLS=true``
(tests and private networks); cloud metadata addresses are refused always.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from PIL import Image

from nanobatch.workers.storage import as_store
from nanobatch.workers.store import LocalStore, StorageError, Store

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; a 20 MB PNG can claim billions
TIMEOUT_SECONDS = 20.0
MAX_REDIRECTS = 5
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "abfss://")
OBJECT_STORE_MESSAGE = (
    "object-store URLs are not accepted as input images (give a local file or an https:// URL)"
)


class FetchError(ValueError):
    """The URL cannot be used as an input image; the message says why (shown per row)."""


@dataclass(frozen=True)
class FetchedInput:
    """A stored input image: ``ref`` is what the row records (a local path or the object's URI)."""

    ref: str
    sha256: str

    @property
    def path(self) -> Path:
        return Path(self.ref)


def is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))


def is_object_store(ref: str) -> bool:
    return ref.lower().startswith(OBJECT_STORE_SCHEMES)


CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def input_key(sha256: str, ext: str) -> str:
    return f"inputs/{sha256}.{ext}"


def put_input(store: Store | Path | str, data: bytes, ext: str) -> FetchedInput:
    """Store input bytes content-addressed, once: an existing object with that name has that content
    (its name is its SHA-256), so it is not written again (a conditional create where it races)."""
    store = as_store(store)
    digest = hashlib.sha256(data).hexdigest()
    key = input_key(digest, ext)
    if store.size(key) != len(data):
        with contextlib.suppress(FileExistsError):  # another submit stored the same content meanwhile
            store.put(key, data, CONTENT_TYPES.get(ext, "application/octet-stream"), create=True)
    ref = str(store.path(key)) if isinstance(store, LocalStore) else store.uri(key)
    return FetchedInput(ref, digest)


def check_image(data: bytes) -> str:
    """The stored extension for acceptable image bytes; :class:`FetchError` otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or ""
            if width * height > MAX_PIXELS:
                raise FetchError(f"image is {width}x{height} pixels, more than {MAX_PIXELS:,}")
            if fmt not in FORMATS:
                raise FetchError(f"image format {fmt or 'unknown'} is not accepted (PNG, JPEG or WebP)")
            image.verify()
    except FetchError:
        raise
    except Image.DecompressionBombError:
        raise FetchError(f"image has more than {MAX_PIXELS:,} pixels") from None
    except Exception:  # Pillow raises many unrelated types for non-images
        raise FetchError("not a readable image") from None
    return FORMATS[fmt]


#: Cloud instance-metadata endpoints: refused even with NANOBATCH_ALLOW_PRIVATE_URLS (no product photo
#: lives there, and they hand out credentials).
METADATA_ADDRESSES = {"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2"}


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a connection to ``address`` is refused by default (``None``: a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if str(address) in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private or not address.is_global:
        return "a private or reserved address"
    return None


class Fetcher:
    """Fetches URLs for one intake run, each distinct URL once (the result, or its error, is kept)."""

    def __init__(
        self,
        output_dir: Store | Path | str,
        *,
        allow_private: bool = False,
        store: bool = True,
        max_bytes: int = MAX_BYTES,
        timeout: float = TIMEOUT_SECONDS,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.output_dir = output_dir
        self.verify = verify
        self.allow_private = allow_private
        self.store = store
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._done: dict[str, FetchedInput | str] = {}
        self._client: httpx.Client | None = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def get(self, url: str) -> FetchedInput:
        """The stored input for ``url``; :class:`FetchError` (the same one on every call) if unusable."""
        if url not in self._done:
            try:
                self._done[url] = self._fetch(url)
            except FetchError as exc:
                self._done[url] = str(exc)
        found = self._done[url]
        if isinstance(found, str):
            raise FetchError(found)
        return found

    # -- the download --------------------------------------------------------------------------

    def _fetch(self, url: str) -> FetchedInput:
        deadline = time.monotonic() + self.timeout
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response_or_next = self._one(current, deadline)
            if isinstance(response_or_next, bytes):
                ext = check_image(response_or_next)
                if not self.store:
                    return FetchedInput(".", hashlib.sha256(response_or_next).hexdigest())
                try:
                    return put_input(self.output_dir, response_or_next, ext)
                except (OSError, StorageError) as exc:
                    raise FetchError(f"cannot store the image: {exc}") from None
            current = response_or_next
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _one(self, url: str, deadline: float) -> bytes | str:
        """The body of ``url``, or the URL it redirects to."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise FetchError("only http:// and https:// URLs are fetched")
        address = self._address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        host = f"[{address}]" if ":" in address else address
        netloc = f"{host}:{parts.port}" if parts.port else host
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/png,image/jpeg,image/webp"}
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"took longer than {self.timeout:g} s")
        try:
            with self.client.stream(
                "GET", pinned, headers=headers, extensions=extensions, timeout=remaining
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(f"HTTP {response.status_code} without a Location")
                    return urljoin(url, location)
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"larger than {self.max_bytes // (1024 * 1024)} MB")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FetchError(f"larger than {self.max_bytes // (1024 * 1024)} MB")
                    if time.monotonic() > deadline:
                        raise FetchError(f"took longer than {self.timeout:g} s")
                return bytes(body)
        except httpx.TimeoutException:
            raise FetchError(f"took longer than {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot download: {type(exc).__name__}: {exc}") from None

    def _address(self, hostname: str, port: int) -> str:
        try:
            literal = ipaddress.ip_address(hostname)
            candidates = [str(literal)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise FetchError(f"cannot resolve {hostname}: {exc}") from None
            candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for candidate in candidates:
            why = refused_address(ipaddress.ip_address(candidate.split("%", 1)[0]))
            if why == "a cloud metadata address":
                raise FetchError(f"{hostname} resolves to {why} ({candidate}); always refused")
            if why is not None and not self.allow_private:
                raise FetchError(
                    f"{hostname} resolves to {why} ({candidate}); refused "
                    "(NANOBATCH_ALLOW_PRIVATE_URLS=true allows it)"
                )
        return candidates[0]

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False, trust_env=False, verify=self.verify)
        return self._client
