"""The gateway's shape: the run flow's functions stay simple (radon rank A or B), and no
class of the gateway passes 200 lines."""

from __future__ import annotations

import ast

from radon.complexity import cc_rank, cc_visit

from tests.conftest import ROOT

GATEWAY = ROOT / "basic_inference_server" / "gateway"
FLOW_MODULES = ("run_plan.py", "run_flow.py", "dispatch.py", "tenancy.py", "pipelines.py",
                "job_submit.py")
MAX_RANK = "B"  # radon cc -n C prints nothing
MAX_CLASS_LINES = 200


def test_the_run_flow_modules_rank_a_or_b() -> None:
    ranked = [(name, block.name, cc_rank(block.complexity)) for name in FLOW_MODULES
              for block in cc_visit((GATEWAY / name).read_text(encoding="utf-8"))
              if cc_rank(block.complexity) > MAX_RANK]
    assert not ranked, f"functions ranked C or worse: {ranked}"


def test_no_gateway_class_passes_200_lines() -> None:
    long = []
    for path in sorted(GATEWAY.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long.append((path.name, node.name, lines))
    assert not long, f"classes over {MAX_CLASS_LINES} lines: {long}"
