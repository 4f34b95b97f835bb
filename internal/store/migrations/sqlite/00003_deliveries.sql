-- Deliveries, their approvals and proofs, the sending and exclusion logs, and typology rules.
-- Times are Unix milliseconds (UTC); JSON is kept as TEXT.

-- +goose Up
CREATE TABLE deliveries (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL,
    channel            TEXT    NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    audience_id        INTEGER REFERENCES audiences (id),
    content            TEXT    NOT NULL DEFAULT '{}',
    schedule           TEXT    NOT NULL DEFAULT '{}',   -- {"contact_date": ms or null, "time_zone": ""}
    contact_at         INTEGER,                          -- the contact date, copied from schedule; set at confirm when empty
    state              TEXT    NOT NULL CHECK (state IN ('draft', 'preparing', 'prepare_failed', 'ready', 'approved',
                           'scheduled', 'sending', 'paused', 'retrying', 'stopped', 'finished', 'failed')),
    typology           TEXT    NOT NULL DEFAULT '{}',   -- per-delivery rule settings
    validity_seconds   INTEGER NOT NULL,
    validity_until     INTEGER,
    approvals_required TEXT    NOT NULL DEFAULT '{}',   -- {"content": bool, "target": bool, "four_eyes": bool}
    prepared_hash      TEXT,
    prepared_at        INTEGER,
    targeted           INTEGER NOT NULL DEFAULT 0,
    to_deliver         INTEGER NOT NULL DEFAULT 0,
    excluded           INTEGER NOT NULL DEFAULT 0,
    prep_log           TEXT    NOT NULL DEFAULT '{}',   -- warnings, errors, exclusions by reason
    confirmed_by       INTEGER,
    confirmed_at       INTEGER,
    created_by         INTEGER,
    updated_by         INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX deliveries_state ON deliveries (state, contact_at);
CREATE INDEX deliveries_audience ON deliveries (audience_id);

CREATE TABLE delivery_approvals (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('content', 'target')),
    decision    TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    by_id       INTEGER,
    by_login    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    comment     TEXT    NOT NULL DEFAULT '',
    hash        TEXT    NOT NULL                         -- the prepared hash approved; an edit voids it
);
CREATE INDEX delivery_approvals_delivery ON delivery_approvals (delivery_id, id);

-- One narrow row per (delivery, recipient); no message body. Statuses: pending, sent,
-- delivered, retrying, failed, cancelled (the sending engine owns the values past pending).
CREATE TABLE sending_log (
    id              INTEGER PRIMARY KEY,
    delivery_id     INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    profile_id      INTEGER NOT NULL,
    address         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    lease_owner     TEXT,
    lease_until     INTEGER,
    failure_type    TEXT,
    failure_reason  TEXT,
    smtp_code       INTEGER,
    enhanced_code   TEXT,
    provider_id     TEXT,
    ambiguous       INTEGER NOT NULL DEFAULT 0,
    sent_at         INTEGER,
    first_open_at   INTEGER,
    first_click_at  INTEGER
);
CREATE INDEX sending_log_queue ON sending_log (delivery_id, status, next_attempt_at);
CREATE INDEX sending_log_profile ON sending_log (profile_id);

CREATE TABLE exclusion_log (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    profile_id  INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    rule        TEXT    NOT NULL
);
CREATE INDEX exclusion_log_delivery ON exclusion_log (delivery_id, reason);

CREATE TABLE proofs (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    addresses   TEXT    NOT NULL,                        -- JSON array
    subject     TEXT    NOT NULL DEFAULT '',
    at          INTEGER NOT NULL,
    by_id       INTEGER,
    by_login    TEXT    NOT NULL,
    UNIQUE (delivery_id, n)
);

CREATE TABLE typology_rules (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('filtering', 'fatigue', 'control')),
    phase_order INTEGER NOT NULL DEFAULT 0,
    settings    TEXT    NOT NULL DEFAULT '{}',
    severity    TEXT    NOT NULL CHECK (severity IN ('warning', 'error')),
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The built-in control rules: switchable, their severity and order editable.
INSERT INTO typology_rules (name, kind, phase_order, settings, severity, enabled, created_at, updated_at) VALUES
    ('Subject empty', 'control', 10, '{"check": "subject_empty"}', 'error', 1, 0, 0),
    ('Content empty', 'control', 20, '{"check": "content_empty"}', 'error', 1, 0, 0),
    ('No unsubscribe link', 'control', 30, '{"check": "no_unsubscribe_link"}', 'warning', 1, 0, 0),
    ('Malformed URLs', 'control', 40, '{"check": "malformed_urls"}', 'warning', 1, 0, 0),
    ('Message size', 'control', 50, '{"check": "size_limit", "max_bytes": 102400}', 'warning', 1, 0, 0),
    ('Proof size', 'control', 60, '{"check": "proof_size", "max_recipients": 100}', 'error', 1, 0, 0);

-- +goose Down
DROP TABLE typology_rules;
DROP TABLE proofs;
DROP TABLE exclusion_log;
DROP TABLE sending_log;
DROP TABLE delivery_approvals;
DROP TABLE deliveries;
