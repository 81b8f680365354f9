"""The generated admin token is kept across restarts until its file is deleted.

With no token configured, the first start writes one into ``<cache>/admin_token``;
later starts read it back (a restart loop keeps the operator's scripts working).
Deleting the file rotates it: the next start makes a new one and the old one no
longer opens the management API. Configuring a token removes the file.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ADMIN_TOKEN, gateway_env, spawn_gateway, wait_until, with_test_defaults
from tests.security.test_r07_private_files import mode, no_token_env

CONFIG = with_test_defaults({"CONFIG_ENDPOINTS": {"echo": {}}})


def start(workdir: Path, env: dict[str, str]) -> str:
    """Start the gateway in ``workdir``, make a management call with the configured
    token or the one in its cache folder, stop it; returns that token."""
    path = workdir / "_cache" / "admin_token"
    gw = spawn_gateway(workdir, CONFIG, env=env)
    try:
        gw.token = env.get("BIS_ADMIN_TOKEN") or wait_until(
            lambda: path.is_file() and path.read_text().strip(), timeout=30,
            ignore=(OSError,), message="the gateway wrote its admin token")
        gw.wait_ready(30)
        assert gw.get("/list_servers").status_code == 200
        return str(gw.token)
    finally:
        gw.stop()


def test_the_generated_token_is_kept_until_its_file_is_deleted(tmp_path):
    workdir = tmp_path / "gw"
    path = workdir / "_cache" / "admin_token"
    first = start(workdir, no_token_env())
    assert mode(path) == 0o600
    assert start(workdir, no_token_env()) == first  # a restart keeps it
    path.unlink()
    rotated = start(workdir, no_token_env())
    assert rotated != first and path.read_text().strip() == rotated
    # A configured token wins, and the generated file, no longer valid, goes.
    assert start(workdir, gateway_env()) == ADMIN_TOKEN
    assert not path.exists()
