-- The status index leaves out sent rows. A message sent moved its entry from 'pending' to
-- 'sent': a B-tree delete and an insert in every write-back, for entries that no statement on
-- SQLite needs. The queue reads pending rows; the listing, the settling of a delivery and its
-- counts read the other statuses through this index, and sent rows through
-- sending_log_delivery (they are most of a delivery's rows) or by what is not sent. A
-- statement that should use the index says `status <> 'sent'`, which SQLite needs to see to
-- pick a partial index (internal/sending's unsent). PostgreSQL keeps the whole index.

-- +goose Up
DROP INDEX sending_log_status;
CREATE INDEX sending_log_status ON sending_log (delivery_id, status, id) WHERE status <> 'sent';

-- +goose Down
DROP INDEX sending_log_status;
CREATE INDEX sending_log_status ON sending_log (delivery_id, status, id);
