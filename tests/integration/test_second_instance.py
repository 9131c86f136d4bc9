"""A second gateway on an address that is already served refuses to start
(issue 10): workers bind with SO_REUSEPORT, so without the supervisor's
claim a second ``schoolgate run`` would silently share the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from gateway import exitcodes
from gateway.server.instance import AddressTaken, claim_addresses
from tests.support.clients import http_client
from tests.support.procs import REPO_ROOT, free_port, gateway_config

SERVED = "already served by another schoolgate process"


def run_second(path) -> subprocess.CompletedProcess[str]:
    # A second instance that wrongly started would serve until stopped: the
    # timeout turns that into a failure, and the kill reaps its group.
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the second instance kept running:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def get_ok(gw) -> bool:
    with http_client(gw.url) as client:
        return client.get("/echo").status_code == 200


def test_second_instance_on_a_served_port_refuses(make_gateway, upstream, tmp_path):
    admin = free_port()
    first = make_gateway(upstreams=[upstream], server={"admin_listen": f"127.0.0.1:{admin}"})
    second = tmp_path / "second.toml"
    second.write_text(first.config_path.read_text())

    result = run_second(second)

    assert result.returncode == exitcodes.LISTEN
    assert result.stderr == (f"schoolgate: {second}: server.listen: cannot listen on "
                             f"127.0.0.1:{first.port}: {SERVED} "
                             "(stop it first, or choose another address)\n")
    assert first.alive()
    assert get_ok(first)
    # Every request reached the first instance's workers: none is left over
    # for a second set sharing the port.
    assert upstream.requests("/echo") == 1


def test_second_instance_sharing_only_the_admin_port_refuses(make_gateway, upstream, tmp_path):
    admin = free_port()
    first = make_gateway(upstreams=[upstream], server={"admin_listen": f"127.0.0.1:{admin}"})
    second = tmp_path / "second.toml"
    second.write_text(gateway_config([upstream.addr],
                                     server={"admin_listen": f"127.0.0.1:{admin}"}))

    result = run_second(second)

    assert result.returncode == exitcodes.LISTEN
    assert f"server.admin_listen: cannot listen on 127.0.0.1:{admin}: {SERVED}" in result.stderr
    assert get_ok(first)


def test_address_is_free_again_once_the_first_has_stopped(make_gateway, upstream):
    first = make_gateway(upstreams=[upstream])
    assert first.stop() == 0
    again = make_gateway(gateway_config([upstream.addr], port=first.port))
    assert get_ok(again)


# ------------------------------------------------------ the claim, in-process


def test_claim_is_exclusive_until_closed():
    addr = f"127.0.0.1:{free_port()}"
    claim = claim_addresses([("server.listen", addr)])
    try:
        with pytest.raises(AddressTaken) as info:
            claim_addresses([("server.listen", addr)])
        assert info.value.reason.startswith(SERVED)
    finally:
        claim.close()
    claim_addresses([("server.listen", addr)]).close()


def test_claim_sees_a_listener_of_another_program_even_with_so_reuseport():
    # Another program listening with SO_REUSEPORT (as an older gateway's
    # workers do) would let a REUSEPORT bind join it; the probe does not.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        addr = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(AddressTaken) as info:
            claim_addresses([("server.listen", addr)])
    assert (info.value.key, info.value.reason) == ("server.listen", "Address already in use")


def test_a_failed_claim_keeps_no_lock():
    # The listener is free but the admin port is taken: nothing stays claimed.
    listen = f"127.0.0.1:{free_port()}"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        admin = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(AddressTaken) as info:
            claim_addresses([("server.listen", listen), ("server.admin_listen", admin)])
    assert info.value.key == "server.admin_listen"
    claim_addresses([("server.listen", listen)]).close()
