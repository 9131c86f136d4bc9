"""Load a TOML config: parse it (tomllib), type it (msgspec), then check what types cannot say.

Every problem becomes one :class:`ConfigError` whose text names the file, the
key path and what is wrong, e.g. ``gw.toml: schools[0].max_inflight:
expected int, got str``; TOML syntax errors name the line and column instead
(``gw.toml:3:7: invalid TOML: ...``). Checks run in document order and the
first problem is reported, like ``nginx -t``.

A setting that is valid but probably not what was meant is no error:
:func:`config_warnings` lists those of a loaded config as
:class:`ConfigWarning` (same text format), which ``schoolgate check`` prints
and ``schoolgate run`` logs at start and at each reload.

The returned :class:`Config` is normalised so that consumers compare plain
values instead of re-deriving them:

* school hosts are lower-cased (Host matching is case-insensitive);
* match methods are upper-cased and match header names lower-cased;
* an upstream written as a URL (``http://10.0.0.5:80``, ``http://school.lan``)
  becomes ``host:port`` (``[v6]:port`` for IPv6; see :func:`parse_upstream`);
* ``tls_cert``, ``tls_key``, ``temp_dir`` and ``templates`` are absolute
  paths, relative ones being taken from the config file's directory;
* a school with ``rate > 0`` and no ``burst`` gets ``burst = max(1,
  ceil(rate))`` (one second's worth), and likewise ``client_burst`` for
  ``client_rate``; a burst without a rate is an error, since it would be
  silently ignored.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
import types
import typing
from datetime import date, datetime, time
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec.structs import replace

from gateway.waiting.line import POLL_MAX

from .schema import (
    Config,
    Log,
    Match,
    School,
    Server,
    TrafficClass,
    Window,
    default_classes,
)

__all__ = [
    "ConfigError", "ConfigWarning", "config_warnings", "effective_classes", "load_config",
    "parse_config", "parse_hostport", "parse_upstream",
]


class ConfigError(ValueError):
    """A config problem: where (file, key path, or line) and what is wrong."""

    def __init__(
        self,
        source: str,
        key_path: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(source, key_path, message)
        self.source = source
        self.key_path = key_path
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return ": ".join(part for part in (where, self.key_path, self.message) if part)

    def __reduce__(self):
        # Keeps line/column across pickling (errors may cross process boundaries).
        return (_rebuild_error, (self.source, self.key_path, self.message, self.line, self.column))


def _rebuild_error(source, key_path, message, line, column) -> ConfigError:
    return ConfigError(source, key_path, message, line=line, column=column)


class ConfigWarning(NamedTuple):
    """A valid setting that is probably not what was meant: where and why."""

    source: str
    key_path: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.key_path, self.message) if part)


class _Invalid(Exception):
    """Raised by the checks below; parse_config adds the source name."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(key_path, message)
        self.key_path = key_path
        self.message = message


# --------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, decode and check the config file at ``path``."""
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_config(text, source, base_dir=os.path.dirname(os.path.abspath(source)))


def parse_config(text: bytes, source: str, *, base_dir: str | None = None) -> Config:
    """Decode and check config ``text``; ``source`` names it in errors.

    Relative file paths in the config are resolved against ``base_dir``
    (default: the current directory).
    """
    # Each step is decided here, with the standard library's documented
    # errors, so that no outcome depends on which exception class (or text)
    # a msgspec release uses: 0.18 let UnicodeDecodeError through from
    # msgspec.toml.decode, 0.23 wraps it in msgspec.DecodeError.
    try:
        doc = text.decode("utf-8")  # TOML is UTF-8 (toml.io, v1.0.0 "Spec")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", _not_utf8(text, exc.start)) from None
    try:
        data = tomllib.loads(doc)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, str(exc)) from None
    try:
        # What msgspec.toml.decode does after parsing: TOML's date and time
        # values stay Python objects, table keys are strings.
        cfg = msgspec.convert(data, Config, builtin_types=_TOML_BUILTINS, str_keys=True)
    except msgspec.ValidationError as exc:
        key_path, message = _translate_validation(str(exc))
        raise ConfigError(source, key_path, message) from None
    try:
        return _check(cfg, Path(base_dir or os.getcwd()))
    except _Invalid as exc:
        raise ConfigError(source, exc.key_path, exc.message) from None


