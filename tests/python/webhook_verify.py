"""Verify recorded webhook deliveries with Mesa's SDK, unchanged.

Reads WEBHOOK_DELIVERIES (a JSON file: a list of {"secret", "body",
"headers"}) and passes each to `mesa_sdk.Webhooks(secret).receive(body,
headers)`, the receiver code Mesa documents. Prints one JSON line: a list of
{"ok": true, "event": <the validated event>} or {"ok": false, "error"}.
"""

import asyncio
import json
import os

from mesa_sdk import Webhooks


async def verify(item):
    hooks = Webhooks(item["secret"])
    seen = []
    for name in (
        "sync.queued",
        "sync.in_progress",
        "sync.completed",
        "sync.failed",
        "repo.created",
        "repo.updated",
        "repo.deleted",
    ):
        hooks.on(name, seen.append)
    try:
        await hooks.receive(item["body"].encode("utf-8"), item["headers"])
    except Exception as exc:  # the SDK's verification error, reported as data
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "event": seen[0] if seen else None}


async def main():
    with open(os.environ["WEBHOOK_DELIVERIES"], encoding="utf-8") as f:
        items = json.load(f)
    results = [await verify(item) for item in items]
    print(json.dumps(results))


asyncio.run(main())
