"""Input images by URL (issue 15): limits, the SSRF guard, content-addressed storage, once per URL.

The URLs point at a real loopback image server (``tests/imageserver.py``); nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanobatch.models.catalog import load_catalog
from nanobatch.tasks.inputs import Fetcher, FetchError, refused_address
from nanobatch.tasks.intake import IntakeOptions, read_file
from tests.imageserver import ImageServer, image_bytes


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


def fetcher(tmp_path: Path, **options: object) -> Fetcher:
    options.setdefault("allow_private", True)
    return Fetcher(tmp_path / "out", **options)  # type: ignore[arg-type]


def test_a_photo_is_stored_content_addressed_and_fetched_once(tmp_path: Path, images: ImageServer) -> None:
    f = fetcher(tmp_path)
    first = f.get(f"{images.url}/p/mug.jpg")
    again = f.get(f"{images.url}/p/mug.jpg")
    data = image_bytes("/p/mug.jpg")[0]
    digest = hashlib.sha256(data).hexdigest()
    assert first == again and first.sha256 == digest
    assert first.path == (tmp_path / "out" / "inputs" / f"{digest}.jpg").resolve()
    assert first.path.read_bytes() == data and images.hits["/p/mug.jpg"] == 1


def test_png_and_webp_keep_their_extension(tmp_path: Path, images: ImageServer) -> None:
    f = fetcher(tmp_path)
    assert f.get(f"{images.url}/a.png").path.suffix == ".png"
    assert f.get(f"{images.url}/a.webp").path.suffix == ".webp"


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/missing.jpg", "HTTP 404 Not Found"),
        ("/notimage.jpg", "not a readable image"),
        ("/bomb.png", "image has more than 40,000,000 pixels"),
        ("/huge.jpg", "larger than 20 MB"),
        ("/anim.gif", "image format GIF is not accepted (PNG, JPEG or WebP)"),
    ],
)
def test_each_unusable_url_says_why(tmp_path: Path, images: ImageServer, path: str, says: str) -> None:
    f = fetcher(tmp_path)
    with pytest.raises(FetchError, match=r"^" + says.replace("(", r"\(").replace(")", r"\)")):
        f.get(images.url + path)
    with pytest.raises(FetchError):  # the failure is remembered: no second download
        f.get(images.url + path)
    assert images.hits[path] == 1
    assert not (tmp_path / "out" / "inputs").exists()


def test_loopback_is_refused_by_name_and_by_address_unless_allowed(
    tmp_path: Path, images: ImageServer
) -> None:
    f = fetcher(tmp_path, allow_private=False)
    with pytest.raises(FetchError, match=r"127\.0\.0\.1 resolves to a loopback address .*ALLOW_PRIVATE_URLS"):
        f.get(f"{images.url}/a.jpg")
    with pytest.raises(FetchError, match=r"localhost resolves to a loopback address"):
        f.get(images.url.replace("127.0.0.1", "localhost") + "/a.jpg")
    assert sum(images.hits.values()) == 0


def test_a_redirect_is_followed_and_checked_again(tmp_path: Path, images: ImageServer) -> None:
    f = fetcher(tmp_path)
    found = f.get(f"{images.url}/redirect?to={images.url}/moved/photo.jpg")
    assert found.path.read_bytes() == image_bytes("/moved/photo.jpg")[0]
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with pytest.raises(FetchError, match=r"169\.254\.169\.254 resolves to a cloud metadata address .*always"):
        f.get(f"{images.url}/redirect?to={metadata}")


def test_a_slow_server_hits_the_time_limit(tmp_path: Path) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        f = fetcher(tmp_path, timeout=0.5)
        with pytest.raises(FetchError, match=r"took longer than 0.5 s"):
            f.get(f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg")
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private or reserved address"),
        ("172.16.0.1", "a private or reserved address"),
        ("192.168.1.1", "a private or reserved address"),
        ("100.64.0.1", "a private or reserved address"),
        ("169.254.10.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("0.0.0.0", "a private or reserved address"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_which_addresses_are_refused(address: str, why: str | None) -> None:
    assert refused_address(ipaddress.ip_address(address)) == why


def test_url_inputs_in_a_file_are_fetched_once_per_distinct_url(tmp_path: Path, images: ImageServer) -> None:
    rows = "".join(f"K{i},edit,{images.url}/shared.jpg\n" for i in range(20))
    path = tmp_path / "p.csv"
    path.write_text(f"key,prompt,input_images\n{rows}X,edit,{images.url}/missing.jpg\n")
    options = IntakeOptions(model="gemini-3-pro-image", inputs_dir=tmp_path / "out", allow_private_urls=True)
    result = read_file(path, load_catalog(), options)
    assert [str(e) for e in result.errors] == [
        f"line 22: input_images: {images.url}/missing.jpg: HTTP 404 Not Found"
    ]
    tasks = result.tasks  # the second pass: no new downloads
    assert len(tasks) == 20 and len({t.input_images for t in tasks}) == 1
    assert images.hits["/shared.jpg"] == 1 and images.hits["/missing.jpg"] == 1
    assert result.url_rows[f"{images.url}/shared.jpg"] == 20


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path, images: ImageServer
) -> None:
    """The connection goes to the address resolved and checked at submit (no second DNS lookup),
    while TLS still verifies the certificate against the URL's host name (SNI)."""
    import http.server
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    body = image_bytes("/tls.png")[0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        trusting = ssl.create_default_context(cafile=str(cert))
        assert fetcher(tmp_path, verify=trusting).get(f"https://localhost:{port}/tls.png").path.is_file()
        with pytest.raises(FetchError, match="cannot download: ConnectError"):  # cert is for localhost
            fetcher(tmp_path, verify=trusting).get(f"https://127.0.0.1:{port}/tls.png")
        with pytest.raises(FetchError, match="cannot download"):  # an untrusted certificate
            fetcher(tmp_path).get(f"https://localhost:{port}/tls.png")
    finally:
        server.shutdown()
        server.server_close()
