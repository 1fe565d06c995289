-- Samples and state changes take separate transactions. last_seq is now the
-- newest batch whose samples are durable (written by the sample flush, with the
-- rollups); state_seq is the newest batch whose state changes are committed
-- (written with them), so a batch sent again after a crash changes nothing twice.
ALTER TABLE agent_cursors ADD COLUMN state_seq BIGINT NOT NULL DEFAULT 0;
UPDATE agent_cursors SET state_seq = last_seq;
