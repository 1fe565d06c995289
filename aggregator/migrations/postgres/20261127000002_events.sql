-- The transactional outbox: every event, written in the same transaction as the
-- state change it announces. position is the global event cursor (1, 2, 3, ...).
CREATE TABLE event_outbox (
    position         BIGINT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    resource_kind    TEXT NOT NULL,
    resource_version BIGINT NOT NULL,
    payload          BYTEA NOT NULL,
    created_at_ms    BIGINT NOT NULL
);
CREATE INDEX event_outbox_created ON event_outbox (created_at_ms);

-- Where each consumer stands: a sink (kind 'sink') or a named durable
-- subscription (kind 'subscription', with its filter as JSON).
CREATE TABLE event_cursors (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    filter        TEXT NOT NULL,
    position      BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Events that failed validation, with the reason; never published.
CREATE TABLE event_dead_letters (
    event_id         TEXT PRIMARY KEY,
    resource_id      TEXT NOT NULL,
    resource_version BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    recorded_at_ms   BIGINT NOT NULL
);

-- Counters that must survive pruning, e.g. the last event position.
CREATE TABLE aggregator_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
