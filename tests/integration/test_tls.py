"""TLS termination: HTTPS in, plain HTTP to the upstream with
X-Forwarded-Proto: https.

A self-signed certificate for school.test and 127.0.0.1 is made per module
with the openssl CLI; clients verify against it as their CA, so the tests
check the served chain, not just that some TLS handshake happens (one curl
run uses -k as an operator would when trying it by hand).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.clients import HOST
from tests.support.pattern import pattern_sha256
from tests.support.procs import Gateway, Upstream, gateway_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST},DNS:*.{HOST},IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("tls-upstream"), "u1").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
            cert: tuple[Path, Path]) -> Iterator[Gateway]:
    config = gateway_config([upstream.addr],
                            server={"tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    gw = Gateway(config, tmp_path_factory.mktemp("tls-gateway"), name="gateway").start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: Gateway, cert: tuple[Path, Path]) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    with httpx.Client(base_url=f"https://127.0.0.1:{gateway.port}", verify=ctx,
                      headers={"Host": HOST}, timeout=10) as c:
        yield c


def _values(echo: dict, name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def test_https_request_reaches_upstream_marked_https(client):
    resp = client.get("/echo?over=tls")
    assert resp.status_code == 200
    assert resp.http_version == "HTTP/1.1"
    echo = resp.json()
    assert echo["target"] == "/echo?over=tls"
    assert _values(echo, "X-Forwarded-Proto") == ["https"]
    assert _values(echo, "Host") == [HOST]


def test_client_cannot_claim_another_proto(client):
    echo = client.get("/echo", headers={"X-Forwarded-Proto": "http"}).json()
    assert _values(echo, "X-Forwarded-Proto") == ["https"]


def test_keep_alive_and_large_bodies_over_tls(client):
    n = 3_000_000
    for _ in range(3):
        resp = client.get(f"/bytes?n={n}")
        assert resp.status_code == 200
        assert len(resp.content) == n
    upload = client.post("/upload", content=b"x" * n)
    assert upload.json()["length"] == n
    # The body pattern is position-dependent, so a reordered or dropped TLS
    # record would show in the digest.
    assert hashlib.sha256(resp.content).hexdigest() == pattern_sha256(n)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("trust", ["insecure", "cacert"])
def test_curl_over_https(gateway, cert, trust):
    url = f"https://{HOST}:{gateway.port}/echo"
    args = ["curl", "--silent", "--show-error", "--max-time", "10", "--http1.1",
            "--resolve", f"{HOST}:{gateway.port}:127.0.0.1", url]
    args += ["-k"] if trust == "insecure" else ["--cacert", str(cert[0])]
    out = subprocess.run(args, check=True, capture_output=True, timeout=20)
    echo = json.loads(out.stdout)
    assert _values(echo, "X-Forwarded-Proto") == ["https"]
    assert _values(echo, "Host") == [f"{HOST}:{gateway.port}"]


def test_alpn_selects_http11(gateway, cert):
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_on_tls_port_is_dropped(gateway, client):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    # Whatever comes back (a TLS alert at most) is not an HTTP response.
    assert not data.startswith(b"HTTP/")
    assert client.get("/echo").status_code == 200


def test_old_tls_versions_are_refused(gateway):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Offering a deprecated version is the point of this test.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            # Security level 0 lets this client offer TLS 1.1 at all, so that
            # a failure is the server's refusal rather than a local policy.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError) as refused:
        ctx.wrap_socket(raw, server_hostname=HOST)
    # Refused by the server: an alert, or (uvloop's TLS) a plain hang-up
    # mid-handshake; never this client failing to offer anything at all.
    err = refused.value
    assert isinstance(err, ssl.SSLEOFError) or "PROTOCOL_VERSION" in (err.reason or ""), err
