"""Request/response head processing: every case runs against the native module
and the plain-Python reference, and hypothesis checks the two agree."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# gateway.http re-exports the native parsing and serialization modules.
import gateway.http as native
from tests.oracles import http as reference

IMPLS = [pytest.param(native, id="native"), pytest.param(reference, id="reference")]


@pytest.fixture(params=IMPLS)
def m(request):
    return request.param


BROWSER = [
    (b"Host", b"portal.school.example"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Connection", b"keep-alive"),
    (b"Cookie", b"session=4f9a1c2e; lang=de"),
    (b"Upgrade-Insecure-Requests", b"1"),
    (b"Sec-Fetch-Dest", b"document"),
    (b"Sec-Fetch-Mode", b"navigate"),
]


def req(m, headers, *, method=b"GET", target=b"/", version="1.1", reject=False):
    return m.parse_request_head(method, target, version, headers, reject)


def refused(m, headers, status, **kw):
    with pytest.raises(m.HeadError) as info:
        req(m, headers, **kw)
    assert info.value.status == status
    assert info.value.reason
    return info.value.reason


def resp(m, headers, *, status=200, reason=b"OK", version="1.1"):
    return m.parse_response_head(status, reason, version, headers)


def resp_refused(m, headers, **kw):
    with pytest.raises(m.HeadError) as info:
        resp(m, headers, **kw)
    assert info.value.status == 502
    return info.value.reason


# --- request validation -------------------------------------------------------

@pytest.mark.parametrize("version", ["2.0", "0.9", "1.2", ""])
def test_unsupported_version_is_505(m, version):
    assert "version" in refused(m, [(b"Host", b"a")], 505, version=version)


def test_browser_request(m):
    head = req(m, BROWSER)
    assert head.method == b"GET" and head.target == b"/" and head.path == b"/"
    assert head.version == 11 and head.host == b"portal.school.example"
    assert head.content_length == -1 and not head.chunked and head.keep_alive
    assert head.upgrade is None and not head.expect_continue and head.idempotent
    assert head.headers == [h for h in BROWSER if h[0] != b"Connection"]
    assert head.xff is None and head.via is None


@pytest.mark.parametrize(("headers", "reason"), [
    ([], "missing"),
    ([(b"Host", b"a"), (b"host", b"a")], "multiple"),
    ([(b"Host", b"")], "empty"),
    ([(b"Host", b"  \t")], "empty"),
])
def test_host_presence(m, headers, reason):
    assert reason in refused(m, headers, 400)


@pytest.mark.parametrize("host", [
    b"a b", b"user@school.example", b"school.example/x", b"school.example:80x",
    b"school.example:80:81", b"[::1", b"[]", b"[::g]", b"[::1]x", b"[::1]:8o", b":80",
    b".", b"sch\xc3\xb6l.example", b"a\"b",
])
def test_invalid_host_is_400(m, host):
    assert "Host" in refused(m, [(b"Host", host)], 400)


@pytest.mark.parametrize(("value", "key"), [
    (b"School.Example", b"school.example"),
    (b"school.example.", b"school.example"),
    (b"school.example.:8443", b"school.example"),
    (b"school.example:", b"school.example"),
    (b"  school.example:80 ", b"school.example"),
    (b"10.0.0.1:80", b"10.0.0.1"),
    (b"[::1]:8080", b"[::1]"),
    (b"[::1]", b"[::1]"),
    (b"[FE80::1]:443", b"[fe80::1]"),
    (b"[::ffff:10.0.0.1]", b"[::ffff:10.0.0.1]"),
])
def test_host_normalisation(m, value, key):
    head = req(m, [(b"Host", value)])
    assert head.host == key
    assert head.host_header == value.strip()


@pytest.mark.parametrize(("method", "target", "path"), [
    (b"GET", b"/a/b?x=1", b"/a/b"),
    (b"GET", b"/a?", b"/a"),
    (b"GET", b"/?x=http://e/f", b"/"),
    (b"GET", b"//x/y", b"//x/y"),
    (b"GET", b"http://e", b"/"),
    (b"GET", b"HTTPS://e?x=/y", b"/"),
    (b"GET", b"http://e:81/", b"/"),
    (b"OPTIONS", b"*", b"*"),
    (b"CONNECT", b"school.example:443", b""),
])
def test_path(m, method, target, path):
    assert req(m, [(b"Host", b"a")], method=method, target=target).path == path


# --- request targets (RFC 9112 3.2) ------------------------------------------------
# The example: routed and admitted by Host, forwarded with the target's
# host, so another school's site answered on this school's account.

def test_absolute_form_is_routed_and_forwarded_by_its_authority(m):
    headers = [(b"Host", b"alpha.test"), (b"Accept", b"*/*")]
    head = req(m, headers, target=b"http://beta.test/secret?x=1")
    assert head.host == b"beta.test"
    assert head.host_header == b"beta.test"
    assert head.target == b"/secret?x=1"
    assert head.path == b"/secret"
    # The received Host is ignored (RFC 9112 3.2.2): the head has one Host.
    assert head.headers == [(b"Host", b"beta.test"), (b"Accept", b"*/*")]
    assert head.header(b"host") == b"beta.test"
    wire = m.serialize_request_head(head, b"192.0.2.1", b"http", b"sg")
    assert wire == (b"GET /secret?x=1 HTTP/1.1\r\nHost: beta.test\r\nAccept: */*\r\n"
                    b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
                    b"X-Forwarded-Host: beta.test\r\nVia: 1.1 sg\r\n\r\n")
    assert b"alpha" not in wire


@pytest.mark.parametrize(("method", "target", "host", "host_header", "forward"), [
    # Empty path: "/" (RFC 9112 3.2.1), the query kept.
    (b"GET", b"http://beta.test", b"beta.test", b"beta.test", b"/"),
    (b"GET", b"http://beta.test?x", b"beta.test", b"beta.test", b"/?x"),
    (b"GET", b"https://beta.test/", b"beta.test", b"beta.test", b"/"),
    # Scheme and host are case-insensitive; the authority is forwarded as sent.
    (b"GET", b"HTTP://Beta.Test/a", b"beta.test", b"Beta.Test", b"/a"),
    # A port stays in Host (the upstream may route by it), not in the key.
    (b"GET", b"http://beta.test:8080/a?b=c", b"beta.test", b"beta.test:8080", b"/a?b=c"),
    (b"GET", b"http://beta.test.:80/", b"beta.test", b"beta.test.:80", b"/"),
    (b"GET", b"http://beta.test:/a", b"beta.test", b"beta.test:", b"/a"),
    # IPv6 literals keep their brackets.
    (b"GET", b"http://[::1]:8080/a", b"[::1]", b"[::1]:8080", b"/a"),
    (b"GET", b"http://[FE80::1]/", b"[fe80::1]", b"[FE80::1]", b"/"),
    (b"POST", b"http://10.0.0.1/up", b"10.0.0.1", b"10.0.0.1", b"/up"),
    # OPTIONS for the server as a whole (RFC 9112 3.2.4).
    (b"OPTIONS", b"http://beta.test", b"beta.test", b"beta.test", b"*"),
    (b"OPTIONS", b"http://beta.test?x", b"beta.test", b"beta.test", b"/?x"),
    (b"OPTIONS", b"http://beta.test/a", b"beta.test", b"beta.test", b"/a"),
    (b"OPTIONS", b"*", b"alpha.test", b"alpha.test", b"*"),
    # CONNECT: the authority is the target; nothing else is rewritten.
    (b"CONNECT", b"beta.test:443", b"beta.test", b"beta.test:443", b"beta.test:443"),
    (b"CONNECT", b"[::1]:443", b"[::1]", b"[::1]:443", b"[::1]:443"),
])
def test_request_target_forms(m, method, target, host, host_header, forward):
    head = req(m, [(b"Host", b"alpha.test")], method=method, target=target)
    assert (head.host, head.host_header, head.target) == (host, host_header, forward)
    assert head.headers == [(b"Host", host_header)]
    wire = m.serialize_request_head(head, b"1", b"http", b"sg")
    assert wire.startswith(method + b" " + forward + b" HTTP/1.1\r\nHost: " + host_header + b"\r\n")
    assert b"X-Forwarded-Host: " + host_header + b"\r\n" in wire


@pytest.mark.parametrize(("method", "target", "reason"), [
    (b"GET", b"ftp://beta.test/", "scheme"),
    (b"GET", b"ws://beta.test/", "scheme"),
    (b"GET", b"http://user@beta.test/", "userinfo"),
    (b"GET", b"http://user:pw@beta.test/", "userinfo"),
    (b"GET", b"http://@beta.test/", "userinfo"),
    (b"GET", b"http:///x", "empty authority"),
    (b"GET", b"http://", "empty authority"),
    (b"GET", b"http://?x", "empty authority"),
    (b"GET", b"http://beta.test:8o/", "authority"),
    (b"GET", b"http://[::1/", "authority"),
    (b"GET", b"http://be ta/", "authority"),
    (b"GET", b"http:beta.test/", "target"),
    (b"GET", b"1http://beta.test/", "target"),
    (b"GET", b"beta.test/x", "target"),
    (b"GET", b"", "target"),
    (b"GET", b"/a#frag", "fragment"),
    (b"GET", b"http://beta.test/a#frag", "fragment"),
    (b"GET", b"*", "OPTIONS"),
    (b"POST", b"*", "OPTIONS"),
    (b"GET", b"beta.test:443", "target"),
    (b"CONNECT", b"/", "authority-form"),
    (b"CONNECT", b"*", "OPTIONS"),
    (b"CONNECT", b"http://beta.test:443/", "CONNECT"),
    (b"CONNECT", b"beta.test", "CONNECT"),
    (b"CONNECT", b"beta.test:", "CONNECT"),
    (b"CONNECT", b"[::1]", "CONNECT"),
    (b"CONNECT", b"user@beta.test:443", "CONNECT"),
])
def test_bad_request_targets_are_400(m, method, target, reason):
    assert reason in refused(m, [(b"Host", b"alpha.test")], 400, method=method, target=target)


def test_absolute_form_still_needs_one_valid_host_on_http11(m):
    # RFC 9112 3.2: the received Host is ignored, but a request without one,
    # with two or with a malformed one is refused all the same.
    target = b"http://beta.test/"
    assert "missing" in refused(m, [], 400, target=target)
    assert "multiple" in refused(m, [(b"Host", b"a"), (b"Host", b"b")], 400, target=target)
    assert "Host" in refused(m, [(b"Host", b"a b")], 400, target=target)


def test_http10_absolute_form_without_host_gets_one(m):
    head = req(m, [(b"Accept", b"*/*")], target=b"http://beta.test/x", version="1.0")
    assert head.host == b"beta.test"
    assert head.headers == [(b"Host", b"beta.test"), (b"Accept", b"*/*")]
    assert head.header(b"host") == b"beta.test"
    # An origin-form 1.0 request still has to name its host.
    assert "missing" in refused(m, [], 400, version="1.0")


def test_host_name_keeps_its_case_and_position(m):
    headers = [(b"Accept", b"*/*"), (b"hOST", b"alpha.test"), (b"X-Tag", b"1")]
    head = req(m, headers, target=b"http://beta.test/")
    assert head.headers == [(b"Accept", b"*/*"), (b"hOST", b"beta.test"), (b"X-Tag", b"1")]


@pytest.mark.parametrize("headers", [
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
    [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
])
def test_te_with_cl_is_400(m, headers):
    assert "Content-Length" in refused(m, [(b"Host", b"a"), *headers], 400)


@pytest.mark.parametrize("te", [
    [b"gzip"], [b"gzip, chunked"], [b"chunked, chunked"], [b"chunked", b"chunked"],
    [b"identity"], [b""],
])
def test_unsupported_transfer_encoding_is_400(m, te):
    headers = [(b"Host", b"a")] + [(b"Transfer-Encoding", v) for v in te]
    assert "Transfer-Encoding" in refused(m, headers, 400)


def test_transfer_encoding_on_http10_is_400(m):
    headers = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    assert "HTTP/1.0" in refused(m, headers, 400, version="1.0")


def test_chunked_is_case_and_space_insensitive(m):
    head = req(m, [(b"Host", b"a"), (b"transfer-encoding", b" Chunked \t")])
    assert head.chunked and head.content_length == -1
    assert all(n.lower() != b"transfer-encoding" for n, _ in head.headers)


@pytest.mark.parametrize("value", [b"", b"abc", b"+5", b"-1", b"5 5", b"0x10", b"5,5", b"1.0"])
def test_invalid_content_length_is_400(m, value):
    assert "Content-Length" in refused(m, [(b"Host", b"a"), (b"Content-Length", value)], 400)


@pytest.mark.parametrize("value", [b"9" * 30, b"18446744073709551617", b"46116860184273879030",
                                   b"4611686018427387904"])
def test_huge_content_length_is_400(m, value):
    headers = [(b"Host", b"a"), (b"Content-Length", value)]
    assert "too large" in refused(m, headers, 400)


def test_largest_content_length(m):
    value = b"00" + str(2**62 - 1).encode()
    assert req(m, [(b"Host", b"a"), (b"Content-Length", value)]).content_length == 2**62 - 1


def test_conflicting_content_length_is_400(m):
    headers = [(b"Host", b"a"), (b"Content-Length", b"5"), (b"content-length", b"6")]
    assert "conflicting" in refused(m, headers, 400)


def test_identical_content_lengths_collapse(m):
    headers = [(b"Host", b"a"), (b"Content-Length", b"5"), (b"X", b"1"),
               (b"content-length", b" 5"), (b"Content-Length", b"005")]
    head = req(m, headers)
    assert head.content_length == 5
    assert head.headers == [(b"Host", b"a"), (b"Content-Length", b"5"), (b"X", b"1")]


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"\r\n"])
def test_control_bytes_in_values_are_400(m, value):
    assert "value" in refused(m, [(b"Host", b"a"), (b"X-Note", value)], 400)


@pytest.mark.parametrize("name", [b"", b"X Note", b"X:Note", b"X(Note)", b"X\x00", b"X\xc3\xa4",
                                  b"X/Y", b"Host "])
def test_bad_header_names_are_400(m, name):
    assert "name" in refused(m, [(b"Host", b"a"), (name, b"1")], 400)


def test_underscore_names_dropped_but_still_visible_to_header(m):
    head = req(m, [(b"Host", b"a"), (b"X_User", b"admin"), (b"X-User", b"me")])
    assert head.headers == [(b"Host", b"a"), (b"X-User", b"me")]
    assert head.header(b"x_user") == b"admin"


def test_underscore_names_rejected_on_request(m):
    headers = [(b"Host", b"a"), (b"X_User", b"admin")]
    assert "underscore" in refused(m, headers, 400, reject=True)


@pytest.mark.parametrize("value", [b"fancy", b"100-continue, fancy", b""])
def test_unknown_expectation_is_417(m, value):
    refused(m, [(b"Host", b"a"), (b"Expect", value)], 417)


def test_malformed_head_beats_expectation_failure(m):
    refused(m, [(b"Expect", b"fancy")], 400)


def test_expect_continue(m):
    headers = [(b"Host", b"a"), (b"Expect", b" 100-Continue"), (b"Content-Length", b"3")]
    head = req(m, headers)
    assert head.expect_continue
    assert all(n != b"Expect" for n, _ in head.headers)
    # RFC 9110 10.1.1: a 100-continue from an HTTP/1.0 client is ignored.
    assert not req(m, headers, version="1.0").expect_continue


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    ("1.1", [], True),
    ("1.1", [b"close"], False),
    ("1.1", [b"Keep-Alive, Close"], False),
    ("1.1", [b"keep-alive", b"CLOSE"], False),
    ("1.0", [], False),
    ("1.0", [b"Keep-Alive"], True),
    ("1.0", [b"keep-alive, close"], False),
])
def test_keep_alive(m, version, connection, keep_alive):
    headers = [(b"Host", b"a")] + [(b"Connection", v) for v in connection]
    assert req(m, headers, version=version).keep_alive is keep_alive


def test_upgrade_needs_connection_token(m):
    up = [(b"Host", b"a"), (b"Upgrade", b"WebSocket ")]
    assert req(m, up).upgrade is None
    head = req(m, [*up, (b"Connection", b"keep-alive, Upgrade")])
    assert head.upgrade == b"websocket"
    assert head.headers == [(b"Host", b"a")]
    assert req(m, [*up, (b"Connection", b"upgrade")], version="1.0").upgrade is None


def test_h2c_upgrade_is_not_an_upgrade(m):
    head = req(m, [(b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                   (b"Upgrade", b"H2C"), (b"HTTP2-Settings", b"AAMAAABk")])
    assert head.upgrade is None
    assert head.headers == [(b"Host", b"a")]


@pytest.mark.parametrize(("method", "idempotent"), [
    (b"GET", True), (b"HEAD", True), (b"OPTIONS", True), (b"TRACE", True), (b"PUT", True),
    (b"DELETE", True), (b"POST", False), (b"PATCH", False), (b"get", False), (b"CONNECT", False),
])
def test_idempotent(m, method, idempotent):
    target = b"a:443" if method == b"CONNECT" else b"/"
    assert req(m, [(b"Host", b"a")], method=method, target=target).idempotent is idempotent


def test_hop_by_hop_and_forwarding_headers_are_stripped(m):
    hop = [(b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
           (b"Proxy-Connection", b"keep-alive"), (b"Proxy-Authorization", b"Basic eA=="),
           (b"Proxy-Authenticate", b"Basic"), (b"TE", b"trailers"), (b"Trailer", b"X-Sum"),
           (b"Upgrade", b"h2c"), (b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Host", b"e"),
           (b"Via", b"1.1 edge"), (b"X-Forwarded-For", b"10.0.0.1")]
    keep = [(b"Host", b"a"), (b"Accept", b"*/*"), (b"X-Forwarded-Port", b"443")]
    head = req(m, [keep[0], *hop, *keep[1:]])
    assert head.headers == keep
    for name, value in hop:
        assert head.header(name.lower()) == value


def test_connection_named_headers_are_stripped_except_host_and_length(m):
    headers = [(b"Host", b"a"), (b"X-Secret", b"1"), (b"Content-Length", b"2"), (b"X-Keep", b"3"),
               (b"Connection", b"x-secret, Host,content-length , ,close"), (b"Close", b"4")]
    head = req(m, headers)
    assert head.headers == [(b"Host", b"a"), (b"Content-Length", b"2"), (b"X-Keep", b"3")]
    assert not head.keep_alive


def test_forwarded_chain_values_are_joined(m):
    headers = [(b"Host", b"a"), (b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2 "), (b"Via", b"1.0 a"),
               (b"x-forwarded-for", b"10.0.0.3"), (b"X-Forwarded-For", b"  "), (b"VIA", b"1.1 b")]
    head = req(m, headers)
    assert head.xff == b"10.0.0.1, 10.0.0.2, 10.0.0.3"
    assert head.via == b"1.0 a, 1.1 b"


def test_header_lookup(m):
    head = req(m, [(b"Host", b"a"), (b"X-Tag", b"one "), (b"x-tag", b"two")])
    assert head.header(b"x-tag") == b"one "
    assert head.header(b"X-TAG") == b"one "
    assert head.header(b"x-ta") is None
    assert head.header(b"host") == b"a"


def test_heads_are_read_only(m):
    head = req(m, [(b"Host", b"a")])
    with pytest.raises(AttributeError):
        head.host = b"b"
    with pytest.raises(AttributeError):
        resp(m, []).status = 500


def test_head_error_fields(m):
    error = m.HeadError(431, "too many headers")
    assert (error.status, error.reason) == (431, "too many headers")
    assert isinstance(error, Exception)


def test_native_heads_come_only_from_parsing():
    with pytest.raises(TypeError):
        native.RequestHead()


# --- request serialization ----------------------------------------------------

def test_serialize_browser_request(m):
    head = req(m, BROWSER, target=b"/kurse?id=7")
    wire = m.serialize_request_head(head, b"203.0.113.9", b"https", b"schoolgate")
    lines = [b"GET /kurse?id=7 HTTP/1.1"] + [n + b": " + v for n, v in BROWSER
                                             if n != b"Connection"]
    lines += [b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https",
              b"X-Forwarded-Host: portal.school.example", b"Via: 1.1 schoolgate"]
    assert wire == b"\r\n".join(lines) + b"\r\n\r\n"


def test_serialize_appends_to_forwarding_chain(m):
    headers = [(b"Host", b"School.Example:8443"), (b"X-Forwarded-For", b"198.51.100.1"),
               (b"Via", b"1.1 cdn"), (b"Content-Length", b"0")]
    head = req(m, headers, method=b"POST", target=b"/x", version="1.0")
    wire = m.serialize_request_head(head, b"2001:db8::1", b"http", b"sg")
    assert wire == (b"POST /x HTTP/1.1\r\nHost: School.Example:8443\r\nContent-Length: 0\r\n"
                    b"X-Forwarded-For: 198.51.100.1, 2001:db8::1\r\nX-Forwarded-Proto: http\r\n"
                    b"X-Forwarded-Host: School.Example:8443\r\nVia: 1.1 cdn, 1.1 sg\r\n\r\n")


def test_serialize_chunked_then_upgrade_lines(m):
    # A chunked upgrade request is refused (see test_body_on_upgrade_is_refused),
    # so the two framing lines are checked on their own, each after Via.
    chunked = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    wire = m.serialize_request_head(req(m, chunked), b"127.0.0.1", b"http", b"sg")
    assert wire.endswith(b"Via: 1.1 sg\r\nTransfer-Encoding: chunked\r\n\r\n")
    upgrade = [(b"Host", b"a"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
    wire = m.serialize_request_head(req(m, upgrade), b"127.0.0.1", b"http", b"sg")
    assert wire.endswith(b"Via: 1.1 sg\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")


@pytest.mark.parametrize("framing", [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("upgrade", [b"websocket", b"h2c"])
def test_body_on_upgrade_is_refused(m, framing, version, upgrade):
    # llhttp hands the bytes after such a head to the new protocol while the
    # head's framing says they are its body: refused, whatever the version or
    # protocol (h2c is not passed on, but llhttp still stops parsing).
    headers = [(b"Host", b"a"), framing, (b"Upgrade", upgrade),
               (b"Connection", b"keep-alive, Upgrade")]
    if version == "1.0" and framing[0] == b"Transfer-Encoding":
        expected = "Transfer-Encoding in HTTP/1.0"
    else:
        expected = "request body with Upgrade"
    with pytest.raises(m.HeadError) as err:
        req(m, headers, method=b"POST", version=version)
    assert (err.value.status, err.value.reason) == (400, expected)


def test_upgrade_without_body_or_option_keeps_its_body(m):
    # No `upgrade` option, or Content-Length: 0: llhttp reads the message as
    # usual, so nothing is ambiguous.
    head = req(m, [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Upgrade", b"websocket")],
               method=b"POST")
    assert head.content_length == 5 and head.upgrade is None
    head = req(m, [(b"Host", b"a"), (b"Content-Length", b"0"), (b"Upgrade", b"websocket"),
                   (b"Connection", b"upgrade")])
    assert head.upgrade == b"websocket"


@pytest.mark.parametrize("framing", [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")])
def test_connect_with_body_is_refused(m, framing):
    # RFC 9110 9.3.6: CONNECT has no content; llhttp treats what follows its
    # head as the tunnel's.
    with pytest.raises(m.HeadError) as err:
        req(m, [(b"Host", b"a:443"), framing], method=b"CONNECT", target=b"a:443")
    assert (err.value.status, err.value.reason) == (400, "CONNECT request with a body")
    head = req(m, [(b"Host", b"a:443"), (b"Content-Length", b"0")], method=b"CONNECT",
               target=b"a:443")
    assert head.method == b"CONNECT" and head.content_length == 0


def test_serialize_held_chunked_body_with_its_length(m):
    headers = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    wire = m.serialize_request_head(req(m, headers, method=b"POST"), b"127.0.0.1", b"http",
                                    b"sg", body_length=1234)
    assert wire.endswith(b"Via: 1.1 sg\r\nContent-Length: 1234\r\n\r\n")
    assert b"chunked" not in wire
    # Only a chunked head is re-framed: a Content-Length head keeps its own.
    plain = req(m, [(b"Host", b"a"), (b"Content-Length", b"5")], method=b"POST")
    assert m.serialize_request_head(plain, b"1", b"http", b"sg", body_length=5) == \
        m.serialize_request_head(plain, b"1", b"http", b"sg")


def test_serialize_includes_headers_added_after_parsing(m):
    head = req(m, [(b"Host", b"a")])
    head.headers.append((b"X-Request-Id", b"42"))
    assert b"\r\nX-Request-Id: 42\r\n" in m.serialize_request_head(head, b"1", b"http", b"sg")


# --- responses ----------------------------------------------------------------

def test_response_basics(m):
    headers = [(b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
               (b"Connection", b"keep-alive, X-Debug"), (b"X-Debug", b"1"), (b"Keep-Alive", b"t=5"),
               (b"X_Legacy", b"1"), (b"Via", b"1.1 app"), (b"X-Forwarded-For", b"10.0.0.1")]
    head = resp(m, headers)
    assert (head.status, head.reason, head.version) == (200, b"OK", 11)
    assert head.content_length == 12 and not head.chunked and head.keep_alive
    assert head.upgrade is None and head.via == b"1.1 app"
    assert head.headers == [(b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
                            (b"X_Legacy", b"1"), (b"X-Forwarded-For", b"10.0.0.1")]
    assert head.header(b"keep-alive") == b"t=5"


@pytest.mark.parametrize("headers", [
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
    [(b"Content-Length", b"x")],
    [(b"Content-Length", b"5"), (b"Content-Length", b"6")],
    [(b"Transfer-Encoding", b"gzip")],
    [(b"Transfer-Encoding", b"gzip, chunked")],
    [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
    [(b"Set-Cookie", b"a=1\r\nX-Injected: 1")],
    [(b"X-Note", b"\x00")],
    [(b"Bad Name", b"1")],
])
def test_bad_upstream_heads_are_502(m, headers):
    resp_refused(m, headers)


@pytest.mark.parametrize(("kw", "word"), [
    ({"version": "2.0"}, "version"), ({"status": 42}, "status"),
    ({"reason": b"O\rK"}, "reason"),
])
def test_bad_upstream_status_line_is_502(m, kw, word):
    assert word in resp_refused(m, [], **kw)


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    ("1.1", None, True), ("1.1", b"close", False), ("1.0", None, False),
    ("1.0", b"keep-alive", True),
])
def test_response_keep_alive(m, version, connection, keep_alive):
    headers = [] if connection is None else [(b"Connection", connection)]
    assert resp(m, headers, version=version).keep_alive is keep_alive


def test_response_upgrade_only_for_101(m):
    headers = [(b"Upgrade", b"WebSocket"), (b"Connection", b"Upgrade")]
    assert resp(m, headers, status=101, reason=b"Switching Protocols").upgrade == b"websocket"
    assert resp(m, headers, status=426).upgrade is None


def test_response_chunked_on_http10_is_accepted(m):
    assert resp(m, [(b"Transfer-Encoding", b"chunked")], version="1.0").chunked


@pytest.mark.parametrize(("client_version", "chunked", "keep_alive", "tail"), [
    (11, False, True, b""),
    (11, False, False, b"Connection: close\r\n"),
    (10, False, True, b"Connection: keep-alive\r\n"),
    (10, False, False, b"Connection: close\r\n"),
    (11, True, True, b"Transfer-Encoding: chunked\r\n"),
])
def test_serialize_response(m, client_version, chunked, keep_alive, tail):
    head = resp(m, [(b"Content-Type", b"text/plain"), (b"Via", b"1.0 app")],
                reason=b"")
    wire = m.serialize_response_head(head, client_version, chunked, keep_alive, b"sg")
    assert wire == (b"HTTP/1.1 200 \r\nContent-Type: text/plain\r\nVia: 1.0 app, 1.1 sg\r\n"
                    + tail + b"\r\n")


def test_serialize_switching_protocols(m):
    head = resp(m, [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade"),
                    (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")],
                status=101, reason=b"Switching Protocols")
    wire = m.serialize_response_head(head, 11, False, True, b"sg")
    assert wire == (b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nVia: 1.1 sg\r\n"
                    b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")


@pytest.mark.parametrize(("body", "keep_alive", "length", "connection"), [
    (b"", True, b"0", b"keep-alive"),
    (b"busy", False, b"4", b"close"),
    (b"x" * 12345, True, b"12345", b"keep-alive"),
])
def test_serialize_simple_response(m, body, keep_alive, length, connection):
    wire = m.serialize_simple_response(503, b"Service Unavailable",
                                       [(b"Retry-After", b"7")], body, keep_alive)
    assert wire == (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: "
                    + length + b"\r\nConnection: " + connection + b"\r\n\r\n" + body)


@pytest.mark.parametrize("status", [99, 1000, -1])
def test_serialize_simple_response_rejects_bad_status(m, status):
    with pytest.raises(ValueError):
        m.serialize_simple_response(status, b"X", [], b"", True)


# --- the two implementations agree ---------------------------------------------

_GOOD_NAMES = [
    b"Host", b"host", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
    b"connection", b"Upgrade", b"Expect", b"Keep-Alive", b"TE", b"Trailer", b"Via",
    b"X-Forwarded-For", b"X-Forwarded-Host", b"X-Forwarded-Proto", b"Proxy-Connection",
    b"Proxy-Authorization", b"X-Tag", b"Close", b"Accept",
]
# Faulty names are listed once against the good ones' several times, so most
# examples get past validation and exercise the stripping and serialization.
_NAMES = st.sampled_from(_GOOD_NAMES * 4 + [b"x_tag", b"Bad Name", b""])
_VALUES = st.one_of(
    st.sampled_from([
        b"a", b"A.b.", b"a:80", b"[::1]:8080", b"[::1", b"0", b"5", b"05", b" 5 ", b"x",
        b"chunked", b"Chunked ", b"gzip, chunked", b"close", b"keep-alive", b"Upgrade",
        b"x-tag, close", b"host, content-length", b"100-continue", b"websocket", b"",
        b"10.0.0.1", b"1.1 cdn", b"a\rb", b"9" * 25,
    ]),
    st.text(alphabet="aZ09.:,[]-_ \t", max_size=12).map(str.encode),
    st.binary(max_size=6),
)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=8)


@st.composite
def _request_headers(draw):
    """Mostly with exactly one Host, at any position."""
    headers = draw(_HEADERS)
    if draw(st.integers(0, 9)):
        headers = [h for h in headers if h[0].lower() != b"host"]
        host = draw(st.sampled_from([b"School.Example", b"a.b.:80", b"[::1]:8080", b"x y"]))
        headers.insert(draw(st.integers(0, len(headers))), (b"Host", host))
    return headers


_TARGETS = st.one_of(
    st.sampled_from([b"/", b"/a?b", b"http://e/x?y", b"https://e", b"*", b"e:443",
                     b"/?u=http://x/y", b"http://E.:80?q", b"http://[::1]:8/a", b"HTTP://e",
                     b"http://u@e/", b"ftp://e/", b"http:///", b"/a#b", b"[::1]:443"]),
    st.tuples(st.sampled_from([b"", b"/", b"http:", b"http://", b"https://", b"h1+.-://"]),
              st.text(alphabet="aZ09.:/?@#[]*% ", max_size=10).map(str.encode)).map(b"".join),
)


def _outcome(mod, call, serialize):
    try:
        head = call(mod)
    except mod.HeadError as error:
        return ("error", error.status, error.reason)
    fields = {name: getattr(head, name) for name in dir(head)
              if not name.startswith("_") and not callable(getattr(head, name))}
    return ("ok", fields, serialize(mod, head), head.header(b"x-tag"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"CONNECT"]), _TARGETS,
       st.sampled_from(["1.0", "1.1"]),
       _request_headers(), st.booleans())
def test_request_impls_agree(method, target, version, headers, reject):
    def call(mod):
        return mod.parse_request_head(method, target, version, headers, reject)

    def serialize(mod, head):
        return mod.serialize_request_head(head, b"192.0.2.1", b"https", b"sg")

    assert _outcome(native, call, serialize) == _outcome(reference, call, serialize)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([101, 200, 304, 503]), st.sampled_from([b"OK", b""]),
       st.sampled_from(["1.0", "1.1"]), _HEADERS, st.booleans(), st.booleans(),
       st.sampled_from([10, 11]))
def test_response_impls_agree(status, reason, version, headers, chunked, keep_alive, client):
    def call(mod):
        return mod.parse_response_head(status, reason, version, headers)

    def serialize(mod, head):
        return mod.serialize_response_head(head, client, chunked, keep_alive, b"sg")

    assert _outcome(native, call, serialize) == _outcome(reference, call, serialize)


# --- found by the adversarial review (issue 7) ----------------------------------

def test_forwarded_from_the_client_is_not_passed_on(m):
    # RFC 7239 Forwarded is what the client says about itself; the gateway
    # says who the client is in X-Forwarded-For.
    head = req(m, [(b"Host", b"a"), (b"Forwarded", b"for=6.6.6.6"), (b"X-Keep", b"1")])
    assert [k.lower() for k, _ in head.headers] == [b"host", b"x-keep"]


@pytest.mark.parametrize("status", [100, 103, 204])
def test_no_content_length_on_responses_without_content(m, status):
    head = m.parse_response_head(status, b"X", "1.1", [(b"Content-Length", b"5"), (b"X-A", b"1")])
    assert head.content_length == -1
    assert head.headers == [(b"X-A", b"1")]
    kept = m.parse_response_head(304, b"X", "1.1", [(b"Content-Length", b"5")])
    assert kept.content_length == 5


def test_response_underscore_names_that_read_as_framing_are_dropped(m):
    head = m.parse_response_head(200, b"OK", "1.1", [
        (b"Content_Length", b"5"), (b"Transfer_Encoding", b"chunked"), (b"X_Custom", b"1"),
        (b"Content-Length", b"2")])
    assert head.headers == [(b"X_Custom", b"1"), (b"Content-Length", b"2")]
    assert head.content_length == 2 and not head.chunked
