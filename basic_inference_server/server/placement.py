"""Device placement: spread an endpoint's workers over the GPUs it names.

Applied in gunicorn's ``post_fork``, in the new worker, before the model loads (CUDA
must never be initialised in the master: it does not survive ``fork``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def visible_devices(gpus: list[int] | None, slot: int) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for worker ``slot``.

    GPU ``gpus[slot mod n]``; "" (the CPU) for ``[]``; None (leave it alone) for None.
    """
    if gpus is None:
        return None
    if not gpus:
        return ""
    return str(gpus[slot % len(gpus)])


def place_worker(gpus: list[int] | None, slot: int,
                 environ: MutableMapping[str, str] | None = None) -> str | None:
    """Set ``CUDA_VISIBLE_DEVICES`` for worker ``slot``; returns the value set (None: unchanged)."""
    env = os.environ if environ is None else environ
    value = visible_devices(gpus, slot)
    if value is not None:
        env["CUDA_VISIBLE_DEVICES"] = value
    return value
