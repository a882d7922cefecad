-- Rules that are right in the real world: two clocks, the audit at its moment, learned state kept.

--@ all
-- When hazardwatch raised the alarm (its own clock); raised_at stays the event's own time, which
-- for an alarm from late data (store-and-forward) can be hours earlier. Escalation counts from this.
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS noticed_at timestamptz;
-- Each event row records the alarm as it was at that event, including its state.
ALTER TABLE alarm_events ADD COLUMN IF NOT EXISTS state text;
ALTER TABLE alarm_events ADD COLUMN IF NOT EXISTS noticed_at timestamptz;

-- What the rule stage has learned (trend samples, power baselines, liveness, chatter and flood
-- history), one compact numpy blob per operator, saved at a steady cadence and on shutdown.
CREATE TABLE IF NOT EXISTS rules_state (
    name     text PRIMARY KEY,
    saved_at timestamptz NOT NULL,
    data     bytea NOT NULL
);
