"""Config loading: decode errors with key paths, semantic checks, normalisation."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from gateway.config import (
    Config,
    ConfigError,
    ConfigWarning,
    config_warnings,
    default_classes,
    effective_classes,
    load_config,
    parse_config,
    parse_hostport,
)
from gateway.config import schema as schema_module

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"

SCHOOL = """
[[schools]]
name = "a"
hosts = ["a.example.org"]
upstreams = ["127.0.0.1:9000"]
"""


def parse(text: str, **kw) -> Config:
    return parse_config(text.encode(), "gw.toml", **kw)


def error(text: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, **kw)
    return info.value


def school(**fields: str) -> str:
    """A [[schools]] entry with some keys replaced (values are TOML text)."""
    base = {"name": '"a"', "hosts": '["a.example.org"]', "upstreams": '["127.0.0.1:9000"]'}
    base.update(fields)
    return "[[schools]]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())


# ---------------------------------------------------------------- error format


def test_error_text_is_file_key_path_message():
    exc = error(school(max_inflight='"x"'))
    assert str(exc) == "gw.toml: schools[0].max_inflight: expected int, got str"
    assert (exc.source, exc.key_path, exc.message) == (
        "gw.toml", "schools[0].max_inflight", "expected int, got str")


def test_error_survives_pickling_with_its_line():
    exc = ConfigError("gw.toml", "", "invalid TOML: x", line=3, column=7)
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.line, copy.column) == (str(exc), 3, 7)


@pytest.mark.parametrize(("text", "key", "message"), [
    ("[server]\nlisten = 8080\n" + SCHOOL, "server.listen", "expected str, got int"),
    ("[server]\nadmin_listen = 1\n" + SCHOOL, "server.admin_listen", "expected str, got int"),
    ("server = 1\n" + SCHOOL, "server", "expected table, got int"),
    ("[limits]\nmax_body = -1\n" + SCHOOL, "limits.max_body", "expected int >= 0"),
    (school(weight="0"), "schools[0].weight", "expected float > 0.0"),
])
def test_type_errors_name_the_key(text, key, message):
    exc = error(text)
    assert (exc.key_path, exc.message) == (key, message)


def test_unknown_key_suggests_the_close_name():
    assert str(error("[server]\nlistn = \"x\"\n" + SCHOOL)) == (
        "gw.toml: server.listn: unknown key (did you mean 'listen'?)")
    assert str(error("[servr]\n" + SCHOOL)) == (
        "gw.toml: servr: unknown key (did you mean 'server'?)")
    assert str(error(SCHOOL + "colour = 1\n")) == "gw.toml: schools[0].colour: unknown key"


def test_missing_required_key():
    exc = error('[[schools]]\nname = "a"\nupstreams = ["h:1"]\n')
    assert (exc.key_path, exc.message) == ("schools[0].hosts", "required key is missing")


def test_literal_errors_list_the_choices():
    exc = error('[limits]\nunderscore_headers = "keep"\n' + SCHOOL)
    assert str(exc) == ("gw.toml: limits.underscore_headers: "
                        "expected one of 'drop', 'reject', got 'keep'")
    exc = error(SCHOOL + '[[classes]]\nname = "c"\n[[classes.windows]]\ndays = ["Mon"]\n')
    assert exc.key_path == "classes[0].windows[0].days[0]"
    assert exc.message.startswith("expected one of 'mon', 'tue', 'wed'")
    exc = error(SCHOOL + '[[classes]]\nname = "c"\nreject_status = 404\n')
    assert exc.message == "expected one of 429, 503, got 404"


def test_toml_syntax_error_names_file_line_and_column():
    exc = error(SCHOOL + "[server\nlisten = 1\n")
    assert (exc.line, exc.key_path) == (6, "")
    assert re.fullmatch(r"gw\.toml:6:\d+: invalid TOML: .+", str(exc))


def test_not_utf8():
    with pytest.raises(ConfigError, match=r"^gw\.toml: not UTF-8 text"):
        parse_config(b"\xff\xfe", "gw.toml")


def test_not_utf8_names_the_first_bad_byte():
    # Decided by the loader itself (bytes.decode), whichever exception the
    # installed msgspec would raise for it.
    text = SCHOOL.encode() + b'title = "Gymnasium S\xfcd"\n'
    offset = text.index(b"\xfc")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    # SCHOOL starts with a newline, so the title is on line 6; "\xfc" is
    # its 21st byte.
    assert str(info.value) == f"gw.toml: not UTF-8 text at byte {offset} (line 6, column 21)"


def test_load_config_names_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(missing))}: cannot read: "):
        load_config(missing)


def test_load_config_reports_its_path(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(school(rate='"fast"'))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}: schools[0].rate: expected float, got str"


# ------------------------------------------------------------------ host:port


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:1", ("::", 1)),
    ("school-box.lan:65535", ("school-box.lan", 65535)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("8080", "expected \"host:port\""),
    (":8080", "expected \"host:port\""),
    ("::1:8080", "IPv6 addresses need brackets"),
    ("[::1]8080", "expected \"[ipv6]:port\""),
    ("[nope]:80", "is not an IPv6 address"),
    ("host:0", "port must be a number from 1 to 65535"),
    ("host:65536", "port must be a number from 1 to 65535"),
    ("host:+80", "port must be a number"),
    ("host: 80", "port must be a number"),
    ("bad host:80", "is not a valid host name"),
    ("999.1.1.1:80", "is not a valid host name"),
    ("-lead.example:80", "is not a valid host name"),
])
def test_parse_hostport_rejects(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_hostport(text)


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\nlisten = "8080"\n' + SCHOOL, "server.listen"),
    ('[server]\nadmin_listen = "::1:9090"\n' + SCHOOL, "server.admin_listen"),
    (school(upstreams='["10.0.0.1:80", "10.0.0.2"]'), "schools[0].upstreams[1]"),
])
def test_addresses_are_checked(text, key):
    assert error(text).key_path == key


def test_admin_listener_must_differ():
    exc = error('[server]\nlisten = "127.0.0.1:80"\nadmin_listen = "127.0.0.1:80"\n' + SCHOOL)
    assert (exc.key_path, exc.message) == ("server.admin_listen", "must differ from server.listen")


# -------------------------------------------------------------------- schools


def test_at_least_one_school():
    exc = error('[server]\nlisten = "127.0.0.1:80"\n')
    assert exc.key_path == "schools"


def test_school_names_are_unique():
    exc = error(school() + school(hosts='["b.example.org"]'))
    assert exc.key_path == "schools[1].name"
    assert "duplicate school name 'a'" in exc.message


def test_school_name_not_empty():
    assert error(school(name='" "')).key_path == "schools[0].name"


def test_a_host_belongs_to_one_school():
    exc = error(school(hosts='["x.org", "*"]') + school(name='"b"', hosts='["y.org", "X.ORG"]'))
    assert str(exc) == ("gw.toml: schools[1].hosts[1]: 'x.org' is already used by "
                        "school 'a' (schools[0].hosts[0])")
    assert error(school(hosts='["*"]') + school(name='"b"', hosts='["*"]')).key_path == (
        "schools[1].hosts[0]")
    assert error(school(hosts='["*.x.org"]') + school(name='"b"', hosts='["*.x.org"]'))


@pytest.mark.parametrize("host", ["*.*.org", "a*.org", "*.", "exa mple.org", "[zz]", "x..org"])
def test_host_entry_forms(host):
    assert error(school(hosts=f'["{host}"]')).key_path == "schools[0].hosts[0]"


def test_host_entry_with_port_gets_a_hint():
    exc = error(school(hosts='["a.org:8080"]'))
    assert "without its port; use 'a.org'" in exc.message


def test_hosts_are_normalised():
    cfg = parse(school(hosts='["Schule.Example.ORG.", "*.Example.org", "[::1]", "*"]'))
    assert cfg.schools[0].hosts == ["schule.example.org", "*.example.org", "[::1]", "*"]


def test_school_needs_hosts_and_upstreams():
    assert error(school(hosts="[]")).key_path == "schools[0].hosts"
    assert error(school(upstreams="[]")).key_path == "schools[0].upstreams"


def test_burst_defaults_to_one_second_of_rate():
    cfg = parse(school(rate="2.5", client_rate="0.2") + school(
        name='"b"', hosts='["b.org"]', rate="10.0", burst="3"))
    assert (cfg.schools[0].burst, cfg.schools[0].client_burst) == (3, 1)
    assert cfg.schools[1].burst == 3
    assert parse(school()).schools[0].burst == 0


def test_burst_without_rate_is_an_error():
    assert error(school(burst="5")).key_path == "schools[0].burst"
    assert error(school(client_burst="5")).key_path == "schools[0].client_burst"


def test_pool_must_exist():
    exc = error(school(pool='"cloud"'))
    assert (exc.key_path, exc.message) == ("schools[0].pool", "no [[pools]] entry is named 'cloud'")
    cfg = parse('[[pools]]\nname = "cloud"\nmax_inflight = 5\n' + school(pool='"cloud"'))
    assert cfg.schools[0].pool == "cloud"


def test_pool_names_are_unique():
    pools = '[[pools]]\nname = "p"\nmax_inflight = 5\n' * 2
    assert error(pools + SCHOOL).key_path == "pools[1].name"


def test_templates_directory(tmp_path):
    (tmp_path / "tpl").mkdir()
    cfg = parse(school(templates='"tpl"'), base_dir=str(tmp_path))
    assert cfg.schools[0].templates == str(tmp_path / "tpl")
    assert error(school(templates='"nope"'), base_dir=str(tmp_path)).key_path == (
        "schools[0].templates")


# --------------------------------------------------------------------- server


@pytest.mark.parametrize(("entry", "ok"), [
    ("10.0.0.0/8", True), ("192.168.1.5", True), ("fd00::/8", True), ("::1", True),
    ("10.0.0.1/8", False), ("10.0.0.0/33", False), ("proxy.lan", False),
])
def test_trusted_proxies(entry, ok):
    text = f'[server]\ntrusted_proxies = ["{entry}"]\n' + SCHOOL
    if ok:
        assert parse(text).server.trusted_proxies == [entry]
    else:
        assert error(text).key_path == "server.trusted_proxies[0]"


def test_tls_cert_and_key_together(tmp_path):
    exc = error('[server]\ntls_cert = "c.pem"\n' + SCHOOL, base_dir=str(tmp_path))
    assert exc.key_path == "server.tls_cert"
    assert "both or neither" in exc.message
    assert error('[server]\ntls_key = "k.pem"\n' + SCHOOL).key_path == "server.tls_key"


def test_tls_files_must_exist(tmp_path):
    exc = error('[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n' + SCHOOL,
                base_dir=str(tmp_path))
    assert (exc.key_path, exc.message) == (
        "server.tls_cert", f"no such file: {str(tmp_path / 'c.pem')!r}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode")
def test_tls_files_must_be_readable(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "c.pem").chmod(0)
    exc = error('[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n' + SCHOOL,
                base_dir=str(tmp_path))
    assert exc.message.startswith("file is not readable")


@pytest.fixture
def cert_pair(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )
    return tmp_path


def test_tls_pair_loads_and_paths_become_absolute(cert_pair):
    text = '[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n' + SCHOOL
    cfg = parse(text, base_dir=str(cert_pair))
    assert cfg.server.tls_cert == str(cert_pair / "cert.pem")
    assert cfg.server.tls_key == str(cert_pair / "key.pem")


def test_tls_files_that_are_not_a_pair(cert_pair):
    (cert_pair / "junk.pem").write_text("not a key\n")
    exc = error('[server]\ntls_cert = "cert.pem"\ntls_key = "junk.pem"\n' + SCHOOL,
                base_dir=str(cert_pair))
    assert exc.key_path == "server.tls_cert"
    assert exc.message.startswith("cannot load with tls_key: ")


def test_redis_url_and_retry_bounds():
    assert error('[redis]\nurl = "localhost:6379"\n' + SCHOOL).key_path == "redis.url"
    assert parse('[redis]\nurl = "rediss://r:6380/1"\n' + SCHOOL).redis.url
    exc = error("[admission]\nmin_retry = 30\nmax_retry = 10\n" + SCHOOL)
    assert exc.key_path == "admission.min_retry"


def test_line_grace_periods_outlast_the_pages_poll_interval():
    adm = parse(SCHOOL).admission
    assert (adm.waiting_grace, adm.called_grace, adm.call_ahead) == (30.0, 15.0, 2.0)
    adm = parse("[admission]\nwaiting_grace = 60\ncalled_grace = 11\ncall_ahead = 0\n"
                + SCHOOL).admission
    assert (adm.waiting_grace, adm.called_grace, adm.call_ahead) == (60.0, 11.0, 0.0)
    for key in ("waiting_grace", "called_grace"):
        exc = error(f"[admission]\n{key} = 10\n" + SCHOOL)
        assert exc.key_path == f"admission.{key}"
        assert "poll" in exc.message
    assert error("[admission]\ncall_ahead = -1\n" + SCHOOL).key_path == "admission.call_ahead"


def test_ticket_secret_must_not_be_guessable():
    assert error('[admission]\nsecret = "short"\n' + SCHOOL).key_path == "admission.secret"
    assert parse('[admission]\nsecret = "' + "k" * 16 + '"\n' + SCHOOL).admission.secret
    assert parse(SCHOOL).admission.secret == ""  # a random per-process key


# -------------------------------------------------------------------- classes


def classes(*entries: str) -> str:
    return SCHOOL + "".join(f'[[classes]]\nname = "{n}"\n{rest}' for n, rest in entries)


def test_class_names_are_unique():
    exc = error(classes(("x", 'match = { paths = ["/a"] }\n'), ("x", "")))
    assert exc.key_path == "classes[1].name"


def test_only_one_class_without_match():
    exc = error(classes(("x", ""), ("y", 'match = { paths = ["/a"] }\n'), ("z", "")))
    assert (exc.key_path, exc.message) == (
        "classes[2].match", "only one class may omit match; classes[0] ('x') does too")


def test_fallback_class_may_stand_anywhere():
    cfg = parse(classes(("rest", ""), ("bulk", 'match = { paths = ["/import"] }\n')))
    assert [c.name for c in cfg.classes] == ["rest", "bulk"]


def test_empty_match_is_refused():
    assert error(classes(("x", "match = {}\n"))).key_path == "classes[0].match"


def test_match_is_normalised():
    cfg = parse(classes(("x", 'match = { methods = ["post", "Put"], '
                              'headers = { "X-Exam" = "*" } }\n')))
    match = cfg.classes[0].match
    assert match is not None
    assert (match.methods, match.headers) == (["POST", "PUT"], {"x-exam": "*"})


@pytest.mark.parametrize(("match", "key"), [
    ('{ methods = ["GE T"] }', "classes[0].match.methods[0]"),
    ('{ methods = ["GET", ""] }', "classes[0].match.methods[1]"),
    ('{ paths = ["api"] }', "classes[0].match.paths[0]"),
    ('{ paths = ["/a b"] }', "classes[0].match.paths[0]"),
    ('{ paths = ["/a?x=1"] }', "classes[0].match.paths[0]"),
    ('{ paths = ["/ä"] }', "classes[0].match.paths[0]"),
    ('{ headers = { "X Bad" = "1" } }', "classes[0].match.headers"),
    ('{ headers = { "X-A" = "a\\nb" } }', "classes[0].match.headers.X-A"),
    ('{ headers = { "X-A" = "1", "x-a" = "2" } }', "classes[0].match.headers"),
])
def test_match_fields_are_checked(match, key):
    assert error(classes(("x", f"match = {match}\n"))).key_path == key


def window(**fields: str) -> str:
    return classes(("x", "[[classes.windows]]\n" + "".join(
        f"{k} = {v}\n" for k, v in fields.items())))


def test_window_defaults_and_a_valid_window():
    cfg = parse(window(start='"07:30"', end='"16:00"', tz='"Europe/Berlin"', max_share="0.1"))
    w = cfg.classes[0].windows[0]
    assert (w.days, w.start, w.end, w.tz, w.max_share) == (
        ["mon", "tue", "wed", "thu", "fri"], "07:30", "16:00", "Europe/Berlin", 0.1)


@pytest.mark.parametrize(("start", "end"), [("22:00", "06:00"), ("00:00", "24:00")])
def test_overnight_and_whole_day_windows(start, end):
    w = parse(window(start=f'"{start}"', end=f'"{end}"')).classes[0].windows[0]
    assert (w.start, w.end) == (start, end)


@pytest.mark.parametrize(("fields", "key"), [
    ({"start": '"7:30"'}, "start"),
    ({"start": '"24:00"'}, "start"),
    ({"end": '"16:60"'}, "end"),
    ({"end": '"16:00:00"'}, "end"),
    ({"start": '"24:00"', "end": '"07:30"'}, "start"),
    ({"end": '"24:01"'}, "end"),
    ({"start": '"08:00"', "end": '"08:00"'}, "end"),
    ({"tz": '"Europe/Berln"'}, "tz"),
    ({"tz": '"/etc/passwd"'}, "tz"),
    ({"tz": '""'}, "tz"),
    ({"days": "[]"}, "days"),
    ({"days": '["mon", "mon"]'}, "days"),
])
def test_window_fields_are_checked(fields, key):
    assert error(window(**fields)).key_path == f"classes[0].windows[0].{key}"


def test_effective_classes():
    assert [c.name for c in effective_classes(parse(SCHOOL))] == [
        c.name for c in default_classes()]
    cfg = parse(classes(("only", "")))
    assert [c.name for c in effective_classes(cfg)] == ["only"]


# -------------------------------------------------------------------- example


def _leaf_keys(tp: msgspec.inspect.Type, seen: set[type]) -> set[str]:
    """Every key name any struct reachable from ``tp`` accepts."""
    if isinstance(tp, msgspec.inspect.StructType):
        if tp.cls in seen:
            return set()
        seen.add(tp.cls)
        keys = set()
        for f in tp.fields:
            keys.add(f.encode_name)
            keys |= _leaf_keys(f.type, seen)
        return keys
    if isinstance(tp, msgspec.inspect.UnionType):
        return set().union(*(_leaf_keys(t, seen) for t in tp.types))
    if isinstance(tp, msgspec.inspect.ListType | msgspec.inspect.DictType):
        inner = tp.item_type if isinstance(tp, msgspec.inspect.ListType) else tp.value_type
        return _leaf_keys(inner, seen)
    return set()


def test_example_config_loads_and_shows_every_key():
    cfg = load_config(EXAMPLE)
    assert [s.name for s in cfg.schools] == ["gsg", "igs-linden"]
    assert len(cfg.schools[1].upstreams) == 2
    bulk = next(c for c in cfg.classes if c.name == "bulk")
    w = bulk.windows[0]
    assert (w.days, w.start, w.end, w.tz, w.max_share) == (
        ["mon", "tue", "wed", "thu", "fri"], "07:30", "16:00", "Europe/Berlin", 0.1)
    text = EXAMPLE.read_text()
    keys = _leaf_keys(msgspec.inspect.type_info(schema_module.Config), set())
    # Sections appear as [name] / [[name]] headers, keys as "name =" (some
    # commented out, such as TLS files that would not exist on this machine).
    def shown(key: str) -> bool:
        as_key = rf"(^#?\s*|[{{,]\s*){re.escape(key)}\s*="
        as_table = rf"^\[\[?([\w.]+\.)?{re.escape(key)}\]"
        return bool(re.search(as_key, text, re.M) or re.search(as_table, text, re.M))

    assert sorted(k for k in keys if not shown(k)) == []


# ------------------------------------------------------------ request buffering


def test_request_buffering_defaults():
    cfg = parse(SCHOOL)
    s = cfg.schools[0]
    assert (s.request_buffering, s.request_buffer_memory, s.request_buffer_max,
            s.response_buffer) == (True, 65536, 1 << 30, None)
    assert (cfg.timeouts.client_body_total, cfg.timeouts.client_body_min_rate) == (60.0, 1024)
    assert cfg.server.temp_dir == ""


def test_request_buffering_keys_are_checked():
    assert error(school(request_buffer_memory="0")).key_path == "schools[0].request_buffer_memory"
    assert error(school(response_buffer="0")).key_path == "schools[0].response_buffer"
    assert error(school(request_buffering='"yes"')).key_path == "schools[0].request_buffering"
    assert error("[timeouts]\nclient_body_total = 0\n" + SCHOOL).key_path == (
        "timeouts.client_body_total")


def test_request_buffer_memory_above_request_buffer_max_is_a_warning():
    # Valid (the config loads and runs), but the memory above request_buffer_max
    # holds no more bodies whole: a warning naming the key, never an error.
    text = SCHOOL + school(name='"b"', hosts='["b.example.org"]',
                           request_buffer_memory="1048576", request_buffer_max="4096")
    cfg = parse(text)
    assert (cfg.schools[1].request_buffer_memory, cfg.schools[1].request_buffer_max) == (
        1048576, 4096)
    (warning,) = config_warnings(cfg, "gw.toml")
    assert warning == ConfigWarning(
        "gw.toml", "schools[1].request_buffer_memory",
        "1048576 is larger than request_buffer_max (4096): bodies are received whole only "
        "up to 4096 bytes, yet one that streams on past that still holds up to 1048576 "
        "bytes in memory; set it to 4096 or less")
    assert str(warning) == f"gw.toml: schools[1].request_buffer_memory: {warning.message}"


def test_request_buffer_max_below_the_default_memory_is_a_warning():
    # request_buffer_memory keeps its default (65536) here.
    (warning,) = config_warnings(parse(school(request_buffer_max="200")), "gw.toml")
    assert (warning.key_path, warning.message.split(":")[0]) == (
        "schools[0].request_buffer_memory",
        "65536 is larger than request_buffer_max (200)")


@pytest.mark.parametrize("fields", [
    {},                                                          # the defaults
    {"request_buffer_memory": "4096", "request_buffer_max": "4096"},
    {"request_buffer_memory": "1024", "request_buffer_max": "4096"},
    # Nothing is held while request buffering is off.
    {"request_buffering": "false", "request_buffer_max": "200"},
])
def test_no_warning_when_request_buffer_memory_fits(fields):
    assert config_warnings(parse(school(**fields)), "gw.toml") == []


def test_example_config_has_no_warnings():
    assert config_warnings(load_config(EXAMPLE), str(EXAMPLE)) == []


def test_response_spooling_defaults_and_checks():
    cfg = parse(SCHOOL)
    # nginx's proxy_max_temp_file_size and send_timeout.
    assert cfg.schools[0].response_buffer_max == 1 << 30
    assert cfg.timeouts.client_send == 60.0
    assert parse(school(response_buffer_max="0")).schools[0].response_buffer_max == 0
    assert error(school(response_buffer_max="-1")).key_path == "schools[0].response_buffer_max"
    assert error("[timeouts]\nclient_send = 0\n" + SCHOOL).key_path == "timeouts.client_send"


def test_temp_dir_must_be_a_directory_and_becomes_absolute(tmp_path):
    (tmp_path / "spool").mkdir()
    cfg = parse('[server]\ntemp_dir = "spool"\n' + SCHOOL, base_dir=str(tmp_path))
    assert cfg.server.temp_dir == str(tmp_path / "spool")
    exc = error('[server]\ntemp_dir = "nope"\n' + SCHOOL, base_dir=str(tmp_path))
    assert (exc.key_path, exc.message) == (
        "server.temp_dir", f"no such directory: {str(tmp_path / 'nope')!r}")


# -- secrets kept in files of their own (admin_token_file, secret_file) ------------

SECRET_CONFIG = """
[server]
admin_listen = "0.0.0.0:9100"
admin_token_file = "token"

