"""Drive the five webhook-target operations through Mesa's generated REST
client (`mesa_rest.api.webhook_target`), unchanged but for the base URL.

Run by tests/e2e/webhooks.rs. Input (environment): MESA_TEST_API_URL,
MESA_TEST_KEY (admin key of MESA_TEST_ORG), MESA_TEST_OTHER_KEY (admin key
of org MESA_TEST_OTHER_ORG). Output: one JSON object on the last stdout line.
"""

from __future__ import annotations

import json
import os

from mesa_rest.api.webhook_target import (
    create_webhook_target,
    delete_webhook_target,
    get_webhook_target,
    list_webhook_targets,
    update_webhook_target,
)
from mesa_rest.client import AuthenticatedClient
from mesa_rest.models.create_webhook_target_body import CreateWebhookTargetBody
from mesa_rest.models.create_webhook_target_body_events_item import (
    CreateWebhookTargetBodyEventsItem,
)
from mesa_rest.models.update_webhook_target_body import UpdateWebhookTargetBody
from mesa_rest.models.update_webhook_target_body_events_item import (
    UpdateWebhookTargetBodyEventsItem,
)


def value(enum_or_str: object) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def main() -> dict:
    env = os.environ
    org = env["MESA_TEST_ORG"]
    client = AuthenticatedClient(base_url=env["MESA_TEST_API_URL"], token=env["MESA_TEST_KEY"])
    other = AuthenticatedClient(
        base_url=env["MESA_TEST_API_URL"], token=env["MESA_TEST_OTHER_KEY"]
    )
    result: dict = {}
    created = create_webhook_target.sync(
        org,
        client=client,
        body=CreateWebhookTargetBody(
            url="https://hooks.example.com/depot",
            name="ci",
            events=[
                CreateWebhookTargetBodyEventsItem("sync.completed"),
                CreateWebhookTargetBodyEventsItem("sync.failed"),
            ],
        ),
    )
    result["created"] = {
        "id": created.id,
        "has_secret": bool(getattr(created, "secret", None)),
        "events": [value(e) for e in created.events],
    }
    got = get_webhook_target.sync(org, created.id, client=client)
    result["got"] = {
        "id": got.id,
        "has_secret": "secret" in got.additional_properties or hasattr(got, "secret"),
    }
    listed = list_webhook_targets.sync(org, client=client)
    result["listed"] = [t.id for t in listed.webhook_targets]
    patched = update_webhook_target.sync(
        org,
        created.id,
        client=client,
        body=UpdateWebhookTargetBody(
            name=None, events=[UpdateWebhookTargetBodyEventsItem("sync.failed")]
        ),
    )
    result["patched"] = {"name": patched.name, "events": [value(e) for e in patched.events]}
    # Another org's admin asks for this target in its own org: unknown.
    result["other_org"] = get_webhook_target.sync_detailed(
        env["MESA_TEST_OTHER_ORG"], created.id, client=other
    ).status_code
    deleted = delete_webhook_target.sync(org, created.id, client=client)
    result["deleted"] = deleted.success
    result["after_delete"] = get_webhook_target.sync_detailed(
        org, created.id, client=client
    ).status_code
    return result


print(json.dumps(main()))
