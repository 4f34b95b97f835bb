-- The nodes sending from this database, each seen by its heartbeat. The limits an operator
-- sets (a relay's rate, a recipient domain's rate and messages in progress) are the
-- installation's: each node takes its share of them among the nodes that are sending
-- (internal/sending, nodes.go).

-- +goose Up
CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL,
    -- active: the node had a batch in flight since its previous heartbeat
    active     INTEGER NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE nodes;
