-- Several aggregators on one database.

-- Cluster-wide work (the event sequencer, publishers, retention, the staleness
-- check of agents no replica serves) runs on the holder of a lease. Every new
-- holder gets a higher epoch; the sequencer's writes check it, so a replica that
-- lost the lease cannot write as leader afterwards.
CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Every running replica, and until when it is known to be alive (heartbeats).
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY,
    alive_until_ms BIGINT NOT NULL,
    started_at_ms  BIGINT NOT NULL
);

-- The replica holding an agent's session, and the session's epoch: a new stream
-- on any replica raises it, and a replica writes an agent's samples, cursor and
-- state position only while the epoch is the one it opened the session with.
ALTER TABLE agent_cursors ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agent_cursors ADD COLUMN owner TEXT NOT NULL DEFAULT '';

-- Events of committed state changes wait here until the leader's sequencer
-- moves them to event_outbox with consecutive positions. Positions assigned by
-- the committing transactions could become visible out of order; the sequencer
-- assigns them after commit, to what is visible, so consumers never see a gap
-- filled later. A resource's versions commit one after another (its row is
-- locked), so they reach the outbox in version order.
CREATE TABLE event_staging (
    id               BIGSERIAL PRIMARY KEY,
    event_id         TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    resource_kind    TEXT NOT NULL,
    resource_version BIGINT NOT NULL,
    payload          BYTEA NOT NULL,
    created_at_ms    BIGINT NOT NULL
);
