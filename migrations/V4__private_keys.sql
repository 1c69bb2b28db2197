-- Org-bound Ed25519 keys (Mesa's private keys). The private half is shown
-- once by `depot-admin key create --kind private-key` and never stored:
-- only the 32-byte public key is, so a copy of this table lets nobody sign
-- an access token.
CREATE TABLE IF NOT EXISTS private_keys (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    public_key  bytea NOT NULL UNIQUE CHECK (octet_length(public_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS private_keys_org ON private_keys (org_id);

-- Gateways cache verified credentials (docs/operations.md, "Credential
-- cache"). Any change that can withdraw one (revocation, expiry moved,
-- scopes changed, the row deleted, also by an org's cascade) notifies
-- channel `depot_credentials` with the key's id, in the changing
-- transaction: the notification goes out exactly when the change commits,
-- whichever client made it (the admin CLI or plain SQL).
CREATE OR REPLACE FUNCTION depot_notify_credential_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('depot_credentials', OLD.id);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify
    AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION depot_notify_credential_change();

DROP TRIGGER IF EXISTS private_keys_notify ON private_keys;
CREATE TRIGGER private_keys_notify
    AFTER UPDATE OR DELETE ON private_keys
    FOR EACH ROW EXECUTE FUNCTION depot_notify_credential_change();

-- An org renamed changes what its keys' cached records say (the slug a
-- token's `iss` must match): every cached key of the org goes.
CREATE OR REPLACE FUNCTION depot_notify_org_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('depot_credentials', 'org:' || OLD.id);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS orgs_notify ON orgs;
CREATE TRIGGER orgs_notify
    AFTER UPDATE OR DELETE ON orgs
    FOR EACH ROW EXECUTE FUNCTION depot_notify_org_change();
