"""Fill a configuration template's secrets in at container start, then run the server.

    python render_config.py TEMPLATE OUT -- COMMAND [ARGS...]

Every ``${secret:NAME}`` of TEMPLATE becomes the first line of ``$BIS_SECRETS_DIR/NAME``
(default ``/run/secrets``); the result is written to OUT, readable by this user only,
and COMMAND replaces this process. Secrets thus reach the gateway and the standalone
servers through a private file, never a command line or the image. Values must be
URL-safe (letters, digits, ``-._~``), as ``secrets.token_urlsafe`` makes them, since
they land inside URLs and JSON strings.

(Once configurations can name files for their URLs and tokens, ``QUEUE:
"file:/run/secrets/queue_url"`` and ``BIS_ADMIN_TOKEN_FILE``, this step can go.)
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

PLACEHOLDER = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}")
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


def secret(name: str, folder: Path) -> str:
    path = folder / name
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise SystemExit(f"render_config: cannot read secret {path}: {exc.strerror}") from None
    value = lines[0].strip() if lines else ""
    if not URL_SAFE.fullmatch(value):
        raise SystemExit(f"render_config: secret {path} is empty or not URL-safe "
                         "(use letters, digits and -._~ only)")
    return value


def render(template: Path, out: Path, folder: Path) -> None:
    text = PLACEHOLDER.sub(lambda m: secret(m.group(1), folder), template.read_text("utf-8"))
    json.loads(text)  # a broken template fails here, not later in the server
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        raise SystemExit(__doc__)
    template, out, command = Path(argv[0]), Path(argv[1]), argv[3:]
    render(template, out, Path(os.environ.get("BIS_SECRETS_DIR", "/run/secrets")))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
