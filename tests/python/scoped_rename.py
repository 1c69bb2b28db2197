"""A repo-scoped access token, signed by Mesa's own SDK code
(`mesa_sdk._private_key`, the signer `Mesa` uses for its MesaFS tokens)
and sent by Mesa's REST client (`mesa_rest`), renames a repository only to
a name it holds write-repo on.

Run by tests/e2e/mesa_sdk.rs with the virtualenv of scripts/mesa-venv.sh.
Input (environment): MESA_TEST_PRIVATE_KEY, MESA_TEST_API_URL.
Output: one JSON object on the last stdout line: the HTTP status of each
rename and the repository's name afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os

from mesa_rest.api.repo import get_repo, update_repo
from mesa_rest.client import AuthenticatedClient
from mesa_rest.models import UpdateRepoBody
from mesa_sdk import Mesa
from mesa_sdk._private_key import parse_private_key, sign_automatic_private_key_access_token


async def main() -> dict:
    env = os.environ
    key = env["MESA_TEST_PRIVATE_KEY"]
    api = env["MESA_TEST_API_URL"]
    async with Mesa(private_key=key, api_url=api) as mesa:
        await mesa.repos.create(name="writable")
        await mesa.repos.create(name="hidden")
    credential = parse_private_key(key)
    token = sign_automatic_private_key_access_token(
        private_key=credential,
        access={"writable": "write-repo", "renamed": "write-repo"},
    ).token
    org = credential.org
    result: dict = {}
    async with AuthenticatedClient(base_url=api, token=token) as client:
        for target in ["hidden", "elsewhere", "renamed"]:
            resp = await update_repo.asyncio_detailed(
                org, "writable",
                client=client, body=UpdateRepoBody(name=target),
            )
            result[target] = resp.status_code
        after = await get_repo.asyncio_detailed(org, "renamed", client=client)
        result["after"] = {"status": after.status_code, "name": getattr(after.parsed, "name", None)}
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
