"""The five-minute deployment (issue 10): the systemd unit in deploy/ passes
``systemd-analyze verify`` and asks for what a school server needs, and the
project installs from a wheel (no editable checkout) with its compiled
modules and runs from there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.cli import _parser
from gateway.config import parse_config
from tests.support.clients import http_client, wait_until
from tests.support.procs import REPO_ROOT, free_port, gateway_config, port_open

UNIT = REPO_ROOT / "deploy" / "schoolgate.service"
EXAMPLE = REPO_ROOT / "examples" / "gateway.toml"
INSTALLED = "/opt/schoolgate/bin/schoolgate"  # where the README's install puts it


def unit_service() -> dict[str, list[str]]:
    """The [Service] section: each key with every value it is given (systemd
    keys may repeat, which configparser does not model)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_asks_for_what_a_school_server_needs():
    service = unit_service()
    exec_start = service["ExecStart"][0].split()
    assert exec_start[:2] == [INSTALLED, "run"]
    # The arguments are ones `schoolgate` accepts.
    args = _parser().parse_args(exec_start[1:])
    assert (args.command, args.file) == ("run", "/etc/schoolgate/gateway.toml")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    # Not root, and binding ports below 1024 the one privilege kept.
    assert service.get("DynamicUser") == ["yes"] or service.get("User", ["root"]) != ["root"]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")]:
        assert service[key] == [value], key
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6",
                                                                  "AF_UNIX"}
    assert int(service["LimitNOFILE"][0]) >= 65536
    # SIGTERM to the main process only, which drains its workers itself.
    assert service["KillMode"] == ["mixed"]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    # verify wants ExecStart's binary to exist: an executable stands in for
    # the installed one, and nothing else in the unit is changed.
    binary = tmp_path / "schoolgate"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    unit = tmp_path / "schoolgate.service"
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 1
    unit.write_text(text.replace(INSTALLED, str(binary)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings to verify: none is allowed.
    assert [line for line in (result.stdout + result.stderr).splitlines()
            if "schoolgate" in line] == []


# ---------------------------------------------------------------- a wheel install


@pytest.mark.slow
def test_wheel_install_runs_without_the_checkout(tmp_path, upstream):
    dist = tmp_path / "dist"
    # The user's path: pip builds the wheel (fetching the build requirements
    # into an isolated environment), native modules compiled into it.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps",
                            "-w", str(dist), "-q"], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("schoolgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pyx in sorted((REPO_ROOT / "native").glob("*.pyx")):
        assert any(n.startswith(f"gateway/_native/{pyx.stem}.") and n.endswith(".so")
                   for n in names), f"{pyx.stem} is not compiled into the wheel"
        assert f"gateway/_native/{pyx.stem}.pyi" in names
    assert any(n.startswith("gateway/waiting/templates/") for n in names)

    # The dependencies come from this environment (already tested here);
    # schoolgate itself only from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                              "--no-index", "--ignore-installed", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    schoolgate = str(venv / "bin" / "schoolgate")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        # Outside the checkout, so that nothing can be imported from it.
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)

    where = run(str(venv / "bin" / "python"), "-c",
                "import gateway, gateway._native.head as h; print(gateway.__file__); "
                "print(h.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout

    helped = run(schoolgate, "run", "--help")
    assert helped.returncode == 0 and "SCHOOLGATE_LOG" in helped.stdout
    checked = run(schoolgate, "check", str(EXAMPLE))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"schoolgate: configuration file {EXAMPLE} test is successful\n"

    # And it serves: a request through the installed gateway reaches the upstream.
    config = tmp_path / "gateway.toml"
    port = free_port()
    config.write_text(gateway_config([upstream.addr], port=port))
    with open(tmp_path / "installed.log", "wb") as log:
        proc = subprocess.Popen([schoolgate, "run", str(config)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: port_open(port) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, (tmp_path / "installed.log").read_text()
        with http_client(f"http://127.0.0.1:{port}") as client:
            assert client.get("/echo").status_code == 200
        assert upstream.requests("/echo") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_readme_deployment_config_and_paths_are_the_ones_shipped():
    # The section a school admin follows: its config passes the checks, and
    # the paths it installs to are the unit's.
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Deploy on a school server in five minutes\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(toml.encode(), "/etc/schoolgate/gateway.toml")
    assert cfg.schools[0].upstreams == ["10.0.0.5:80"]
    # It protects the server: a limit, not a pass-through (0 means none).
    assert cfg.schools[0].max_inflight > 0
    assert "python3 -m venv /opt/schoolgate" in section
    assert f"{INSTALLED} check /etc/schoolgate/gateway.toml" in section
    assert "cp deploy/schoolgate.service /etc/systemd/system/" in section
    assert "systemctl enable --now schoolgate" in section
    assert "systemctl reload schoolgate" in section
    assert "journalctl -u schoolgate" in section
    assert "/etc/schoolgate/gateway.toml" in unit_service()["ExecStart"][0]


def test_unit_credentials_match_the_config_keys_that_read_them(tmp_path):
    # The unit's commented LoadCredential= lines, as an override enables
    # them: each one verifies, and the config keys the comments name read
    # /run/credentials/schoolgate.service/<name> as the gateway would
    # (files of the same name, mode 0400 as systemd makes them).
    text = UNIT.read_text()
    creds = dict(line.removeprefix("#LoadCredential=").split(":", 1)
                 for line in text.splitlines() if line.startswith("#LoadCredential="))
    assert set(creds) == {"tls.key", "admin_token", "ticket_secret"}
    run = "/run/credentials/schoolgate.service/"
    for key, name in [("tls_key", "tls.key"), ("admin_token_file", "admin_token"),
                      ("secret_file", "ticket_secret")]:
        assert f'{key} =\n# "{run}{name}"' in text or f'{key} = "{run}{name}"' in text, key
        assert f"{run}{name}" in EXAMPLE.read_text() or name == "tls.key", name
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    for name, value in [("admin_token", "0123456789abcdef-token\n"),
                        ("ticket_secret", "t" * 32 + "\n")]:
        (cred_dir / name).write_text(value)
        (cred_dir / name).chmod(0o400)
    config = f"""
[server]
listen = "127.0.0.1:{free_port()}"
admin_listen = "0.0.0.0:{free_port()}"
admin_token_file = "{cred_dir}/admin_token"

[admission]
secret_file = "{cred_dir}/ticket_secret"

[[schools]]
name = "a"
hosts = ["a.example"]
upstreams = ["127.0.0.1:9000"]
"""
    cfg = parse_config(config.encode(), "gateway.toml")
    assert cfg.server.admin_token == "0123456789abcdef-token"
    assert cfg.admission.secret == "t" * 32
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    binary = tmp_path / "schoolgate"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    enabled = text.replace(INSTALLED, str(binary))
    for name in creds:
        source = tmp_path / name
        source.write_text("x" * 32)
        source.chmod(0o600)
        enabled = enabled.replace(f"#LoadCredential={name}:{creds[name]}",
                                  f"LoadCredential={name}:{source}")
    unit = tmp_path / "schoolgate.service"
    unit.write_text(enabled)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert [line for line in (result.stdout + result.stderr).splitlines()
            if "schoolgate" in line] == []
