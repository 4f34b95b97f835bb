-- Outbound event webhooks: endpoints and their outbox.

-- +goose Up
CREATE TABLE webhook_endpoints (
    id         INTEGER PRIMARY KEY,
    url        TEXT    NOT NULL,
    secret     TEXT    NOT NULL,
    events     TEXT    NOT NULL,              -- ",sent,opened," : the types it receives
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    endpoint_id     INTEGER NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    type            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,         -- JSON object
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    delivered_at    INTEGER,
    dead            INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (endpoint_id, next_attempt_at) WHERE delivered_at IS NULL AND NOT dead;

-- +goose Down
DROP TABLE webhook_outbox;
DROP TABLE webhook_endpoints;
