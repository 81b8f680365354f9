"""The docs stay true: the settings and API tables, the README's two commands and CI, the links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from basic_inference_server.config import settings_table_markdown

ROOT = Path(__file__).resolve().parents[2]
# Pages other parts of the project write; linked before they exist.
WRITTEN_ELSEWHERE = {"SECURITY.md", "docs/front.md", "docs/scale-out.md"}


def readme_commands() -> tuple[str, str]:
    """The README's first two fenced bash blocks: the install line and the test command."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    return install, test


def test_config_doc_table_is_generated_from_settings() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", doc, re.S)
    assert match, "docs/configuration.md lost its settings-table markers"
    assert match.group(1).strip() == settings_table_markdown().strip(), (
        "the settings table in docs/configuration.md is stale: python scripts/update_settings_doc.py")


def test_http_api_tables_are_generated_from_the_routes_and_the_error_kinds() -> None:
    from basic_inference_server.gateway.api_docs import with_tables

    doc = (ROOT / "docs" / "http-api.md").read_text()
    assert with_tables(doc) == doc, (
        "the tables in docs/http-api.md are stale: python scripts/update_api_docs.py")


def test_http_api_paths_table_says_who_may_call_each_path() -> None:
    doc = (ROOT / "docs" / "http-api.md").read_text()
    rows = dict(re.findall(r"^\| `(/[^`]*)` \| [A-Z, ]+ \| ([^|]+) \|", doc, re.M))
    for path in ("/list_servers", "/system_status", "/history", "/notifications",
                 "/start_server", "/shutdown", "/traffic", "/rollout", "/rollout/promote",
                 "/rollout/abort", "/keys", "/keys/revoke", "/keys/rotate", "/usage/tenants",
                 "/usage/tenants.csv"):
        assert rows.get(path, "").strip() == "admin token", path
    assert "API key" in rows["/run"] and "API key" in rows["/usage"]
    management = doc[doc.index("## Management"):]
    assert "loopback included" in management and "not checked yet" not in doc


def test_every_setting_is_in_the_config_doc() -> None:
    from basic_inference_server.config import ENDPOINT_SETTINGS, GATEWAY_SETTINGS

    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert all(f"`{name}`" in doc for name in [*GATEWAY_SETTINGS, *ENDPOINT_SETTINGS])


def test_ci_runs_the_readme_install_steps_and_its_test_command() -> None:
    install, test = readme_commands()
    assert install.endswith(" && python run_gateway.py"), install
    assert "\n" not in test and test.startswith("./scripts/"), test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install.removesuffix(" && python run_gateway.py") in ci_lines
    assert test in ci_lines
    assert (ROOT / test).stat().st_mode & 0o111, f"{test} is not executable"


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


DOC_PAGES = ["README.md", "CONTRIBUTING.md",
             *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_relative_links_lead_to_files_and_headings(page: str) -> None:
    path = ROOT / page
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", text):
        file, anchor = target
        dest = (path.parent / file).resolve() if file else path
        rel = dest.relative_to(ROOT).as_posix()
        if rel in WRITTEN_ELSEWHERE and not dest.exists():
            continue
        assert dest.exists(), f"{page}: link to missing {file}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest.read_text()), f"{page}: no heading #{anchor} in {rel}"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_security_md_names_a_test_for_each_defence_and_each_security_test() -> None:
    """SECURITY.md's table of defences and ``tests/security/`` list the same test files."""
    doc = (ROOT / "SECURITY.md").read_text()
    table = doc[doc.index("## Defences and their tests"):]
    table = table[:table.index("\n## ")]
    named = set(re.findall(r"`(test_\w+\.py)`", table))
    present = {p.name for p in (ROOT / "tests" / "security").glob("test_*.py")}
    assert named == present, (f"named in SECURITY.md but missing: {sorted(named - present)}; "
                              f"tests not in its table: {sorted(present - named)}")
