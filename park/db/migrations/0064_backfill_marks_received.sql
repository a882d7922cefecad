--@ all
-- The rollup pass (park/db/maintenance.py) re-reads the buckets of the backfill marks received since
-- its last pass: found by when they were received, not by scanning every mark kept.
CREATE INDEX IF NOT EXISTS reading_backfills_received ON reading_backfills (received_at);
