"""The seed README's examples under tests/fixtures stay byte-for-byte as published.

They are the compatibility contract ("must run unchanged"): a formatter or linter
"fixing" them would silently weaken the integration tests that run them.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import FIXTURES

VERBATIM = {
    "endpoints/dummy_model_demo1.py":
        "666802c633ea31e1ef4242caccba5b7f0036f76fdee12006351b6bac93561e01",
    "endpoints/dummy_model_demo2.py":
        "3942029b37fd95a6786929e5d41f62765627d0a25f798cd2feb9ab0eb7f8de0f",
    "endpoints/support_process.py":
        "1f8e47b4cd31b79514d5cec840bd9eb73383f20841e36954f4e6fcf72ffcfe2c",
    "seed_config.json":
        "1605a3a0ec16ae15923af56775e682c6fe1ad0408755d79107536b797234de4a",
}


@pytest.mark.parametrize("name", list(VERBATIM))
def test_seed_example_is_verbatim(name):
    digest = hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest()
    assert digest == VERBATIM[name], f"{name} differs from the seed README's example"
