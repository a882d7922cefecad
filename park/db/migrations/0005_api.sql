--@ all
-- API tokens: each belongs to one unit (or 'park', the duty room) and reaches only its subtree.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    unit_code    text NOT NULL,
    name         text NOT NULL DEFAULT '',
    token_hash   text NOT NULL UNIQUE,          -- sha256 of the token; the token itself is never stored
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Every write through the API: who (token unit and name, and the person named in the body) and when.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    ts         timestamptz NOT NULL DEFAULT now(),
    unit_code  text NOT NULL,
    token_name text NOT NULL DEFAULT '',
    by         text,
    action     text NOT NULL,
    target     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_ts ON audit_log (ts);
