"""Finding the local process at the other end of a TCP connection (sock_diag, /proc)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from basic_inference_server.manager.control import json_depth
from basic_inference_server.manager.peers import peer_in_tree, socket_inode
from tests.conftest import wait_until

CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_the_owner_of_a_connection_is_found_in_its_tree():
    with socket.socket() as server, \
            subprocess.Popen(["sleep", "30"]) as bystander:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdout=subprocess.PIPE,
                              text=True) as child:
            try:
                conn, (addr, peer_port) = server.accept()
                assert child.stdout is not None and int(child.stdout.readline()) == peer_port
                server_end = ("127.0.0.1", port)
                assert socket_inode((addr, peer_port), server_end)
                assert peer_in_tree((addr, peer_port), server_end, child.pid)
                assert peer_in_tree(("::ffff:127.0.0.1", peer_port), server_end, child.pid)
                # Another process, another address or port, or no address: not the owner.
                wait_until(lambda: os.path.exists(f"/proc/{bystander.pid}/fd"))
                assert not peer_in_tree((addr, peer_port), server_end, bystander.pid)
                assert not peer_in_tree(("127.0.0.2", peer_port), server_end, child.pid)
                assert not peer_in_tree((addr, peer_port), ("127.0.0.1", port + 1), child.pid)
                assert not peer_in_tree(("::1", peer_port), server_end, child.pid)
                assert not peer_in_tree(("not an address", peer_port), server_end, child.pid)
                # The server's own end is not a client's: a lookup never matches a listener.
                assert socket_inode(server_end, ("127.0.0.1", 1)) is None
                conn.close()
            finally:
                child.kill()
                bystander.kill()


def test_json_depth_counts_containers():
    assert json_depth(1, 32) == 0
    assert json_depth({"a": [1, {"b": 2}]}, 32) == 3
    deep: dict = {}
    node = deep
    for _ in range(1000):
        node["x"] = {}
        node = node["x"]
    assert json_depth(deep, 32) == 33