[admission]
secret_file = "/ABS/ticket"

[[schools]]
name = "a"
hosts = ["a.example"]
upstreams = ["127.0.0.1:9000"]
"""


def secret_files(tmp_path, token="0123456789abcdef-token\n", secret="s" * 32 + "\n",
                 mode=0o600) -> Path:
    (tmp_path / "token").write_text(token)
    (tmp_path / "ticket").write_text(secret)
    for name in ("token", "ticket"):
        (tmp_path / name).chmod(mode)
    path = tmp_path / "gateway.toml"
    path.write_text(SECRET_CONFIG.replace("/ABS", str(tmp_path)))
    path.chmod(0o644)  # the config itself world-readable, as DynamicUser needs
    return path


def test_secrets_are_read_from_their_files_at_load_and_again_at_reload(tmp_path):
    path = secret_files(tmp_path)
    cfg = load_config(path)
    # The trailing newline an editor adds is not part of the secret.
    assert cfg.server.admin_token == "0123456789abcdef-token"
    assert cfg.server.admin_token_file == str(tmp_path / "token")  # relative to the config
    assert cfg.admission.secret == "s" * 32
    # A reload (SIGHUP) reads the files again: a new token applies.
    (tmp_path / "token").write_text("fedcba9876543210-new")
    assert load_config(path).server.admin_token == "fedcba9876543210-new"


@pytest.mark.parametrize("change, key, message", [
    ({"mode": 0o644}, "server.admin_token_file", "readable by every user"),
    ({"token": ""}, "server.admin_token_file", "is empty"),
    ({"token": "short\n"}, "server.admin_token", "at least 16 bytes"),
    ({"secret": "short"}, "admission.secret", "at least 16 bytes"),
])
def test_a_bad_secret_file_is_refused_with_its_key(tmp_path, change, key, message):
    path = secret_files(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key_path == key and message in str(err.value), str(err.value)


def test_a_missing_secret_file_and_both_forms_are_refused(tmp_path):
    path = secret_files(tmp_path)
    (tmp_path / "ticket").unlink()
    with pytest.raises(ConfigError, match=r"admission\.secret_file.*cannot read"):
        load_config(path)
    path = secret_files(tmp_path)
    path.write_text(path.read_text().replace('admin_token_file = "token"',
                                             'admin_token_file = "token"\n'
                                             'admin_token = "0123456789abcdef"'))
    with pytest.raises(ConfigError, match=r"server\.admin_token_file.*not both"):
        load_config(path)
