--@ all
-- Several instances against one database: one leads, the others stand by (park/db/lease.py).
-- The leader holds a session advisory lock and this row. `epoch` goes up by one on every
-- takeover; `token` is the term's own id, so a term is never mistaken for another even when a
-- database failover lost the last commits and an epoch number comes round again. Writers check
-- (epoch, token) inside their own transaction (lease.fence), so a paused old leader writes nothing.
CREATE TABLE ha_lease (
    name        text PRIMARY KEY,
    epoch       bigint NOT NULL DEFAULT 0,
    token       uuid,
    holder      text,                          -- instance id of the current leader
    holder_pid  integer,                       -- backend pid of its lease session
    acquired_at timestamptz,
    renewed_at  timestamptz,
    ttl         interval NOT NULL DEFAULT '10 seconds'
);
INSERT INTO ha_lease (name) VALUES ('leader');

-- Every running instance, leader or standby, with its heartbeat (hazardwatch status, /api/v1/cluster).
CREATE TABLE ha_instances (
    instance     text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    role         text NOT NULL,                -- leader | standby | stopped
    epoch        bigint,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    version      text NOT NULL DEFAULT '',
    http_url     text,
    detail       jsonb NOT NULL DEFAULT '{}'   -- brokers, stages: what the instance says of itself
);

-- Operator commands handed to the leader by any instance's API (park/db/commands.py).
CREATE TABLE commands (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    args         jsonb NOT NULL,
    origin       text NOT NULL DEFAULT '',     -- instance that took the request
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'applied', 'refused', 'failed', 'expired')),
    code         text,                         -- why refused: not_found | invalid | bad_command | …
    reason       text,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    deadline     timestamptz NOT NULL,         -- the leader takes it only before this
    taken_at     timestamptz,
    taken_by     text,
    epoch        bigint,                       -- the leader's epoch that took it
    done_at      timestamptz
);
CREATE INDEX commands_pending ON commands (id) WHERE state = 'pending';
CREATE INDEX commands_done_at ON commands (done_at) WHERE done_at IS NOT NULL;
