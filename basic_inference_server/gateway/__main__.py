"""Run the gateway front: ``python -m basic_inference_server.gateway --spec-fd N``.

Started by the manager, which passes the listening socket.
"""

from __future__ import annotations

import sys

from ..childproc import child_main
from ..contracts import FrontSpec
from .gunicorn_app import GatewayFront

if __name__ == "__main__":
    sys.exit(child_main("python -m basic_inference_server.gateway",
                        lambda spec: GatewayFront(FrontSpec(**spec)).run()))
