-- Progress counts a delivery's ambiguous rows on every read; this index holds only those rows
-- (rare: messages in flight at a crash), so the count does not grow with the delivery.

-- +goose Up
CREATE INDEX sending_log_ambiguous ON sending_log (delivery_id) WHERE ambiguous;

-- +goose Down
DROP INDEX sending_log_ambiguous;
