"""Upstreams written as URLs (issue 10): ``http://host:port`` is accepted as
host:port; what the gateway could not honour is refused with its reason."""

from __future__ import annotations

import re

import pytest

from gateway.config import ConfigError, parse_config, parse_hostport, parse_upstream


def school(upstream: str) -> bytes:
    return (f'[server]\nlisten = "127.0.0.1:8080"\n[[schools]]\nname = "a"\n'
            f'hosts = ["a.example.org"]\nupstreams = ["10.0.0.1:80", "{upstream}"]\n').encode()


@pytest.mark.parametrize(("text", "expected"), [
    ("http://10.20.0.10:80", ("10.20.0.10", 80)),       # the example
    ("http://10.20.0.10", ("10.20.0.10", 80)),          # http's default port
    ("http://10.20.0.10/", ("10.20.0.10", 80)),         # a bare "/" names no path
    ("HTTP://school-box.lan:8080", ("school-box.lan", 8080)),  # schemes are case-insensitive
    ("http://[fd00::5]", ("fd00::5", 80)),
    ("http://[fd00::5]:8080/", ("fd00::5", 8080)),
    ("http://box.lan:", ("box.lan", 80)),               # empty port: the default (RFC 3986 3.2.3)
    ("10.0.0.5:80", ("10.0.0.5", 80)),                  # host:port as before
    ("[::1]:9000", ("::1", 9000)),
])
def test_upstream_url_accepted(text, expected):
    assert parse_upstream(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("https://10.20.0.10:443", "TLS to upstreams is not supported"),
    ("ftp://10.20.0.10:21", "only http:// URLs"),
    ("http://user:secret@10.20.0.10:80", "no user name or password (userinfo)"),
    ("http://10.20.0.10:80/moodle", "not a path"),
    ("http://10.20.0.10:80?x=1", "not a query"),
    ("http://10.20.0.10:80/?x=1", "not a query"),
    ("http://10.20.0.10:80#top", "not a fragment"),
    ("http://", "expected \"http://host:port\""),
    ("http://::1:80", "IPv6 addresses need brackets"),
    ("http://10.20.0.10:99999", "port must be a number from 1 to 65535"),
    ("http://bad host:80", "is not a valid host name"),
])
def test_upstream_url_refused_with_reason(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_upstream(text)


def test_config_normalises_url_upstreams_to_hostport():
    cfg = parse_config(school("http://10.20.0.10"), "gw.toml")
    assert cfg.schools[0].upstreams == ["10.0.0.1:80", "10.20.0.10:80"]
    cfg = parse_config(school("http://[FD00::5]:8080/"), "gw.toml")
    assert cfg.schools[0].upstreams == ["10.0.0.1:80", "[fd00::5]:8080"]


def test_config_error_names_the_upstream_and_reason():
    with pytest.raises(ConfigError) as info:
        parse_config(school("https://10.20.0.10:443"), "gw.toml")
    assert info.value.key_path == "schools[0].upstreams[1]"
    assert "TLS to upstreams is not supported" in info.value.message


def test_listen_address_is_not_a_url():
    # A listener is host:port only; the reason says so instead of "need brackets".
    with pytest.raises(ValueError, match=re.escape('expected "host:port", not a URL')):
        parse_hostport("http://0.0.0.0:8080")
