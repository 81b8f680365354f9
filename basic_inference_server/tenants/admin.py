"""The admin API of keys: ``/keys`` (create, list), ``/keys/revoke``, ``/keys/rotate``;
and of metering: ``/usage/tenants`` and ``/usage/tenants.csv`` (a day's usage per tenant
and endpoint).

Behind the admin credential like every management route. A key's secret appears once,
in the answer that creates it (create or rotate); lists never show it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import Response, request

from ..errors import BadRequest, Conflict, NotFound, Unavailable
from ..flask_body import json_body
from .keys import ApiKey, digest, grace_of, key_from_request, new_secret
from .metering import table, to_csv
from .store import KeyStore, StoreDown

Reply = Callable[..., Response]
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _key_id(args: dict[str, Any]) -> str:
    key_id = args.get("KEY_ID")
    if not isinstance(key_id, str) or not key_id:
        raise BadRequest("KEY_ID (from POST /keys or GET /keys) is required")
    return key_id


def key_views(store: Callable[[], KeyStore], reply: Reply, admin_only: Callable[[], None],
              classes: Callable[[], list[str]]) -> dict[str, Callable[..., Response]]:
    """The views of ``/keys``, ``/keys/revoke``, ``/keys/rotate`` and ``/usage/tenants``
    (their routes: the API table); ``classes``: the gateway's PRIORITY_CLASSES, read when
    a key is made."""

    def stored(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except StoreDown as exc:
            raise Unavailable(f"the key store is not reachable: {exc}", retry_after=1) from None

    def existing(key_id: str) -> ApiKey:
        key = stored(lambda: store().get(key_id))
        if key is None:
            raise NotFound(f"no API key {key_id!r}", KEY_ID=key_id)
        return key  # type: ignore[no-any-return]

    def keys() -> Response:
        admin_only()
        if request.method == "GET":
            tenant = request.args.get("TENANT")
            found = stored(lambda: store().keys(tenant))
            return reply(200, {"KEYS": [k.public() for k in found], "COUNT": len(found)})
        key, secret = key_from_request(json_body())
        known = classes()
        if key.priority is not None and key.priority not in known:
            raise BadRequest(f"PRIORITY must be one of PRIORITY_CLASSES {known}, "
                             f"got {key.priority!r}", PRIORITY_CLASSES=known)
        stored(lambda: store().add(key))
        return reply(201, {"KEY": secret, **key.public()})

    def metered_day() -> tuple[str, list[dict[str, Any]]]:
        admin_only()
        day = request.args.get("DAY", time.strftime("%Y-%m-%d", time.gmtime()))
        if not DAY.fullmatch(day):
            raise BadRequest(f"DAY must be YYYY-MM-DD, got {day!r}")
        return day, table(stored(lambda: store().metered(day)))

    def metered() -> Response:
        day, rows = metered_day()
        return reply(200, {"DAY": day, "ROWS": rows, "COUNT": len(rows)})

    def metered_csv() -> Response:
        day, rows = metered_day()
        return Response(to_csv(rows), mimetype="text/csv", headers=[
            ("Content-Disposition", f'attachment; filename="usage-{day}.csv"')])

    def revoke() -> Response:
        admin_only()
        key = existing(_key_id(json_body()))
        if key.revoked is None:
            key.revoked = time.time()
            stored(lambda: store().save(key))
        return reply(200, key.public())

    def rotate() -> Response:
        admin_only()
        args = json_body()
        old = existing(_key_id(args))
        grace = grace_of({k: v for k, v in args.items() if k != "KEY_ID"})
        now = time.time()
        if not old.usable(now):
            raise Conflict(f"API key {old.id} is revoked or expired; create a new one",
                           KEY_ID=old.id)
        secret = new_secret()
        # The same lineage: the new key goes on with the old one's quota and limits.
        new = dataclasses.replace(old, id="key_" + secrets.token_hex(8), hash=digest(secret),
                                  created=now, revoked=None, expires=None, lineage=old.lineage)
        stored(lambda: store().add(new))
        old.expires = now + grace
        stored(lambda: store().save(old))
        return reply(201, {"KEY": secret, **new.public(), "ROTATED_FROM": old.id,
                           "OLD_KEY_EXPIRES": old.expires})

    return {"keys": keys, "keys_revoke": revoke, "keys_rotate": rotate, "usage_tenants": metered,
            "usage_tenants_csv": metered_csv}
