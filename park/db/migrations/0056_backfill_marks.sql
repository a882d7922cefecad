--@ all
-- Readings that arrived as a backfill (store-and-forward, 断点续传): one row per sensor per write
-- that held readings older than alarm_management.backfill_after on arrival (the gateway's measured
-- clock offset removed), so the board can mark them in a sensor's chart. Readings stay as they are.
CREATE TABLE IF NOT EXISTS reading_backfills (
    sensor_id   integer NOT NULL,
    start_ts    timestamptz NOT NULL,   -- the oldest and newest late reading of this write
    end_ts      timestamptz NOT NULL,
    received_at timestamptz NOT NULL,   -- when hazardwatch received them
    n           integer NOT NULL
);
CREATE INDEX IF NOT EXISTS reading_backfills_sensor_end ON reading_backfills (sensor_id, end_ts);
