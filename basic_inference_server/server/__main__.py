"""Run one endpoint server: ``python -m basic_inference_server.server --spec JSON``.

Started by the manager, which passes the listening sockets (TCP port and Unix socket).
"""

from __future__ import annotations

import sys

from ..childproc import child_main
from .app import ServerSpec
from .gunicorn_app import EndpointServer

if __name__ == "__main__":
    sys.exit(child_main("python -m basic_inference_server.server",
                        lambda spec: EndpointServer(ServerSpec(**spec)).run()))
