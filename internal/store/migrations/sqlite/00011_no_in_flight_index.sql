-- Each message passes through sending_log_in_flight twice (in at the in-flight mark, out at
-- the write-back): two B-tree writes of the nine a sent message costs, for an index that only
-- the periodic lease queries read. They find the rows in flight through the status index
-- instead, delivery by delivery (delivery_id IN (SELECT id FROM deliveries) AND
-- status = 'sending'). PostgreSQL keeps the index: several nodes query it there.

-- +goose Up
DROP INDEX sending_log_in_flight;

-- +goose Down
CREATE INDEX sending_log_in_flight ON sending_log (lease_until) WHERE status = 'sending';
