"""``python -m basic_inference_server.client``: the ``bis`` command line."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
