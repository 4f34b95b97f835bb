-- On SQLite the rows in flight are recorded a batch at a time: one in_flight row names the
-- sending-log rows of a batch handed to the channel (log_ids, a JSON array of their ids), under
-- the lease of the node sending it. Those rows stay 'pending' in the sending log and read as
-- 'sending' while their batch is in flight; the write-back deletes the batch in the transaction
-- that writes its outcomes. Moving each row to 'sending' and back cost three B-tree writes a
-- message (the row and its status index entry) for what one write a batch now records.
-- PostgreSQL, where several nodes claim rows side by side, keeps the status.

-- +goose Up
CREATE TABLE in_flight (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    lease_owner TEXT    NOT NULL,
    lease_until INTEGER NOT NULL,
    log_ids     TEXT    NOT NULL
);
CREATE INDEX in_flight_delivery ON in_flight (delivery_id);

-- +goose Down
DROP TABLE in_flight;
