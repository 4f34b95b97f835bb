-- Fewer indexes to maintain when preparation writes a million pending rows:
-- the queue index duplicated sending_log_status (delivery_id, status, id), which the engine's
-- claims now use; the lease index only matters for rows in flight, the sent-at index only for
-- sent rows, so both become partial and a pending row is in neither.

-- +goose Up
DROP INDEX sending_log_queue;
DROP INDEX sending_log_lease;
CREATE INDEX sending_log_in_flight ON sending_log (lease_until) WHERE status = 'sending';
DROP INDEX sending_log_sent;
CREATE INDEX sending_log_sent ON sending_log (delivery_id, sent_at) WHERE sent_at IS NOT NULL;

-- +goose Down
DROP INDEX sending_log_sent;
CREATE INDEX sending_log_sent ON sending_log (delivery_id, sent_at);
DROP INDEX sending_log_in_flight;
CREATE INDEX sending_log_lease ON sending_log (status, lease_until);
CREATE INDEX sending_log_queue ON sending_log (delivery_id, status, next_attempt_at);
