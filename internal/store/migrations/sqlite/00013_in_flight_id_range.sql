-- The lowest and highest sending-log id of each batch in flight. A worker that marks a batch
-- must leave out the rows of every other batch in flight for the delivery; reading only the id
-- lists of the batches whose range meets its own skips decoding the other workers' lists, which
-- cost about 2 µs a message with two workers. Batches recorded before this migration get the
-- widest range, so that they are always read.

-- +goose Up
ALTER TABLE in_flight ADD COLUMN min_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE in_flight ADD COLUMN max_id INTEGER NOT NULL DEFAULT 9223372036854775807;

-- +goose Down
ALTER TABLE in_flight DROP COLUMN max_id;
ALTER TABLE in_flight DROP COLUMN min_id;
