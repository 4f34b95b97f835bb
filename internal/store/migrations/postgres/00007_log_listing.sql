-- Indexes for listing the logs through the API, keyset-paginated by id (profile id for the
-- exclusion log, which has no id of its own and one row per profile and delivery): each page is
-- an index range scan from the cursor, so page 1000 costs what page 1 does. The PostgreSQL twin
-- of the SQLite file.

-- +goose Up
-- A delivery's sending log in id order, all of it or one status at a time.
CREATE INDEX sending_log_delivery ON sending_log (delivery_id, id);
CREATE INDEX sending_log_status ON sending_log (delivery_id, status, id);
-- A profile's history in id order. SQLite's (profile_id) index ends with the rowid and already
-- does this; here it replaces sending_log_profile, whose uses it serves as well.
CREATE INDEX sending_log_profile_id ON sending_log (profile_id, id);
DROP INDEX sending_log_profile;

-- The exclusion log by profile, all of it or one reason at a time; the second replaces
-- exclusion_log_delivery (delivery_id, reason), whose uses it serves as well.
CREATE INDEX exclusion_log_profile ON exclusion_log (delivery_id, profile_id);
CREATE INDEX exclusion_log_reason ON exclusion_log (delivery_id, reason, profile_id);
DROP INDEX exclusion_log_delivery;

-- A delivery's tracking log in id order, all of it or one kind at a time.
CREATE INDEX tracking_events_list ON tracking_events (delivery_id, id);
CREATE INDEX tracking_events_kind ON tracking_events (delivery_id, kind, id);

-- +goose Down
DROP INDEX tracking_events_kind;
DROP INDEX tracking_events_list;
CREATE INDEX exclusion_log_delivery ON exclusion_log (delivery_id, reason);
DROP INDEX exclusion_log_reason;
DROP INDEX exclusion_log_profile;
CREATE INDEX sending_log_profile ON sending_log (profile_id);
DROP INDEX sending_log_profile_id;
DROP INDEX sending_log_status;
DROP INDEX sending_log_delivery;
