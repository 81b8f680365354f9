"""The endpoint of bench/bench_deadlines.py: BUSY_MS of CPU (a spin, holding the GIL, as
a small model's forward pass does). It answers when its _predict started (wall clock),
and whether that was past the request's deadline as this endpoint server counts it (the
request's flag, which the framework gives each request thread)."""

import time

from basic_inference_server import FlaskWorker
from basic_inference_server.worker import running_flag

_CONFIG = {"BUSY_MS": 20}


class BusyWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs.get("SENT")

    def _predict(self, sent):
        flag = running_flag()
        late = flag is not None and flag.expired()
        started = time.time()
        end = time.perf_counter() + self.cfg_busy_ms / 1000
        while time.perf_counter() < end:
            pass
        return sent, started, late

    def _post_process(self, pred):
        sent, started, late = pred
        return {"sent": sent, "started": started, "late": late}
