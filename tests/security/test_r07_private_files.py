"""Row 7: the cache folder is 0700 and its files 0600; writes do not follow symlinks.

Also the admin token: generated into ``<cache>/admin_token`` (0600) when none is set,
its path logged, never the token itself; it opens the management API.
"""

from __future__ import annotations

import os
import stat

from tests.conftest import assert_ok, gateway_env, wait_until


def no_token_env() -> dict[str, str]:
    """The test environment without any admin token: the gateway generates one."""
    return {k: v for k, v in gateway_env().items()
            if k not in ("BIS_ADMIN_TOKEN", "BIS_ADMIN_TOKEN_FILE")}


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_cache_files_are_private_and_links_are_not_followed(gateways, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    workdir = tmp_path / "gw0"
    cache = workdir / "_cache"
    cache.mkdir(parents=True)
    os.chmod(cache, 0o755)
    (cache / "health_events.jsonl").symlink_to(victim)
    gw = gateways({"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {"echo": {}}},
                  env=no_token_env())
    assert gw.workdir == workdir
    resp = gw.post("/jobs", {"SIGNATURE": "echo", "A": 1})
    assert resp.status_code == 202, resp.text
    job = resp.json()["JOB_ID"]
    wait_until(lambda: gw.get(f"/jobs/{job}").json()["STATUS"] == "done", timeout=30)
    wait_until(lambda: (cache / "health_samples.jsonl").exists(), timeout=30)
    assert mode(cache) == 0o700
    files = [p for p in cache.iterdir() if not p.is_symlink()]
    names = {p.name for p in files}
    assert {"jobs.sqlite3", "admin_token", "health_samples.jsonl"} <= names, names
    for path in files:
        assert mode(path) == 0o600, (path, oct(mode(path)))
    assert victim.read_text() == "untouched\n", "a write followed the planted symlink"


def test_a_token_is_generated_into_a_private_file(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}}, env=no_token_env())
    path = gw.workdir / "_cache" / "admin_token"
    token = path.read_text().strip()
    assert len(token) >= 32 and mode(path) == 0o600
    log = gw.log_text()
    assert str(path.resolve()) in log and token not in log
    wrong = gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 1},
                    headers={"Authorization": "Bearer wrong-token"})
    assert wrong.status_code == 401
    assert_ok(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 1},
                      headers={"Authorization": f"Bearer {token}"}))
