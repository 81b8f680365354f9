"""Every shell example of the README and of docs/ runs against a live demo gateway.

The gateway is started as the README says, ``python run_gateway.py`` in a copy of the
repository's demo (``config_gateway.json``, ``endpoints/``, with ``scripts/`` and
``docs/`` for the examples that use them), on a free port with its endpoint servers on
free ports; the ``5002`` of the examples becomes that port. A page's blocks run in
order in one shell session (tests/docs/shell.py); a block must exit 0, print what the
doc shows under it (status, headers, keys, and the values of ``ERROR_TYPE``,
``STATUS`` and ``state``), and get no HTTP error the doc does not show. Notes above a
block (tests/docs/markdown.py) give a page the configuration it documents, write the
files it shows, or say why a block cannot run here. Pages with the same configuration
share a gateway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Gateway, S3Server, free_port, stop_all, wait_until
from tests.docs.markdown import (
    Block,
    Directive,
    console_to_bash,
    directive,
    expectations,
    expected_block,
    pages,
    read_blocks,
)
from tests.docs.shell import check, run_script
from tests.services import create_database, drop_database

DEMO_CONFIG = ROOT / "config_gateway.json"
# What a gateway's folder holds: the demo, and what the examples run from a clone.
COPIED = ("run_gateway.py", "endpoints", "scripts", "docs")
DEMO_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):5002\b")
ANY_PORT = re.compile(r"\b(?:localhost|127\.0\.0\.1):(\d+)")
BLOCK_TIMEOUT = 240.0


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in, objects key by key."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new terminal: no BIS_ variables, this Python first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIS_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class DemoGateways:
    """Demo gateways by configuration, started on first use, all stopped at the end."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.env = env  # of the gateways and the examples' shells
        self.shared: dict[str, Gateway] = {}
        self.started: list[Gateway] = []

    def get(self, overlay: dict[str, Any], fresh: bool) -> Gateway:
        key = json.dumps(overlay, sort_keys=True)
        gw = None if fresh else self.shared.get(key)
        if gw is None or gw.proc.poll() is not None:
            gw = self.start(overlay)
            if not fresh:
                self.shared[key] = gw
        return gw

    def start(self, overlay: dict[str, Any]) -> Gateway:
        folder = self.base / f"gw{len(self.started)}"
        folder.mkdir()
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, folder / name,
                                ignore=shutil.ignore_patterns("__pycache__", "_cache"))
            else:
                shutil.copy(source, folder / name)
        config = merged(json.loads(DEMO_CONFIG.read_text()), overlay)
        config.setdefault("FIRST_SERVER_PORT", 0)
        (folder / "config_gateway.json").write_text(json.dumps(config, indent=2))
        port, log = free_port(), folder / "gateway.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "run_gateway.py", "--host", "127.0.0.1", "--port", str(port)],
                cwd=folder, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        gw = Gateway(proc, port, folder, folder / "config_gateway.json", folder / "endpoints",
                     log, token=None)
        self.started.append(gw)
        token = folder / "_cache" / "admin_token"
        wait_until(lambda: token.exists() or proc.poll() is not None, timeout=60,
                   message="the gateway wrote _cache/admin_token")
        gw.token = token.read_text().strip() if token.exists() else None
        gw.wait_ready(timeout=120)
        # Ready as this gateway's own: a manager that lost its port to another process
        # exits, and that process may answer /health/ready; it refuses this admin token.
        resp = gw.get("/list_servers")
        assert resp.status_code == 200, (f"another process answers on port {port}: "
                                         f"{resp.status_code} {resp.text}\n{gw.log_tail(30)}")
        return gw

    def close(self) -> None:
        stop_all(self.started)


