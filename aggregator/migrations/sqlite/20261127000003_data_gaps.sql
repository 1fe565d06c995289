-- Data an agent reported lost (buffer cap, corruption, refused batches): one row
-- per reported gap, written in the same transaction as the batch that carried it.
CREATE TABLE data_gaps (
    agent_id       TEXT NOT NULL,
    host_id        TEXT NOT NULL,
    first_seq      BIGINT NOT NULL,
    last_seq       BIGINT NOT NULL,
    from_ms        BIGINT NOT NULL,
    to_ms          BIGINT NOT NULL,
    samples_lost   BIGINT NOT NULL,
    batches_lost   BIGINT NOT NULL,
    cause          TEXT NOT NULL,
    exact          BOOLEAN NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (agent_id, first_seq, cause)
);
CREATE INDEX data_gaps_time ON data_gaps (to_ms);
