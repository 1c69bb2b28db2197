"""Drive Depot through Mesa's own Python SDK (`mesa_sdk.Mesa`), as a program
written against Mesa would: only the `api_url` differs.

Run by tests/e2e/mesa_sdk.rs with the virtualenv of scripts/mesa-venv.sh.
Input (environment): MESA_TEST_PRIVATE_KEY, MESA_TEST_API_URL,
MESA_TEST_UPSTREAM_URL, MESA_TEST_UPSTREAM_USER, MESA_TEST_UPSTREAM_PASSWORD.
Output: one JSON object on the last stdout line with what the SDK returned;
any failed expectation exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from mesa_sdk import ConflictError, Mesa, NotFoundError
from mesa_sdk.types import UpstreamConfig, UsernamePasswordAuth

TERMINAL = {"completed", "failed"}


def value(enum_or_str: object) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"expectation failed: {what}")


async def wait_for(mesa: Mesa, repo: str, sync_id: str, limit: float = 90.0):
    deadline = time.monotonic() + limit
    delay = 0.05
    while True:
        sync = await mesa.repos.get_upstream_sync(repo=repo, sync_id=sync_id)
        if value(sync.status) in TERMINAL:
            return sync
        if time.monotonic() > deadline:
            raise SystemExit(f"sync {sync_id} still {value(sync.status)} after {limit} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def main() -> dict:
    env = os.environ
    result: dict = {}
    async with Mesa(
        private_key=env["MESA_TEST_PRIVATE_KEY"], api_url=env["MESA_TEST_API_URL"]
    ) as mesa:
        me = await mesa.whoami()
        result["whoami"] = {"org": me.org.slug, "key_id": me.key_id, "scopes": me.scopes}

        repo = await mesa.repos.create(
            name="mirror",
            upstream=UpstreamConfig(
                url=env["MESA_TEST_UPSTREAM_URL"],
                auth=UsernamePasswordAuth(
                    username=env["MESA_TEST_UPSTREAM_USER"],
                    password=env["MESA_TEST_UPSTREAM_PASSWORD"],
                ),
            ),
        )
        result["repo"] = {"id": repo.id, "name": repo.name}

        pull = await mesa.repos.sync_upstream(repo="mirror", direction="pull")
        expect(value(pull.status) == "queued", f"a new sync is queued, not {value(pull.status)}")
        done = await wait_for(mesa, "mirror", pull.id)
        result["pull"] = {
            "id": pull.id,
            "status": value(done.status),
            "refs": [
                {"name": r.name, "outcome": value(r.outcome)} for r in done.stats.refs
            ]
            if done.stats
            else None,
        }

        listed = await mesa.repos.list_upstream_syncs(repo="mirror")
        result["listed"] = [s.id for s in listed.syncs]

        push = await mesa.repos.sync_upstream(
            repo="mirror", direction="push", ref_globs={"branches": "main"}
        )
        pushed = await wait_for(mesa, "mirror", push.id)
        result["push"] = {"id": push.id, "status": value(pushed.status)}

        try:
            await mesa.repos.get(repo="no-such-repo")
            raise SystemExit("a missing repo was found")
        except NotFoundError as e:
            result["not_found"] = {"type": type(e).__name__, "status": e.status_code}

        try:
            await mesa.repos.create(name="mirror")
            raise SystemExit("a second repo of the same name was created")
        except ConflictError as e:
            result["conflict"] = {"type": type(e).__name__, "status": e.status_code}
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
