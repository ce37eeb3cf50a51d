-- An event id is spent only by an applied event (issue 12). A delivery that was refused
-- (a missing reference, an overlap, ...) or failed leaves its id free: the same event can be
-- applied later, once the reason for its refusal is gone. Every refused attempt stays in the
-- log for the audit trail, so one event_id may have many refused rows and at most one applied.
-- Idempotent (IF [NOT] EXISTS throughout): safe to re-run by hand.

-- "was this event applied?": the duplicate check, and the guard against two applies of one id
CREATE UNIQUE INDEX IF NOT EXISTS transactions_event_id_applied
    ON history.transactions (event_id) WHERE status = 'applied';
-- "every delivery of this event": the content check (event.id_reused) and the audit lookups
CREATE INDEX IF NOT EXISTS transactions_event_id ON history.transactions (event_id);

ALTER TABLE history.transactions DROP CONSTRAINT IF EXISTS transactions_event_id_key;