def config_warnings(cfg: Config, source: str) -> list[ConfigWarning]:
    """Settings of a loaded ``cfg`` that work but probably not as meant, in
    document order; ``source`` names the file in each warning.

    * a school's ``request_buffer_memory`` above its ``request_buffer_max``
      (with request buffering on): a body is received whole only up to
      request_buffer_max, but one that streams on past it still keeps up to
      request_buffer_memory bytes in memory, so the excess costs memory
      without holding any more bodies whole.
    """
    out = []
    for i, school in enumerate(cfg.schools):
        memory, most = school.request_buffer_memory, school.request_buffer_max
        if school.request_buffering and memory > most:
            out.append(ConfigWarning(
                source, f"schools[{i}].request_buffer_memory",
                f"{memory} is larger than request_buffer_max ({most}): bodies are received "
                f"whole only up to {most} bytes, yet one that streams on past that still "
                f"holds up to {memory} bytes in memory; set it to {most} or less"))
    return out


def _not_utf8(text: bytes, start: int) -> str:
    """``not UTF-8 text at byte 7 (line 2, column 3)``: where the first bad byte is."""
    line = text.count(b"\n", 0, start) + 1
    column = start - (text.rfind(b"\n", 0, start) + 1) + 1
    return f"not UTF-8 text at byte {start} (line {line}, column {column})"


def effective_classes(cfg: Config) -> list[TrafficClass]:
    """The traffic classes in force: the configured ones, else the defaults."""
    return list(cfg.classes) if cfg.classes else default_classes()


_TOML_BUILTINS = (datetime, date, time)
_PORT_RE = re.compile(r"[0-9]{1,5}")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}", re.IGNORECASE)


def parse_hostport(s: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) into host and port.

    The host may be a DNS name, an IPv4 address or a bracketed IPv6 address;
    it is returned without brackets, ready for ``socket`` calls. Raises
    ValueError with a readable reason.
    """
    if s.startswith("["):
        addr, sep, port_text = s[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected \"[ipv6]:port\", got {s!r}")
        try:
            host = str(ipaddress.IPv6Address(addr))
        except ValueError:
            raise ValueError(f"{addr!r} is not an IPv6 address") from None
    else:
        if "://" in s:
            raise ValueError(f"expected \"host:port\", not a URL, got {s!r}")
        host, sep, port_text = s.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected \"host:port\", got {s!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, e.g. \"[::1]:8080\", got {s!r}")
        if not _is_hostname(host):
            raise ValueError(f"{host!r} is not a valid host name or address")
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def parse_upstream(s: str) -> tuple[str, int]:
    """An upstream address: ``"host:port"`` as for :func:`parse_hostport`, or
    an ``http://`` URL naming only a host and an optional port (default 80,
    RFC 9110 4.2.1), e.g. ``"http://10.20.0.10:80"`` or ``"http://[fd00::5]"``;
    one trailing ``/`` is allowed.

    Returns ``(host, port)`` like :func:`parse_hostport`. Raises ValueError
    with the reason for a URL the gateway cannot honour: a scheme other than
    ``http`` (upstream connections are plain HTTP/1.1; ``https`` is refused
    rather than silently sent in clear text), userinfo (the gateway sends no
    credentials of its own), or a path, query or fragment (the request's own
    target is forwarded unchanged, so a prefix would be dropped).
    """
    scheme, sep, rest = s.partition("://")
    if not sep:
        return parse_hostport(s)
    scheme = scheme.lower()
    if scheme == "https":
        raise ValueError(f"TLS to upstreams is not supported; connections to a school's "
                         f"server are plain HTTP, so write \"http://host:port\" or "
                         f"\"host:port\", got {s!r}")
    if scheme != "http":
        raise ValueError(f"only http:// URLs (or \"host:port\") name an upstream, got {s!r}")
    # RFC 3986 3.2: the authority ends at the first "/", "?" or "#".
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if tail not in ("", "/"):
        which = ("a path" if tail.startswith("/") and tail[1] not in "?#" else
                 "a query" if "?" in tail.partition("#")[0] else "a fragment")
        raise ValueError(f"an upstream URL names a host and port only, not {which}: "
                         f"the request's own target is forwarded unchanged, got {s!r}")
    if "@" in authority:
        raise ValueError(f"an upstream URL has no user name or password (userinfo): the "
                         f"gateway forwards the client's own credentials, got {s!r}")
    if not authority:
        raise ValueError(f"expected \"http://host:port\", got {s!r}")
    host_part = authority
    if authority.startswith("["):
        if authority.endswith("]"):
            host_part = authority + ":80"
    elif ":" not in authority:
        host_part = authority + ":80"
    elif authority.endswith(":"):
        # "http://host:" is an empty port, which RFC 3986 3.2.3 lets mean the default.
        host_part = authority + "80"
    return parse_hostport(host_part)


def format_hostport(host: str, port: int) -> str:
    """``(host, port)`` back to ``"host:port"``, bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_hostname(host: str) -> bool:
    # A dotted-digits string that is not an IPv4 address (999.1.1.1) is
    # almost certainly a typo rather than a DNS name, so it is refused.
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) is not None


