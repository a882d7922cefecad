--@ all
-- Fencing in the database itself (park/db/lease.py, hazardwatch/leadership.py). A leader's stages
-- write through a pool whose sessions carry `hazardwatch.lease = 'name/epoch/token'`; every
-- statement on the tables below first checks that term against `ha_lease` — holding a KEY SHARE
-- lock, so a takeover (FOR UPDATE) waits for the statement's transaction — and is refused with
-- SQLSTATE HW409 when another instance took over since. Sessions without the setting (a
-- standby's API, the command line, the journal's flusher, single-purpose tools) are not fenced.
CREATE FUNCTION ha_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    want text := current_setting('hazardwatch.lease', true);
    cur_epoch bigint;
    cur_token uuid;
BEGIN
    IF want IS NULL OR want = '' THEN
        RETURN NULL;
    END IF;
    SELECT epoch, token INTO cur_epoch, cur_token FROM ha_lease
     WHERE name = split_part(want, '/', 1) FOR KEY SHARE;
    IF cur_epoch IS DISTINCT FROM split_part(want, '/', 2)::bigint
       OR cur_token IS DISTINCT FROM split_part(want, '/', 3)::uuid THEN
        RAISE EXCEPTION 'hazardwatch: the term % is over (current epoch %): this instance no longer leads',
            want, cur_epoch USING ERRCODE = 'HW409';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER alarms_fence BEFORE INSERT OR UPDATE OR DELETE ON alarms
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
CREATE TRIGGER alarm_events_fence BEFORE INSERT OR UPDATE OR DELETE ON alarm_events
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
CREATE TRIGGER outbox_fence BEFORE INSERT OR UPDATE OR DELETE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
CREATE TRIGGER notifications_fence BEFORE INSERT OR UPDATE OR DELETE ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
CREATE TRIGGER commands_fence BEFORE INSERT OR UPDATE OR DELETE ON commands
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
CREATE TRIGGER units_fence BEFORE INSERT OR UPDATE OR DELETE ON units
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
-- the rule stage's learned state: a stepped-down leader's last snapshot must not overwrite the new one's
CREATE TRIGGER rules_state_fence BEFORE INSERT OR UPDATE OR DELETE ON rules_state
    FOR EACH STATEMENT EXECUTE FUNCTION ha_fence();
