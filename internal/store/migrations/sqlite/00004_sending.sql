-- The sending engine: the indexes its queue and progress need, and the capture mailbox of
-- development mode. Times are Unix milliseconds (UTC).

-- +goose Up
-- Expired leases of rows in flight are looked for by status across deliveries.
CREATE INDEX sending_log_lease ON sending_log (status, lease_until);
-- The sending rate of the last minute, for progress.
CREATE INDEX sending_log_sent ON sending_log (delivery_id, sent_at);

-- Messages kept instead of sent when no SMTP relay is configured (capture mode); the
-- newest are kept, up to a cap the capture sender enforces.
CREATE TABLE captured_messages (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER,
    log_id       INTEGER,
    to_address   TEXT    NOT NULL,
    from_address TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX captured_messages_delivery ON captured_messages (delivery_id, id);

-- +goose Down
DROP TABLE captured_messages;
DROP INDEX sending_log_sent;
DROP INDEX sending_log_lease;
