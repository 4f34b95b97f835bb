-- Compute stats counts each kind of tracking event's distinct rows in index order: the tracking
-- log's delivery index puts log_id before machine, so that one kind's events (and its human
-- events) come out sorted by row and COUNT(DISTINCT log_id) streams instead of sorting. It
-- replaces (delivery_id, kind, machine, log_id, at), with the same columns: nothing more to
-- write per hit.

-- +goose Up
DROP INDEX tracking_events_delivery;
CREATE INDEX tracking_events_delivery ON tracking_events (delivery_id, kind, log_id, machine, at);

-- +goose Down
DROP INDEX tracking_events_delivery;
CREATE INDEX tracking_events_delivery ON tracking_events (delivery_id, kind, machine, log_id, at);