@pytest.fixture(scope="module")
def demo_gateways(tmp_path_factory: pytest.TempPathFactory, postgres_url: str,
                  s3_server: S3Server) -> Iterator[DemoGateways]:
    """The pages' gateways; ``LEDGER_URL`` names a database of their own, which
    docs/ledger.md's configuration reads (``env:LEDGER_URL``), and ``MODELS_URL`` a bucket
    of an S3-compatible server, docs/model-repository.md's (``env:MODELS_URL``)."""
    ledger = create_database(postgres_url)
    models = s3_server.repository(f"models-{uuid.uuid4().hex[:8]}")
    pool = DemoGateways(tmp_path_factory.mktemp("demo"),
                        clean_env(LEDGER_URL=ledger, MODELS_URL=models))
    try:
        yield pool
        pool.close()
    finally:
        drop_database(ledger)


class PageRun:
    """One page's blocks, in order, in one shell session."""

    def __init__(self, page: str, pool: DemoGateways, session: Path) -> None:
        self.page = page
        self.pool = pool
        self.session = session
        self.blocks = read_blocks(ROOT / page, page)
        self.overlay: dict[str, Any] = {}
        self.fresh = False
        self.gw: Gateway | None = None

    def gateway(self) -> Gateway:
        if self.gw is None:
            self.gw = self.pool.get(self.overlay, self.fresh)
        return self.gw

    def run(self) -> int:
        """Run every block that runs; the number run."""
        ran = 0
        for index, block in enumerate(self.blocks):
            if block.illustrative is not None:
                continue
            notes = [directive(note) for note in block.directives]
            for note in notes:
                self.apply(note, block)
            if block.shell or any(note.kind == "python" for note in notes):
                self.run_block(block, self.blocks[index + 1:index + 2])
                ran += 1
        return ran

    def apply(self, note: Directive, block: Block) -> None:
        if note.kind == "gateway":
            overlay = note.overlay
            if overlay is None:
                overlay = json.loads(block.text) if block.lang == "json" else {}
            self.overlay, self.fresh, self.gw = overlay, note.fresh, None
        elif note.kind == "file":
            target = self.gateway().workdir / note.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
        elif note.kind == "merge":
            target = self.gateway().workdir / note.path
            target.write_text(json.dumps(merged(json.loads(target.read_text()),
                                                json.loads(block.text)), indent=2))

    def run_block(self, block: Block, following: list[Block]) -> None:
        text = block.text
        if block.lang == "console":
            text = console_to_bash(text)
        elif not block.shell:
            text = f"python - <<'DOCS_PY'\n{text}DOCS_PY\n"
        others = [p for p in ANY_PORT.findall(text) if p != "5002"]
        assert not others, f"{block.where}: the demo gateway is on 5002, not {others}"
        gw = self.gateway()
        script = DEMO_PORT.sub(lambda m: f"{m.group(1)}:{gw.port}", text)
        expected = expectations(script)
        after = block.end
        if following and following[0].lang == "json" and not following[0].notes and \
                following[0].line - after <= 2:
            expected.append(expected_block(following[0], expected[-1].before if expected
                                           else 0, len(script.splitlines()) + 1))
        ran = run_script(script, gw.workdir, self.session, self.pool.env, BLOCK_TIMEOUT)
        problems = ([f"exit status {ran.code}"] if ran.code else []) + check(ran, expected)
        assert not problems, (f"{block.where}: the example does not do what the doc shows:\n- "
                              + "\n- ".join(problems) + f"\n--- the block ---\n{block.text}"
                              f"--- its output ---\n{ran.output()}\n{gw.log_tail(30)}")


def runnable(page: str) -> list[Block]:
    """The page's blocks that run: shell or python ones, not illustrative."""
    return [b for b in read_blocks(ROOT / page, page)
            if b.illustrative is None and (b.shell or "python" in b.directives)]


# Pages without an example to run (an overview, a glossary) have nothing to check here.
@pytest.mark.parametrize("page", [page for page in pages(ROOT) if runnable(page)])
def test_the_shell_examples_of_a_page_run_as_shown(page: str, demo_gateways: DemoGateways,
                                                   tmp_path: Path) -> None:
    assert PageRun(page, demo_gateways, tmp_path).run() == len(runnable(page))

