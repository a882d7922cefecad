--@ all
-- One row per instance, rewritten every few seconds by its synchronous-replication guard
-- (park/db/syncrep.py): a commit that must reach the synchronous replica, to learn whether it does.
CREATE TABLE IF NOT EXISTS ha_sync_probes (
    instance text PRIMARY KEY,
    at       timestamptz NOT NULL
);
