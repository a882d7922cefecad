--@ all
-- Each gateway's measured clock offset (its clock minus hazardwatch's), kept by the rule stage so
-- the API and board of every instance show it (docs/contract.md §8). One row per enterprise, replaced.
CREATE TABLE IF NOT EXISTS gateway_clocks (
    enterprise_code text PRIMARY KEY,
    offset_s        double precision NOT NULL,
    measured_at     timestamptz NOT NULL
);
