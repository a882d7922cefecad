--@ all
-- Delivery that never gives up on an unacknowledged alarm: failures counted apart from attempts
-- (a rate-limit answer is an attempt, not a failure), a lease on claimed rows, when a message was
-- first due (for "this contact cannot be reached"), and whether that was reported.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS failures integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_at timestamptz;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS first_due_at timestamptz;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS reported_at timestamptz;
UPDATE outbox SET first_due_at = due_at WHERE first_due_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_alarm_step ON outbox (alarm_id, step);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (first_due_at) WHERE status IN ('pending', 'sending', 'failed')
    AND reported_at IS NULL;

-- Entries of a service's local journal (written while the database was away) already applied here:
-- replaying the journal after a crash in the middle of a flush records nothing twice.
CREATE TABLE IF NOT EXISTS journal_applied (
    entry      text PRIMARY KEY,          -- '<journal id>:<sequence>'
    applied_at timestamptz NOT NULL DEFAULT now()
);
