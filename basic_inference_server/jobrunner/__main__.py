"""Run the job runner: ``python -m basic_inference_server.jobrunner --spec-fd N``.

Started (and restarted, should it die) by the manager.
"""

from __future__ import annotations

import sys

from ..childproc import child_main
from ..contracts import JobRunnerSpec
from .runner import JobRunner

if __name__ == "__main__":
    sys.exit(child_main("python -m basic_inference_server.jobrunner",
                        lambda spec: JobRunner(JobRunnerSpec(**spec)).run()))
