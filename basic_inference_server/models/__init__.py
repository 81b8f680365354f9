"""Models inside a worker process: load on demand, share, reference-count and unload.

:mod:`.manager` is the model manager a worker reaches as ``self.models``; its records
live in the process (:mod:`.state`) or, with ``MODEL_STATE_URL``, in Redis shared by
every worker, server and host (:mod:`.redis_state`); :mod:`.memory` measures the device.
"""
