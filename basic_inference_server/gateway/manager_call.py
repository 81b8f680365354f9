"""One command to the manager over its control socket, from a front process's event loop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..ipc import MAX_MESSAGE

CALL_TIMEOUT = 2.0


async def call_manager(control: str, payload: dict[str, Any],
                       timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
    """Send ``payload`` (a command's request), return the reply (``status``, ``body``).

    Raises OSError, asyncio.TimeoutError or ValueError when the manager cannot be
    reached in time or the message is too large.
    """
    data = json.dumps(payload).encode() + b"\n"
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a control message of {len(data)} bytes")
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(control), timeout)
    try:
        writer.write(data)
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), timeout))
        return reply
    finally:
        writer.close()
