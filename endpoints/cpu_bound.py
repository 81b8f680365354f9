"""CPU-bound endpoint: counts primes in pure Python, holding the GIL the whole time.

Throughput grows with NR_WORKERS because each worker is a process.
"""

from basic_inference_server import FlaskWorker

_CONFIG = {
    "DEFAULT_LIMIT": 20000,
    "MAX_LIMIT": 2_000_000,
}


def count_primes(limit: int) -> int:
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


class CpuBoundWorker(FlaskWorker):
    def __init__(self, **kwargs):
        super().__init__(prefix_log="[CPU]", **kwargs)

    def _pre_process(self, inputs):
        limit = inputs.get("LIMIT", self.cfg_default_limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= self.cfg_max_limit:
            raise ValueError(f"LIMIT must be an integer from 2 to {self.cfg_max_limit}")
        return limit

    def _predict(self, limit):
        return limit, count_primes(limit)

    def _post_process(self, pred):
        limit, primes = pred
        return {"limit": limit, "primes": primes}