# ------------------------------------------------------------------- decode errors

_LOCATED_RE = re.compile(r"(?s)(?P<what>.*?) - at `\$(?P<path>[^`]*)`")
_UNKNOWN_RE = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_MISSING_RE = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_ENUM_RE = re.compile(r"Invalid enum value (?P<value>.*)")
_LINE_RE = re.compile(r"(?s)(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)")
_SEGMENT_RE = re.compile(r"\.?([^.\[]+)|\[([^\]]*)\]")


def _translate_validation(text: str) -> tuple[str, str]:
    """msgspec's ``"Expected `int`, got `str` - at `$.a[0].b`"`` -> key path, message."""
    m = _LOCATED_RE.fullmatch(text)
    what, path = (m["what"], m["path"].lstrip(".")) if m else (text, "")
    if m := _UNKNOWN_RE.fullmatch(what):
        name = m["name"]
        known = [f.encode_name for f in _struct_fields(path)]
        # Imported here: only a misspelt key needs it, and workers load this module.
        from difflib import get_close_matches

        hint = get_close_matches(name, known, n=1)
        message = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        return _join(path, name), message
    if m := _MISSING_RE.fullmatch(what):
        return _join(path, m["name"]), "required key is missing"
    if m := _ENUM_RE.fullmatch(what):
        allowed = _literal_values(path)
        if allowed:
            return path, f"expected one of {', '.join(map(repr, allowed))}, got {m['value']}"
    # TOML has no null and calls objects tables; say it in the reader's terms.
    what = what.replace(" | null", "").replace("`object`", "`table`").replace("`", "")
    return path, what[:1].lower() + what[1:]


