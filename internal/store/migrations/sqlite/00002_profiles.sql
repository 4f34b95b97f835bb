-- Profiles, audiences and the quarantine table.

-- +goose Up
CREATE TABLE profiles (
    id            INTEGER PRIMARY KEY,
    email         TEXT,                              -- as given
    email_key     TEXT,                              -- local part as given, domain lower-cased: the match key
    email_domain  TEXT,                              -- lower-cased
    phone         TEXT,                              -- E.164
    push_tokens   TEXT    NOT NULL DEFAULT '[]',     -- JSON array
    time_zone     TEXT,
    locale        TEXT,
    external_id   TEXT,
    attributes    TEXT    NOT NULL DEFAULT '{}',     -- JSON object
    opt_out_email INTEGER NOT NULL DEFAULT 0,
    opt_out_sms   INTEGER NOT NULL DEFAULT 0,
    opt_out_push  INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    erased_at     INTEGER                            -- set when personal data was erased
);
CREATE UNIQUE INDEX profiles_email_key ON profiles (email_key);
CREATE UNIQUE INDEX profiles_external_id ON profiles (external_id);
CREATE INDEX profiles_email_domain ON profiles (email_domain);

CREATE TABLE audiences (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL CHECK (kind IN ('filter', 'list')),
    filter     TEXT    NOT NULL DEFAULT '',
    created_by INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE audience_members (
    audience_id INTEGER NOT NULL REFERENCES audiences (id) ON DELETE CASCADE,
    profile_id  INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    PRIMARY KEY (audience_id, profile_id)
);
CREATE INDEX audience_members_profile ON audience_members (profile_id);

CREATE TABLE quarantine (
    channel       TEXT    NOT NULL,
    address       TEXT    NOT NULL,                  -- email: local part as given, domain lower-cased
    status        TEXT    NOT NULL CHECK (status IN ('valid', 'erroneous', 'quarantine', 'denylist')),
    error_count   INTEGER NOT NULL DEFAULT 0,
    first_error_at INTEGER,
    last_error_at INTEGER,
    last_reason   TEXT    NOT NULL DEFAULT '',
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (channel, address)
);
CREATE INDEX quarantine_status ON quarantine (status, channel);

CREATE TABLE quarantine_history (
    id          INTEGER PRIMARY KEY,
    channel     TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    error_count INTEGER NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    actor       TEXT    NOT NULL
);
CREATE INDEX quarantine_history_address ON quarantine_history (channel, address, id);

-- +goose Down
DROP TABLE quarantine_history;
DROP TABLE quarantine;
DROP TABLE audience_members;
DROP TABLE audiences;
DROP TABLE profiles;
