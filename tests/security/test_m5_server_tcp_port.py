"""Row M5: an endpoint server opens a TCP port only when ``TCP_PORT`` asks for it.

That port has none of the gateway's checks (API key, scopes, quotas), so any local user
could call the endpoint through it. By default a server listens on its Unix socket
alone (the front's way in): no process of its tree holds a listening TCP socket, and
``/list_servers`` shows no port, with ``HOST`` set too. With ``TCP_PORT: true`` the
port is there and answers.
"""

from __future__ import annotations

import psutil
import requests

from tests.conftest import assert_ok, wait_until

CONFIG = {"API_KEYS": True, "CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 2, "HOST": "127.0.0.1"},
    "direct": {"SERVER_CLASS": "echo", "TCP_PORT": True}}}


def tcp_listeners(info: dict) -> set[int]:
    """The ports of the listening TCP sockets held by a server's processes."""
    ports = set()
    for pid in [info["pid"], *info["worker_pids"]]:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                ports.add(conn.laddr.port)
    return ports


def test_only_a_server_that_asks_has_a_tcp_port(gateways):
    gw = gateways(CONFIG)
    echo = wait_until(lambda: (info := gw.server("echo"))["workers_ready"] == 2 and info,
                      timeout=30, message="both workers of echo are ready")
    direct = gw.server("direct")
    assert echo["port"] is None
    assert tcp_listeners(echo) == set()
    # The front still reaches it (over its Unix socket), with the key check in front.
    assert gw.run("echo", x=1).status_code == 401
    created = gw.post("/keys", {"TENANT": "t"})
    assert created.status_code == 201, created.text
    key = created.json()["KEY"]
    resp = requests.post(gw.url("/run"), json={"SIGNATURE": "echo", "x": 1}, timeout=10,
                         headers={"Authorization": f"Bearer {key}"})
    assert assert_ok(resp)["echo"] == {"x": 1}

    # Asked for: the port is there and takes calls directly (no key: nothing checks it).
    assert direct["port"] and tcp_listeners(direct) == {direct["port"]}
    resp = requests.post(f"http://127.0.0.1:{direct['port']}/run",
                         json={"SIGNATURE": "direct", "x": 2}, timeout=10)
    assert assert_ok(resp)["echo"] == {"x": 2}
    assert "TCP_PORT" in gw.log_text()  # the choice is logged as a warning
