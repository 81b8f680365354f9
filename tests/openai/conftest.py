"""A gateway with API keys on serving the model-free generator (endpoints/toy_llm.py)
beside the test endpoints, shared by the OpenAI tests of a module."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURE_ENDPOINTS, ROOT, Gateway
from tests.tenants.conftest import make_key, ready


def openai_endpoints(folder: Path) -> Path:
    """The test endpoints and the demo generator, in ``folder``."""
    shutil.copytree(FIXTURE_ENDPOINTS, folder, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    shutil.copy(ROOT / "endpoints" / "toy_llm.py", folder)
    return folder


def openai_gateway(pool: Any, folder: Path, **extra: Any) -> Gateway:
    """A ready gateway with ``toy_llm``, ``echo`` and the alias ``toy``."""
    config = {"API_KEYS": True, "GATEWAY_WORKERS": 2, "MODEL_ALIASES": {"toy": "toy_llm"},
              "CONFIG_ENDPOINTS": {"toy_llm": {"NR_WORKERS": 1},
                                   "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1}}, **extra}
    return ready(pool(config, endpoints=openai_endpoints(folder)))


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory) -> Gateway:
    return openai_gateway(module_gateways, tmp_path_factory.mktemp("endpoints"))


@pytest.fixture(scope="module")
def key(gw: Gateway) -> str:
    return str(make_key(gw)["KEY"])
