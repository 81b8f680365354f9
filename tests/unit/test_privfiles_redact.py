"""Private files, masked URLs and the listen-address check."""

from __future__ import annotations

import os
import stat

from basic_inference_server.hosts import check_host
from basic_inference_server.privfiles import open_private, write_private
from basic_inference_server.redact import mask_text, mask_url


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_writes(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    for opener in (lambda: open_private(link, "a"), lambda: open_private(link, "w")):
        try:
            opener().close()
        except OSError:
            pass
        else:
            raise AssertionError("opened a file through a symlink")
    assert target.read_text() == "x"
    write_private(tmp_path / "secret", "s")
    assert mode(tmp_path / "secret") == 0o600


def test_masking():
    assert mask_url("amqps://u:p%40ss@h:5671/v?prefix=x") == "amqps://u:***@h:5671/v?prefix=x"
    assert mask_url("rediss://:secret@h:6380/0") == "rediss://:***@h:6380/0"
    assert mask_url("sqlite:///tmp/x") == "sqlite:///tmp/x"
    assert mask_text("from redis://:a:b@h/0 and amqp://x:y@z/ too") == \
        "from redis://:***@h/0 and amqp://x:***@z/ too"


def test_host_check():
    for good in ("127.0.0.1", "::1", "0.0.0.0", "localhost", "my-host.example.org", "NO_HOST"):
        assert check_host(good) is None, good
    for bad in ("a\x00b", "é", "a" * 254, "", "a b", "-a", "a..b", "http://x"):
        assert check_host(bad), bad
