-- hazardwatch foundation schema. Sections run by edition: all, timescaledb (any edition),
-- full (Timescale-licensed: compression, continuous aggregates, policies), self_managed
-- (Apache edition or plain PostgreSQL: the service runs retention and rollups itself).

--@ all
CREATE TABLE units (
    code        text PRIMARY KEY,
    level       text NOT NULL CHECK (level IN ('district', 'town', 'enterprise')),
    name        text NOT NULL,
    parent_code text,
    state       text NOT NULL DEFAULT 'running',   -- running | stopped (停产) | maintenance (检修)
    file_state  text NOT NULL DEFAULT 'running',   -- what the site file last said
    state_since timestamptz NOT NULL DEFAULT now(),
    state_by    text,
    retired_at  timestamptz,                       -- gone from the site file; history kept
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hazard_sources (
    enterprise_code text NOT NULL,
    code            text NOT NULL,
    name            text NOT NULL,
    grade           smallint NOT NULL CHECK (grade BETWEEN 1 AND 4),
    retired_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise_code, code)
);

CREATE TABLE sensors (
    id              serial PRIMARY KEY,
    enterprise_code text NOT NULL,
    tag             text NOT NULL,
    kind            text NOT NULL,
    unit            text NOT NULL,
    name            text NOT NULL,
    hazard_source   text,
    gas             text,
    limits          jsonb NOT NULL DEFAULT '{}',
    config          jsonb NOT NULL DEFAULT '{}',
    retired_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enterprise_code, tag)
);

-- One row per (sensor_id, ts): redelivered readings never make a second row.
CREATE TABLE readings (
    ts        timestamptz NOT NULL,
    sensor_id integer NOT NULL,
    value     double precision NOT NULL,
    quality   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (sensor_id, ts)
);

-- Input refused at the edge, kept for inspection (docs/contract.md §1).
CREATE TABLE rejects (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    payload     bytea
);
CREATE INDEX rejects_received_at ON rejects (received_at);

CREATE TABLE alarms (
    id               bigserial PRIMARY KEY,
    dedup_key        text NOT NULL,          -- one open alarm per (sensor or enterprise, rule)
    sensor_id        integer,
    enterprise_code  text NOT NULL,
    tag              text,
    rule             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('red', 'orange', 'yellow', 'blue')),
    state            text NOT NULL,
    raised_at        timestamptz NOT NULL,
    value            double precision,
    limit_value      double precision,
    message          text NOT NULL DEFAULT '',
    acked_at         timestamptz,
    acked_by         text,
    ack_note         text,
    cleared_at       timestamptz,
    resolved_at      timestamptz,
    resolved_by      text,
    cause            text,
    action           text,
    shelved_until    timestamptz,
    shelved_by       text,
    shelve_reason    text,
    suppressed       boolean NOT NULL DEFAULT false,
    escalation_level text,
    flood            boolean NOT NULL DEFAULT false,
    detail           jsonb NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alarms_one_open ON alarms (dedup_key) WHERE state <> 'closed';
CREATE INDEX alarms_enterprise_raised ON alarms (enterprise_code, raised_at DESC);
CREATE INDEX alarms_open ON alarms (raised_at DESC) WHERE state <> 'closed';

-- Every transition of every alarm.
CREATE TABLE alarm_events (
    ts          timestamptz NOT NULL,
    alarm_id    bigint NOT NULL,
    kind        text NOT NULL,
    severity    text,
    value       double precision,
    limit_value double precision,
    by          text,
    message     text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, ts);

-- Durable outbox: every planned message is a row before it is sent (docs/contract.md §3).
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,    -- (alarm, unit, contact, channel, step)
    alarm_id        bigint,
    unit_code       text NOT NULL,
    contact         text NOT NULL DEFAULT '',
    channel         text NOT NULL,
    step            text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending',   -- pending | sent | failed | cancelled
    attempts        integer NOT NULL DEFAULT 0,
    due_at          timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX outbox_due ON outbox (due_at) WHERE status = 'pending';

-- Every delivery attempt and its outcome: who was told what, when, how (the audit).
CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    outbox_id       bigint,
    alarm_id        bigint,
    idempotency_key text NOT NULL,
    unit_code       text NOT NULL,
    contact         text NOT NULL DEFAULT '',
    channel         text NOT NULL,
    step            text NOT NULL,
    attempt         integer NOT NULL DEFAULT 1,
    ts              timestamptz NOT NULL DEFAULT now(),
    outcome         text NOT NULL,                     -- sent | failed | rate_limited | skipped
    detail          text NOT NULL DEFAULT ''
);
CREATE INDEX notifications_alarm ON notifications (alarm_id, ts);

CREATE TABLE maintenance_state (
    key   text PRIMARY KEY,
    value timestamptz NOT NULL
);

--@ timescaledb
SELECT create_hypertable('readings', 'ts', chunk_time_interval => INTERVAL '1 day', if_not_exists => true);
SELECT create_hypertable('alarm_events', 'ts', chunk_time_interval => INTERVAL '30 days', if_not_exists => true);

--@ full
ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'sensor_id',
                          timescaledb.compress_orderby = 'ts DESC');
SELECT add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true);
CREATE MATERIALIZED VIEW readings_1m WITH (timescaledb.continuous) AS
    SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket, sensor_id,
           avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
    FROM readings WHERE quality < 2 GROUP BY 1, 2 WITH NO DATA;
CREATE MATERIALIZED VIEW readings_1h WITH (timescaledb.continuous) AS
    SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket, sensor_id,
           avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
    FROM readings WHERE quality < 2 GROUP BY 1, 2 WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1m', start_offset => INTERVAL '2 hours',
    end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => true);
SELECT add_continuous_aggregate_policy('readings_1h', start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => true);

--@ self_managed
CREATE TABLE readings_1m (
    bucket timestamptz NOT NULL, sensor_id integer NOT NULL,
    avg_value double precision, min_value double precision, max_value double precision, n bigint NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
);
CREATE TABLE readings_1h (LIKE readings_1m INCLUDING ALL);
