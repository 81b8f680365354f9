"""Run the supervisor: ``python -m basic_inference_server.supervisor --spec-fd N``.

Started (and restarted, should it die) by the manager.
"""

from __future__ import annotations

import sys

from ..childproc import child_main
from ..contracts import SupervisorSpec
from .supervisor import Supervisor

if __name__ == "__main__":
    sys.exit(child_main("python -m basic_inference_server.supervisor",
                        lambda spec: Supervisor(SupervisorSpec(**spec)).run()))
