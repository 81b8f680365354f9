"""The fenced blocks of the docs, the notes written above them, and the outputs they show.

A note is an HTML comment on the lines right above a fence (invisible on GitHub):

- ``<!-- illustrative: needs Docker ... -->``: the block is shown, not run. Only what
  needs Docker, Kubernetes, another host or a package install may say so.
- ``<!-- docs-test: gateway [fresh] [JSON] -->``: this block and the page's next ones
  run against a gateway whose configuration is the demo's ``config_gateway.json`` with
  ``JSON`` merged in; without ``JSON`` and on a ``json`` fence, that fence is what is
  merged (the page shows the configuration it runs). ``fresh``: not shared with other
  pages.
- ``<!-- docs-test: file PATH -->``: the fence is written to ``PATH`` in the gateway's
  folder (an endpoint file the page shows, for instance).
- ``<!-- docs-test: merge PATH -->``: the fence (JSON) is merged into the JSON file
  ``PATH`` of the gateway's folder (a section the page adds to ``config_gateway.json``).
- ``<!-- docs-test: python -->``: the Python fence is run, as a program, in the
  gateway's folder.

The output a shell block shows is read from its comments: ``# HTTP/1.1 429 ...`` and
the header lines after it, ``# {...}`` (a JSON object, ``...`` allowed, continued on
the next comment lines until its braces close, optionally followed by ``(202)``), a
status at the end of a command line (``curl ... # 403 forbidden``), or a ``json``
fence right after the block (the output of its last command).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHELL = frozenset({"bash", "sh", "shell", "console"})
ALLOWED_REASONS = re.compile(r"needs (Docker|Kubernetes|another host|a package install)\b")
# Fields whose value an expected output states and the real one must have (other
# values differ from run to run: ids, times, pids).
CHECKED_VALUES = ("ERROR_TYPE", "STATUS", "state")
# A line a reader would type into a shell; in a fence that is not a shell block it makes
# the block an example that should run, unless the block is a synopsis (``[--option]``).
COMMAND_LINE = re.compile(r"^\s*(\$ |curl |bis |python3? |pip |docker |kubectl |helm |"
                          r"export |nohup |\./|mkdir )")

_FENCE = re.compile(r"^(\s*)```([\w-]*)\s*$")
_NOTE = re.compile(r"^\s*<!--\s*(illustrative|docs-test):\s*(.*?)\s*-->\s*$")
_INLINE_STATUS = re.compile(r"\s#\s*(\d{3})\b[^'\"]*$")
_TRAILING_STATUS = re.compile(r"^\s*\(?(\d{3})\)?\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int  # of the opening fence, 1-based
    end: int  # of the closing fence
    lang: str
    text: str
    notes: tuple[tuple[str, str], ...] = ()  # (kind, argument), top to bottom

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def illustrative(self) -> str | None:
        """Why the block is not run, when its note says so."""
        return next((arg for kind, arg in self.notes if kind == "illustrative"), None)

    @property
    def directives(self) -> list[str]:
        return [arg for kind, arg in self.notes if kind == "docs-test"]

    @property
    def shell(self) -> bool:
        return self.lang in SHELL

    def looks_like_shell(self) -> bool:
        """A block in another language (or none) that holds commands to type."""
        if self.shell or self.lang in ("python", "json", "yaml", "toml"):
            return False
        lines = self.text.splitlines()
        return any(COMMAND_LINE.match(line) for line in lines) and "[--" not in self.text


def read_blocks(path: Path, page: str) -> list[Block]:
    """Every fenced block of a Markdown file, with the notes right above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = len(match.group(1)), match.group(2), i
        notes: list[tuple[str, str]] = []
        j = i - 1
        while j >= 0 and (note := _NOTE.match(lines[j])):
            notes.insert(0, (note.group(1), note.group(2)))
            j -= 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].isspace() or not indent
                        else lines[i].lstrip())
            i += 1
        found.append(Block(page, start + 1, i + 1, lang, "\n".join(body) + "\n", tuple(notes)))
        i += 1
    return found


def console_to_bash(text: str) -> str:
    """A ``console`` block as a script: ``$ `` lines are commands, the rest their output."""
    out: list[str] = []
    continued = False
    for line in text.splitlines():
        if line.startswith("$ ") or continued:
            command = line[2:] if line.startswith("$ ") and not continued else line
            out.append(command)
            continued = command.rstrip().endswith("\\")
        else:
            out.append("# " + line)
    return "\n".join(out) + "\n"


