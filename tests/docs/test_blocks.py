"""The docs' blocks, without a gateway: what is not run says why, and may say so.

tests/docs/test_examples.py runs every shell block of the README and of docs/ against
a live gateway. A block is left out only when its note says it is illustrative because
it needs Docker, Kubernetes, another host or a package install; these tests list the
blocks left out (one test id each) and fail on any other reason, on a note the runner
does not understand, and on commands hidden in a block that is not a shell block.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from basic_inference_server.client.cli import build_parser
from tests.conftest import ROOT
from tests.docs.markdown import ALLOWED_REASONS, Block, directive, expectations, pages, read_blocks
from tests.docs.shell import check, run_script

BLOCKS = [block for page in pages(ROOT) for block in read_blocks(ROOT / page, page)]
ILLUSTRATIVE = [block for block in BLOCKS if block.illustrative is not None]


@pytest.mark.parametrize("block", ILLUSTRATIVE,
                         ids=[f"{b.where} {b.illustrative}" for b in ILLUSTRATIVE])
def test_an_illustrative_block_needs_what_the_test_machine_cannot_give(block: Block) -> None:
    assert block.shell, f"{block.where}: only a shell block can be illustrative"
    assert ALLOWED_REASONS.match(block.illustrative or ""), (
        f"{block.where}: a block may be left out only when it needs Docker, Kubernetes, "
        f"another host or a package install, not: {block.illustrative!r}")
    assert not block.directives, f"{block.where}: an illustrative block is not run"


def test_every_note_is_understood() -> None:
    wrong = []
    for block in BLOCKS:
        for note in block.directives:
            try:
                parsed = directive(note)
            except ValueError as exc:
                wrong.append(f"{block.where}: {exc}")
                continue
            if parsed.kind == "python" and block.lang != "python":
                wrong.append(f"{block.where}: a python note on a {block.lang or 'plain'} block")
            if parsed.kind == "merge" and block.lang != "json":
                wrong.append(f"{block.where}: merge takes a json block")
    assert not wrong, "\n".join(wrong)


def test_no_command_hides_in_a_block_that_is_not_run() -> None:
    hidden = [f"{b.where} ({b.lang or 'no language'})" for b in BLOCKS if b.looks_like_shell()]
    assert not hidden, ("commands outside a bash block (tag it bash so that it runs, or "
                        f"make it a synopsis): {hidden}")


def test_runnable_examples_call_the_demo_gateway_on_its_port() -> None:
    wrong = [f"{b.where}: port {port}" for b in BLOCKS if b.shell and b.illustrative is None
             for port in re.findall(r"\b(?:localhost|127\.0\.0\.1):(\d+)", b.text)
             if port != "5002"]
    assert not wrong, "the README starts the gateway on 5002:\n" + "\n".join(wrong)


def test_every_shown_output_is_read_as_an_expectation() -> None:
    """A ``# {`` or ``# HTTP/`` comment the reader sees as an output is one the test checks."""
    unread = []
    for block in BLOCKS:
        if not block.shell or block.illustrative is not None:
            continue
        shown = [n for n, line in enumerate(block.text.splitlines(), 1)
                 if re.match(r"\s*#\s*(\{|HTTP/)", line)]
        read = [(e.before, e.end) for e in expectations(block.text)]
        unread += [f"{block.where} line {n}" for n in shown
                   if not any(first <= n <= last for first, last in read)]
    assert not unread, unread


def test_every_bis_command_the_docs_name_exists() -> None:
    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    named = {(page, word) for page in pages(ROOT)
             for word in re.findall(r"(?:^|`|\$\(|\n)bis ([a-z]+)",
                                    (ROOT / page).read_text(encoding="utf-8"))}
    missing = sorted(f"{page}: bis {word}" for page, word in named if word not in commands)
    assert not missing, f"the docs name bis commands that do not exist: {missing}"


def test_the_readme_and_endpoints_page_show_the_same_first_endpoint() -> None:
    """docs/endpoints.md repeats the README's endpoint, which the README's examples run."""
    def sentiment(page: str) -> str:
        return next(b.text for b in read_blocks(ROOT / page, page)
                    if "file endpoints/sentiment.py" in b.directives or
                    "class SentimentWorker" in b.text)

    assert sentiment("docs/endpoints.md") == sentiment("README.md")


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """An HTTP server that answers every request 401 with a JSON error."""
    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"ERROR": "no token", "ERROR_TYPE": "unauthorized"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("script", "problem"), [
    ("curl -s URL\n", "got HTTP 401, which the doc does not show"),
    ("curl -s URL   # 401 unauthorized\n", None),
    ("curl -s URL\n# {\"ERROR\": \"...\", \"ERROR_TYPE\": \"unauthorized\"}\n", None),
    ("curl -s URL\n# {\"ERROR_TYPE\": \"forbidden\", \"KEY\": \"...\"}\n",
     "ERROR_TYPE is 'unauthorized', the doc shows 'forbidden'"),
    ("curl -si URL\n# HTTP/1.1 200 OK\n# Retry-After: 3\n", "the doc shows 200"),
    ("curl -sf URL || echo refused\n", None),
    ("X=1\nfalse\n", "exit status 1"),
])
def test_a_block_fails_where_its_output_differs_from_the_doc(
        script: str, problem: str | None, refusing_server: int, tmp_path: Path) -> None:
    script = script.replace("URL", f"localhost:{refusing_server}/list_servers")
    ran = run_script(script, tmp_path, tmp_path, dict(os.environ), timeout=30)
    problems = ([f"exit status {ran.code}"] if ran.code else []) + check(ran, expectations(script))
    if problem is None:
        assert not problems, (problems, ran.output())
    else:
        assert any(problem in p for p in problems), (problems, ran.output())


def test_a_page_session_keeps_its_variables_from_block_to_block(tmp_path: Path) -> None:
    first = run_script('KEY=$(echo bis_x)\nexport URL="a b"\n', tmp_path, tmp_path,
                       dict(os.environ), timeout=30)
    second = run_script('echo "$KEY $URL"\n', tmp_path, tmp_path, dict(os.environ), timeout=30)
    assert (first.code, second.code, second.stdout) == (0, 0, "bis_x a b\n")
