"""Row 13: the image runs as a non-root user, run.sh passes the token by name only, and
a cache folder the gateway cannot own (a volume an older root image made) stops the
start with exit code 78 and the exact command that fixes it.

No Docker engine here: the Dockerfile is read, run.sh runs against a stand-in
``docker`` that records its arguments, and the start-up check runs for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid

from tests.conftest import ROOT, spawn_gateway, with_test_defaults


def test_the_image_runs_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "the Dockerfile sets no USER"
    last = users[-1].split(":")[0]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    last = args.get(last.strip("${}"), last)
    assert last not in ("root", "0"), users
    # The CMD comes after the USER: nothing runs as root once the image starts.
    assert text.rindex("USER") < text.rindex("CMD")


def test_run_sh_passes_the_token_by_name_only(tmp_path):
    token = "tok-" + uuid.uuid4().hex
    record = tmp_path / "docker-args"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    # The stand-in records its argv and the token it would see, then ends the loop.
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n'
                    f'echo "ENV=$BIS_ADMIN_TOKEN" >> {record}\nkill -TERM $PPID\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "BIS_ADMIN_TOKEN": token}
    subprocess.run(["bash", str(ROOT / "run.sh"), "example/image"], env=env, timeout=30,
                   check=False)
    args = record.read_text().splitlines()
    assert "-e" in args and "BIS_ADMIN_TOKEN" in args, args
    assert all(token not in a for a in args[:-1]), "the token is on docker's command line"
    assert args[-1] == f"ENV={token}"


def test_a_cache_folder_of_another_user_stops_the_start_with_the_fix(tmp_path):
    if os.getuid() != 0:
        # Only root can make a folder belong to someone else; the check is the same.
        raise AssertionError("this test needs to run as root (as CI does)")
    for case in ("folder", "file"):
        workdir = tmp_path / case
        cache = workdir / "_cache"
        cache.mkdir(parents=True)
        if case == "folder":
            os.chown(cache, 12345, 12345)
        else:
            (cache / "jobs.sqlite3").write_bytes(b"")
            os.chown(cache / "jobs.sqlite3", 12345, 12345)
        gw = spawn_gateway(workdir, with_test_defaults({"CONFIG_ENDPOINTS": {"echo": {}}}))
        try:
            assert gw.proc.wait(timeout=30) == 78
        finally:
            gw.stop()
        log = gw.log_text()
        assert "chown -R 0:0" in log and str(cache.resolve()) in log, log
