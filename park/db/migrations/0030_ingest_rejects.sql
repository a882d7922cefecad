--@ all
-- A rejected payload is kept truncated (its first 1 KiB); its whole length is kept beside it, so an
-- operator sees that a 1 MB message came in without the database holding the megabyte.
ALTER TABLE rejects ADD COLUMN payload_bytes integer;
COMMENT ON COLUMN rejects.payload IS 'the first 1 KiB of the rejected message (NULL for one bad point of a batch)';
COMMENT ON COLUMN rejects.payload_bytes IS 'the rejected message''s whole length in bytes';
