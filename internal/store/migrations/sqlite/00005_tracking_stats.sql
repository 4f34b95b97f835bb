-- Tracking and statistics: the delivery's tracked links, the append-only tracking log, the live
-- KPI counters per delivery and per hour, and the first-event times of the sending log that make
-- unique counts exact. Times are Unix milliseconds (UTC).

-- +goose Up
-- First-event times the tracking sink sets once per row (first_open_at and first_click_at are in
-- 00003): they decide whether a hit moves a unique counter.
ALTER TABLE sending_log ADD COLUMN first_human_open_at INTEGER;
ALTER TABLE sending_log ADD COLUMN first_mirror_at INTEGER;
ALTER TABLE sending_log ADD COLUMN optout_at INTEGER;

-- The links of a delivery's HTML by index (content.Template.Links), as click tokens name them.
CREATE TABLE tracked_links (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    url         TEXT    NOT NULL,
    mode        TEXT    NOT NULL CHECK (mode IN ('tracked', 'never', 'mirror', 'optout')),
    PRIMARY KEY (delivery_id, idx)
);

-- Append-only: one row per recorded hit.
CREATE TABLE tracking_events (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    log_id      INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('open', 'click', 'mirror', 'optout')),
    link        INTEGER,                                 -- the link index of a click
    at          INTEGER NOT NULL,
    user_agent  TEXT    NOT NULL DEFAULT '',
    machine     INTEGER NOT NULL DEFAULT 0,
    why         TEXT    NOT NULL DEFAULT ''
);
-- Covers Compute stats' distinct counts per kind; log_id serves a profile's history.
CREATE INDEX tracking_events_delivery ON tracking_events (delivery_id, kind, machine, log_id, at);
CREATE INDEX tracking_events_log ON tracking_events (log_id, id);

-- Live counters, moved in the transactions that change their sources; Compute stats rewrites them.
CREATE TABLE delivery_stats (
    delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    sent         INTEGER NOT NULL DEFAULT 0,
    delivered    INTEGER NOT NULL DEFAULT 0,
    hard_bounces INTEGER NOT NULL DEFAULT 0,
    soft_bounces INTEGER NOT NULL DEFAULT 0,
    other_errors INTEGER NOT NULL DEFAULT 0,
    opens        INTEGER NOT NULL DEFAULT 0,
    opens_human  INTEGER NOT NULL DEFAULT 0,
    clicks       INTEGER NOT NULL DEFAULT 0,
    optouts      INTEGER NOT NULL DEFAULT 0,
    mirror       INTEGER NOT NULL DEFAULT 0,
    computed_at  INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX delivery_stats_updated ON delivery_stats (updated_at);

-- The same counters by hour (hour = the hour's start in Unix milliseconds), for charts.
CREATE TABLE delivery_stats_hourly (
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    hour         INTEGER NOT NULL,
    sent         INTEGER NOT NULL DEFAULT 0,
    delivered    INTEGER NOT NULL DEFAULT 0,
    hard_bounces INTEGER NOT NULL DEFAULT 0,
    soft_bounces INTEGER NOT NULL DEFAULT 0,
    other_errors INTEGER NOT NULL DEFAULT 0,
    opens        INTEGER NOT NULL DEFAULT 0,
    opens_human  INTEGER NOT NULL DEFAULT 0,
    clicks       INTEGER NOT NULL DEFAULT 0,
    optouts      INTEGER NOT NULL DEFAULT 0,
    mirror       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, hour)
);

-- +goose Down
DROP TABLE delivery_stats_hourly;
DROP TABLE delivery_stats;
DROP TABLE tracking_events;
DROP TABLE tracked_links;
ALTER TABLE sending_log DROP COLUMN optout_at;
ALTER TABLE sending_log DROP COLUMN first_mirror_at;
ALTER TABLE sending_log DROP COLUMN first_human_open_at;
