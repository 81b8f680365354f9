"""Run one endpoint server.

* ``python -m basic_inference_server.server --spec-fd N``: started by the manager,
  which passes the spec and the listening sockets (TCP port and Unix socket);
* ``python -m basic_inference_server.server --endpoint NAME --queue URL``: standalone,
  on any box, pulling the endpoint's jobs from a shared queue (see :mod:`.standalone`).
"""

from __future__ import annotations

import sys

from ..childproc import child_main
from ..contracts import ServerSpec
from .gunicorn_app import EndpointServer
from .standalone import main as standalone_main

if __name__ == "__main__":
    if "--spec-fd" in sys.argv[1:]:
        sys.exit(child_main("python -m basic_inference_server.server",
                            lambda spec: EndpointServer(ServerSpec(**spec)).run()))
    sys.exit(standalone_main())
