--@ all
-- 交接班: who handed the duty over to whom, at which shift change (printed for the paper log too).
CREATE TABLE handovers (
    id             bigserial PRIMARY KEY,
    ts             timestamptz NOT NULL,
    unit_code      text NOT NULL,               -- the token's unit ('park' for the duty room)
    shift_start    timestamptz NOT NULL,        -- start of the shift being handed over
    handed_over_by text NOT NULL,
    taken_over_by  text NOT NULL,
    note           text
);
CREATE INDEX handovers_unit_ts ON handovers (unit_code, ts);