@dataclass
class Expected:
    """What a block shows as the output of the commands on lines ``after`` < n < ``before``."""

    after: int
    before: int  # the first line of the expectation
    end: int = 0  # its last line
    status: int | None = None
    headers: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    shown: str = ""

    def covers(self, line: int) -> bool:
        return self.after < line < self.before


def _string_end(text: str, i: int) -> int:
    """The index after the JSON string that starts at ``text[i]`` (a quote)."""
    i += 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def top_level(text: str) -> tuple[list[str], dict[str, Any], str]:
    """The keys of a JSON object as written in a doc (``...`` allowed), the values of
    :data:`CHECKED_VALUES` among them, and what follows the closing brace."""
    keys: list[str] = []
    values: dict[str, Any] = {}
    depth, i = 0, 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = _string_end(text, i)
            colon = re.match(r"\s*:\s*", text[end:])
            if depth == 1 and colon:
                key = json.loads(text[i:end])
                keys.append(key)
                value = re.match(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null',
                                 text[end + colon.end():])
                if key in CHECKED_VALUES and value:
                    values[key] = json.loads(value.group(0))
            i = end
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return keys, values, text[i + 1:]
        i += 1
    return keys, values, ""


def _comment(line: str) -> str | None:
    stripped = line.strip()
    return stripped[1:].strip() if stripped.startswith("#") else None


def expectations(script: str) -> list[Expected]:
    """The outputs a shell script's comments show, in order."""
    lines = script.splitlines()
    found: list[Expected] = []
    previous = 0
    i = 0
    while i < len(lines):
        number = i + 1
        comment = _comment(lines[i])
        inline = _INLINE_STATUS.search(lines[i]) if comment is None else None
        if inline:
            found.append(Expected(previous, number + 1, number, status=int(inline.group(1)),
                                  shown=lines[i].strip()))
            previous = number
            i += 1
            continue
        if comment is None or not comment.startswith(("HTTP/", "{")):
            i += 1
            continue
        expected = Expected(previous, number)
        if comment.startswith("HTTP/"):
            expected.status = int(comment.split()[1])
            expected.shown += comment + "\n"
            i += 1
            while i < len(lines) and (header := re.match(r"^\s*#\s*([\w-]+):\s", lines[i])):
                expected.headers.append(header.group(1))
                expected.shown += (_comment(lines[i]) or "") + "\n"
                i += 1
            comment = _comment(lines[i]) if i < len(lines) else None
        if comment and comment.startswith("{"):
            text = comment
            i += 1
            while text.count("{") > text.count("}") and i < len(lines) and \
                    (more := _comment(lines[i])) is not None:
                text += "\n" + more
                i += 1
            expected.keys, expected.values, rest = top_level(text)
            trailing = _TRAILING_STATUS.match(rest)
            if trailing:
                expected.status = int(trailing.group(1))
            expected.shown += text
        expected.end = i
        found.append(expected)
        previous = i  # the last line of this expectation
    return found


def expected_block(block: Block, after: int, before: int) -> Expected:
    """A ``json`` fence right after a shell block: the output of its last command."""
    keys, values, _ = top_level(block.text)
    return Expected(after, before, keys=keys, values=values, shown=block.text)


@dataclass(frozen=True)
class Directive:
    """A ``docs-test`` note, parsed."""

    kind: str  # gateway, file, merge or python
    fresh: bool = False
    overlay: dict[str, Any] | None = None
    path: str = ""


def directive(note: str) -> Directive:
    """Parse a ``docs-test`` note; ValueError when it says something unknown."""
    word, _, rest = note.partition(" ")
    rest = rest.strip()
    if word == "gateway":
        fresh = rest.split(" ", 1)[0] == "fresh"
        rest = rest.removeprefix("fresh").strip()
        overlay = json.loads(rest) if rest else None
        if overlay is not None and not isinstance(overlay, dict):
            raise ValueError(f"a gateway note merges a JSON object: {note!r}")
        return Directive("gateway", fresh=fresh, overlay=overlay)
    if word in ("file", "merge"):
        if not rest or rest.startswith("/") or ".." in Path(rest).parts:
            raise ValueError(f"{word} needs a path inside the gateway's folder: {note!r}")
        return Directive(word, path=rest)
    if word == "python" and not rest:
        return Directive("python")
    raise ValueError(f"unknown docs-test note: {note!r}")


def pages(root: Path) -> list[str]:
    """The pages whose examples run: the README and every page of docs/."""
    return ["README.md", *sorted(p.relative_to(root).as_posix()
                                 for p in (root / "docs").glob("*.md"))]