def _syntax_error(source: str, text: str) -> ConfigError:
    m = _LINE_RE.fullmatch(text)
    what = m["what"] if m else text
    what = "invalid TOML: " + what[:1].lower() + what[1:]
    if m:
        return ConfigError(source, "", what, line=int(m["line"]), column=int(m["col"]))
    return ConfigError(source, "", what)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _annotation_at(path: str) -> object:
    """The schema annotation at a msgspec key path (``schools[0].balance``)."""
    tp: object = Config
    for name, _index in _SEGMENT_RE.findall(path):
        tp = _unwrap(tp)
        if name:
            fields = {f.encode_name: f.type for f in _fields_of(tp)}
            tp = fields.get(name)
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _unwrap(tp: object) -> object:
    """Strip Annotated and Optional so the container or struct shows."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _fields_of(tp: object) -> tuple[msgspec.structs.FieldInfo, ...]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return msgspec.structs.fields(tp)
    return ()


def _struct_fields(path: str) -> tuple[msgspec.structs.FieldInfo, ...]:
    return _fields_of(_annotation_at(path))


def _literal_values(path: str) -> tuple[object, ...]:
    tp = _annotation_at(path)
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()


# ----------------------------------------------------------------- semantic checks

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH_RE = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")
_HHMM_RE = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _check(cfg: Config, base: Path) -> Config:
    pools = {}
    for i, pool in enumerate(cfg.pools):
        if pool.name in pools:
            raise _Invalid(f"pools[{i}].name", f"duplicate pool name {pool.name!r}")
        pools[pool.name] = i
    server = _check_server(cfg.server, base)
    schools = _check_schools(cfg.schools, pools, base)
    classes = _check_classes(cfg.classes)
    adm = cfg.admission
    if adm.secret_file is not None:
        if adm.secret:
            raise _Invalid("admission.secret_file", "set secret or secret_file, not both")
        path, secret = read_secret_file("admission.secret_file", adm.secret_file, base)
        adm = replace(adm, secret=secret, secret_file=path)
    if adm.min_retry > adm.max_retry:
        raise _Invalid("admission.min_retry", f"is above max_retry ({adm.max_retry})")
    if adm.secret and len(adm.secret.encode()) < 16:
        # A short HMAC key can be brute-forced offline from one ticket.
        raise _Invalid("admission.secret", "must be at least 16 bytes (or empty for a random one)")
    for key in ("waiting_grace", "called_grace"):
        # A visitor still waiting polls at least every POLL_MAX seconds (a
        # called one whose reload was turned away again, too).
        if getattr(adm, key) <= POLL_MAX:
            raise _Invalid(f"admission.{key}",
                           f"must be above {POLL_MAX} s (the waiting page's longest poll "
                           "interval), or visitors still waiting would lose their place")
    url = cfg.redis.url
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise _Invalid("redis.url", f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
    if cfg.redis.lease_ttl <= 2 * cfg.redis.sync_interval:
        raise _Invalid("redis.lease_ttl", f"must be more than twice sync_interval "
                       f"({cfg.redis.sync_interval}): a lease is renewed every round")
    log = _check_log(cfg.log, base)
    return replace(cfg, server=server, schools=schools, classes=classes, log=log,
                   admission=adm)


def read_secret_file(at: str, name: str, base: Path) -> tuple[str, str]:
    """(the absolute path, the secret) of a `*_file` key: the file's text,
    UTF-8, trailing whitespace (the editor's newline) dropped. Refused with
    `at` as the key path: a file that cannot be read, is empty, or that
    every user may read (mode o+r: the point of a secret file is that the
    config may be world-readable and the secret not; chmod 600 or 640, or
    systemd's LoadCredential=, which makes it 0400)."""
    path = base / os.path.expanduser(name)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(64 * 1024 + 1)
    except OSError as exc:
        raise _Invalid(at, f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise _Invalid(at, f"{str(path)!r} is not a regular file")
    if mode & stat.S_IROTH:
        raise _Invalid(at, f"{str(path)!r} is readable by every user (mode "
                       f"{stat.S_IMODE(mode):04o}): chmod o-r it, or hand it over with "
                       "systemd's LoadCredential=")
    if len(data) > 64 * 1024:
        raise _Invalid(at, f"{str(path)!r} is over 64 KiB: not a secret")
    try:
        text = data.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        raise _Invalid(at, f"{str(path)!r} is not UTF-8 text") from None
    if not text:
        raise _Invalid(at, f"{str(path)!r} is empty")
    return str(path), text


def _check_log(log: Log, base: Path) -> Log:
    """An access log file is absolute (from the config's directory) and its
    directory must exist and be writable, so a typo is found by `check`
    rather than by the first worker."""
    if log.access in ("stdout", "off"):
        return log
    if not log.access:
        raise _Invalid("log.access", 'expected "stdout", "off" or a file path')
    path = base / os.path.expanduser(log.access)
    if path.is_dir():
        raise _Invalid("log.access", f"is a directory: {str(path)!r}")
    if not path.parent.is_dir():
        raise _Invalid("log.access", f"no such directory: {str(path.parent)!r}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise _Invalid("log.access", f"not writable: {str(path)!r}")
    return replace(log, access=str(path))


def _hostport(key: str, value: str) -> tuple[str, int]:
    try:
        return parse_hostport(value)
    except ValueError as exc:
        raise _Invalid(key, str(exc)) from None


def _upstream(key: str, value: str) -> str:
    try:
        return format_hostport(*parse_upstream(value))
    except ValueError as exc:
        raise _Invalid(key, str(exc)) from None
def is_loopback(host: str) -> bool:
    """Whether a listener on `host` (from parse_hostport) is reachable from
    this machine only: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_server(server: Server, base: Path) -> Server:
    listen = _hostport("server.listen", server.listen)
    if server.admin_token_file is not None:
        if server.admin_token is not None:
            raise _Invalid("server.admin_token_file",
                           "set admin_token or admin_token_file, not both")
        path, token = read_secret_file("server.admin_token_file",
                                       server.admin_token_file, base)
        server = replace(server, admin_token=token, admin_token_file=path)
    admin = server.admin_listen
    if admin is not None:
        if _PORT_RE.fullmatch(admin.removeprefix(":")):
            # A port alone: the admin listener stays on this machine.
            admin = f"127.0.0.1:{admin.removeprefix(':')}"
            server = replace(server, admin_listen=admin)
        admin_host, admin_port = _hostport("server.admin_listen", admin)
        if (admin_host, admin_port) == listen:
            raise _Invalid("server.admin_listen", "must differ from server.listen")
        if server.admin_token is not None and len(server.admin_token.encode()) < 16:
            raise _Invalid("server.admin_token", "must be at least 16 bytes")
        if not is_loopback(admin_host) and not server.admin_token:
            raise _Invalid("server.admin_token",
                           f"required when server.admin_listen ({admin}) is not a loopback "
                           "address: metrics and the status page are not for everyone")
    for i, net in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=True)
        except ValueError as exc:
            raise _Invalid(f"server.trusted_proxies[{i}]", f"not an IP or CIDR: {exc}") from None
    if server.temp_dir:
        path = base / os.path.expanduser(server.temp_dir)
        if not path.is_dir():
            raise _Invalid("server.temp_dir", f"no such directory: {str(path)!r}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise _Invalid("server.temp_dir", f"directory is not writable: {str(path)!r}")
        server = replace(server, temp_dir=str(path))
    if (server.tls_cert is None) != (server.tls_key is None):
        missing = "server.tls_key" if server.tls_key is None else "server.tls_cert"
        present = "server.tls_cert" if server.tls_key is None else "server.tls_key"
        raise _Invalid(present, f"set together with {missing} (both or neither)")
    if server.tls_cert is None or server.tls_key is None:
        return server
    cert = _readable_file("server.tls_cert", server.tls_cert, base)
    key = _readable_file("server.tls_key", server.tls_key, base)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback stops OpenSSL from prompting on the terminal
        # for an encrypted key, which would hang an unattended `check`.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise _Invalid("server.tls_cert", f"cannot load with tls_key: {reason}") from None
    return replace(server, tls_cert=cert, tls_key=key)


def _readable_file(key: str, value: str, base: Path) -> str:
    path = base / os.path.expanduser(value)
    if not path.is_file():
        raise _Invalid(key, f"no such file: {str(path)!r}")
    if not os.access(path, os.R_OK):
        raise _Invalid(key, f"file is not readable: {str(path)!r}")
    return str(path)


def _check_schools(
    schools: list[School], pools: dict[str, int], base: Path
) -> list[School]:
    if not schools:
        raise _Invalid("schools", "at least one [[schools]] entry is required")
    names: dict[str, int] = {}
    owners: dict[str, str] = {}  # host pattern -> key path of its first use
    out = []
    for i, school in enumerate(schools):
        at = f"schools[{i}]"
        if not school.name.strip():
            raise _Invalid(f"{at}.name", "must not be empty")
        if school.name in names:
            raise _Invalid(f"{at}.name", f"duplicate school name {school.name!r} "
                           f"(also schools[{names[school.name]}])")
        names[school.name] = i
        hosts = [_host_pattern(f"{at}.hosts[{j}]", h) for j, h in enumerate(school.hosts)]
        if not hosts:
            raise _Invalid(f"{at}.hosts", "at least one host is required")
        for j, host in enumerate(hosts):
            if host in owners:
                raise _Invalid(f"{at}.hosts[{j}]", f"{host!r} is already used by {owners[host]}")
            owners[host] = f"school {school.name!r} ({at}.hosts[{j}])"
        if not school.upstreams:
            raise _Invalid(f"{at}.upstreams", "at least one upstream is required")
        upstreams = [_upstream(f"{at}.upstreams[{j}]", u)
                     for j, u in enumerate(school.upstreams)]
        if school.pool is not None and school.pool not in pools:
            raise _Invalid(f"{at}.pool", f"no [[pools]] entry is named {school.pool!r}")
        burst = _burst(at, "rate", school.rate, "burst", school.burst)
        client_burst = _burst(at, "client_rate", school.client_rate,
                              "client_burst", school.client_burst)
        templates = school.templates
        if templates is not None:
            path = base / os.path.expanduser(templates)
            if not path.is_dir():
                raise _Invalid(f"{at}.templates", f"no such directory: {str(path)!r}")
            templates = str(path)
        out.append(replace(school, hosts=hosts, upstreams=upstreams, burst=burst,
                           client_burst=client_burst, templates=templates))
    return out


def _host_pattern(key: str, host: str) -> str:
    # Same normal form as the router gives the Host header: lower case, no
    # trailing dot of a fully qualified name.
    host = host.lower()
    if host.endswith(".") and host != "*.":
        host = host[:-1]
    if host == "*":
        return host
    if host.startswith("*."):
        if _is_hostname(host[2:]):
            return host
        raise _Invalid(key, f"{host!r}: \"*.\" must be followed by a domain name")
    if "*" in host:
        raise _Invalid(key, f"{host!r}: a wildcard is only allowed as \"*\" or \"*.domain\"")
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:].removesuffix(']'))}]"
        except ValueError:
            raise _Invalid(key, f"{host!r} is not a bracketed IPv6 address") from None
    name, sep, port = host.rpartition(":")
    if sep and _PORT_RE.fullmatch(port) and _is_hostname(name):
        raise _Invalid(key, f"{host!r}: hosts match the Host header without its port; "
                       f"use {name!r}")
    if not _is_hostname(host):
        raise _Invalid(key, f"{host!r} is not a host name, \"*.domain\" or \"*\"")
    return host


def _burst(at: str, rate_key: str, rate: float, burst_key: str, burst: int) -> int:
    if rate > 0:
        return burst or max(1, math.ceil(rate))
    if burst:
        raise _Invalid(f"{at}.{burst_key}",
                       f"has no effect while {rate_key} is 0 (unlimited); set {rate_key}")
    return burst


def _check_classes(classes: list[TrafficClass]) -> list[TrafficClass]:
    names: dict[str, int] = {}
    catch_all: int | None = None
    out = []
    for i, cls in enumerate(classes):
        at = f"classes[{i}]"
        if not cls.name.strip():
            raise _Invalid(f"{at}.name", "must not be empty")
        if cls.name in names:
            raise _Invalid(f"{at}.name", f"duplicate class name {cls.name!r} "
                           f"(also classes[{names[cls.name]}])")
        names[cls.name] = i
        match = cls.match
        if match is None:
            # The classifier sends whatever fits no match to this class; two
            # such classes would leave the second one unused.
            if catch_all is not None:
                raise _Invalid(f"{at}.match", "only one class may omit match; "
                               f"classes[{catch_all}] ({classes[catch_all].name!r}) does too")
            catch_all = i
        else:
            match = _check_match(f"{at}.match", match)
        for j, window in enumerate(cls.windows):
            _check_window(f"{at}.windows[{j}]", window)
        out.append(replace(cls, match=match))
    return out


def _check_match(at: str, match: Match) -> Match:
    if not (match.methods or match.paths or match.headers):
        raise _Invalid(at, "is empty; omit match to make this the default class")
    methods = []
    for i, method in enumerate(match.methods):
        if not _TOKEN_RE.fullmatch(method):
            raise _Invalid(f"{at}.methods[{i}]", f"{method!r} is not an HTTP method token")
        methods.append(method.upper())
    for i, path in enumerate(match.paths):
        if not path.startswith("/"):
            raise _Invalid(f"{at}.paths[{i}]", f"{path!r} must start with \"/\"")
        if not _PATH_RE.fullmatch(path):
            raise _Invalid(f"{at}.paths[{i}]", f"{path!r}: a path prefix is printable ASCII "
                           "without spaces, \"?\" or \"#\" (percent-encode the rest)")
    headers = {}
    for name, value in match.headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise _Invalid(f"{at}.headers", f"{name!r} is not a valid header name")
        if not _HEADER_VALUE_RE.fullmatch(value):
            raise _Invalid(f"{at}.headers.{name}", "value contains control characters")
        if name.lower() in headers:
            raise _Invalid(f"{at}.headers", f"{name!r} is given twice (names ignore case)")
        headers[name.lower()] = value
    return replace(match, methods=methods, headers=headers)


def _check_window(at: str, window: Window) -> None:
    if not window.days:
        raise _Invalid(f"{at}.days", "at least one day is required")
    if len(set(window.days)) != len(window.days):
        raise _Invalid(f"{at}.days", "lists a day twice")
    if not _HHMM_RE.fullmatch(window.start):
        raise _Invalid(f"{at}.start", f"expected \"HH:MM\" (00:00-23:59), got {window.start!r}")
    if not (_HHMM_RE.fullmatch(window.end) or window.end == "24:00"):
        raise _Invalid(f"{at}.end", f"expected \"HH:MM\" (00:00-24:00), got {window.end!r}")
    # An end before the start runs overnight (see gateway.admission.windows);
    # only an equal pair has no meaning.
    if window.end == window.start:
        raise _Invalid(f"{at}.end", f"window {window.start}-{window.end} is empty")
    try:
        ZoneInfo(window.tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _Invalid(f"{at}.tz", f"unknown time zone {window.tz!r}") from None

