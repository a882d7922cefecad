--@ all
-- Gateway connectivity (docs/contract.md §1 status topic, including Last Will): every change, and the latest.
CREATE TABLE gateway_events (
    ts              timestamptz NOT NULL,
    enterprise_code text NOT NULL,
    online          boolean NOT NULL
);
CREATE INDEX gateway_events_enterprise ON gateway_events (enterprise_code, ts);

CREATE TABLE gateway_status (
    enterprise_code text PRIMARY KEY,
    online          boolean NOT NULL,
    since           timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
