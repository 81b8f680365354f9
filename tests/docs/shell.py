"""Run a doc's shell block as the reader would, and check what it printed.

Each block runs in ``bash`` with ``set -euo pipefail``, in the gateway's folder. The
blocks of one page share one session: the variables a block sets are saved when it
ends and restored before the next one. Two things are recorded without changing what
the commands do: a DEBUG trap marks stdout with the line of each command, so output can
be matched to the command the doc shows it under, and ``curl`` is wrapped to record the
HTTP status of each call (``-D`` to a temporary file), so that an error answer the doc
does not show fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.docs.markdown import Expected

MARK = "\x1e"
# One line, so that line n of the block is line n + 1 of the script.
PRELUDE = (
    'set -euo pipefail; cd "$DOCS_GATEWAY_DIR"; '
    '_docs_base=" $(compgen -v | tr "\\n" " ") "; '
    '[ -f "$DOCS_STATE" ] && source "$DOCS_STATE"; '
    '_docs_save() { trap - DEBUG; local v; for v in $(compgen -v); do '
    'case "$_docs_base" in *" $v "*) continue;; esac; '
    'case "$v" in _docs*|BASH*|FUNCNAME|PIPESTATUS) continue;; esac; '
    'declare -p "$v" 2>/dev/null | sed "s/^declare /declare -g /"; done > "$DOCS_STATE"; }; '
    'trap _docs_save EXIT; '
    'curl() { local _h _a _f=- _rc=0; _h=$(mktemp); '
    'for _a in "$@"; do case "$_a" in --fail|--fail-with-body|-[!-]*f*) _f=f;; esac; done; '
    'command curl -D "$_h" "$@" || _rc=$?; '
    'printf "%s %s %s\\n" "$((BASH_LINENO[0] - 1))" '
    '"$(awk \'/^HTTP\\//{s=$2} END{print s}\' "$_h")" "$_f" >> "$DOCS_HTTP"; '
    'rm -f "$_h"; return $_rc; }; '
    f'trap \'printf "\\n{MARK}%d{MARK}\\n" "$((LINENO - 1))"\' DEBUG\n'
)
_MARKER = re.compile(f"\n?{MARK}(\\d+){MARK}\n")


@dataclass
class Ran:
    """What a block did: exit status, output per command line, HTTP statuses per line."""

    code: int
    stdout: str  # without the markers
    stderr: str
    segments: list[tuple[int, str]]  # (line in the block, what it printed), in order
    # (line in the block, status, whether curl was told to --fail on it), in order
    http: list[tuple[int, int, bool]]

    def output(self) -> str:
        return self.stdout[-4000:] + ("\n--- stderr ---\n" + self.stderr[-4000:]
                                      if self.stderr.strip() else "")


def run_script(script: str, folder: Path, workdir: Path, env: dict[str, str],
               timeout: float) -> Ran:
    """Run one block in the page's session (state and logs under ``workdir``)."""
    http_log = workdir / "http.log"
    http_log.write_text("")
    path = workdir / "block.sh"
    path.write_text(PRELUDE + script, encoding="utf-8")
    env = {**env, "DOCS_GATEWAY_DIR": str(folder), "DOCS_STATE": str(workdir / "state.sh"),
           "DOCS_HTTP": str(http_log)}
    try:
        done = subprocess.run(["bash", str(path)], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = -1
        out = _text(exc.stdout)
        err = _text(exc.stderr) + f"\n(killed after {timeout:g} s)"
    parts = _MARKER.split(out)
    segments = [(int(parts[k]), parts[k + 1]) for k in range(1, len(parts) - 1, 2)]
    http = [(int(line), int(status), flag == "f") for line, status, flag in
            (row.split(" ") for row in http_log.read_text().splitlines())
            if status.isdigit()]
    return Ran(code, "".join(parts[::2]), err, segments, http)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def check(ran: Ran, expected: list[Expected]) -> list[str]:
    """What in ``ran`` differs from what the block shows; empty when it all holds."""
    problems: list[str] = []
    for exp in expected:
        printed = [text for line, text in ran.segments if exp.covers(line)]
        statuses = [status for line, status, _ in ran.http if exp.covers(line)]
        shown = exp.shown.strip()
        if exp.status is not None:
            if not statuses:
                problems.append(f"no HTTP answer under {shown!r}")
            elif statuses[-1] != exp.status:
                problems.append(f"the doc shows {exp.status}, the gateway answered "
                                f"{statuses[-1]}: {shown!r}")
        output = printed[-1] if printed else ""
        missing = [h for h in exp.headers if not re.search(
            rf"^{re.escape(h)}:", output, re.M | re.I)]
        if missing:
            problems.append(f"headers {missing} missing from {output[:600]!r}")
        if exp.keys:
            problems.extend(_check_json(exp, output))
    for line, status, fails in ran.http:
        # With --fail, an error answer is curl's exit status, which the script handles.
        if status >= 400 and not fails and not any(e.covers(line) and (e.status == status or e.values.get(
                "ERROR_TYPE")) for e in expected):
            problems.append(f"line {line} got HTTP {status}, which the doc does not show")
    return problems


def _check_json(exp: Expected, output: str) -> list[str]:
    body = _last_json_object(output)
    if body is None:
        return [f"no JSON object in the output, the doc shows {exp.shown.strip()!r}: "
                f"{output[:600]!r}"]
    problems = []
    missing = [k for k in exp.keys if k not in body]
    if missing:
        problems.append(f"keys {missing} of the doc's {exp.shown.strip()[:300]!r} are not in "
                        f"the answer {json.dumps(body)[:600]}")
    for key, value in exp.values.items():
        if key in body and body[key] != value:
            problems.append(f"{key} is {body[key]!r}, the doc shows {value!r}")
    return problems


def _last_json_object(output: str) -> dict[str, object] | None:
    """The last line (or run of lines) of ``output`` that is a JSON object."""
    lines = output.strip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if not lines[start].lstrip().startswith("{"):
            continue
        try:
            value = json.loads("\n".join(lines[start:]))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
