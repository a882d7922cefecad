--@ all
-- Keys the service generates once and keeps (e.g. the acknowledgement-link signing key).
CREATE TABLE app_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
