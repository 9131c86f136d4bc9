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


PLAIN_HTTP_400 = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 78\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"The plain HTTP request was sent to HTTPS port: use https:// for this address.\n"
)


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_plain_http_on_tls_port_gets_400_and_close(gateway, client, upstream):
    # As nginx answers it, in plain text, and the connection is closed.
    before = upstream.requests("/echo")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert read_to_eof(sock) == PLAIN_HTTP_400
    assert upstream.requests("/echo") == before  # nothing was forwarded
    assert client.get("/echo").status_code == 200


def test_plain_http_with_a_body_still_reads_its_400(gateway, upstream):
    # The body the gateway never wanted is read and dropped, so the kernel
    # does not reset the connection over unread bytes before the 400 is read.
    body = b"x" * 300_000
    before = upstream.requests("/echo", "POST")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert read_to_eof(sock) == PLAIN_HTTP_400
    assert upstream.requests("/echo", "POST") == before


def test_tls_hello_arriving_a_byte_at_a_time_still_handshakes(gateway, cert):
    # The look at the first byte must hand every byte on to TLS, however the
    # ClientHello is split.
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if first:
                    for i in range(min(8, len(pending))):
                        sock.sendall(pending[i:i + 1])
                    pending = pending[8:]
                    first = False
                sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "the gateway closed during the handshake"
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                  .encode())
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, f"closed before the response head: {answer!r}"
                incoming.write(data)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_tls_port_connection_that_sends_nothing_is_closed(make_gateway, upstream, cert):
    gw = make_gateway(upstreams=[upstream], timeouts={"header": 0.5},
                      server={"tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass  # closed, either way


def test_a_partial_tls_hello_then_silence_is_closed_after_the_header_timeout(
        make_gateway, upstream, cert):
    """The first byte of a handshake record, or most of a ClientHello, and
    then nothing: the handshake has the header timeout too (it had the event
    loop's 60 s, more than this socket's timeout)."""
    gw = make_gateway(upstreams=[upstream], timeouts={"header": 0.5},
                      server={"tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    for sent in (hello[:1], hello[:-1]):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(sent)
            try:
                assert sock.recv(65536) == b""
            except ConnectionResetError:
                pass  # closed, either way


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
