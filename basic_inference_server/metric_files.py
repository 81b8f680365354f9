"""Reading the Prometheus multiprocess files of many processes, empty ones included.

prometheus_client creates a process's ``.db`` file before it sizes it, so a scrape can
meet it at 0 bytes, and a process killed in that moment leaves it so for good; its
``MultiProcessCollector`` then raises ``struct.error`` and loses every other process's
metrics with it (prometheus/client_python#1199, unfixed in 0.26). A file too short to
hold its header has recorded nothing yet: it is skipped.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# The header of a metrics file: its used length (4 bytes) and padding (4 bytes).
_HEADER = 8


class MetricFiles(MultiProcessCollector):
    """``MultiProcessCollector`` that skips files with nothing recorded yet."""

    def collect(self) -> Iterable[Metric]:
        """The merged metrics of every file holding at least a header."""
        return self.merge([f for f in glob.glob(os.path.join(self._path, "*.db"))
                           if _recorded(f)], accumulate=True)


def _recorded(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _HEADER
    except FileNotFoundError:  # its process died and was cleaned up since the glob
        return False
