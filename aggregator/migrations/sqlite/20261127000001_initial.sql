-- Current state of every resource. JSON columns hold objects/arrays as text so the
-- same statements run on PostgreSQL and SQLite.
CREATE TABLE resources (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    labels           TEXT NOT NULL,
    attributes       TEXT NOT NULL,
    health           TEXT NOT NULL,
    reasons          TEXT NOT NULL,
    observed_at_ms   INTEGER NOT NULL,
    resource_version INTEGER NOT NULL,
    source           TEXT NOT NULL,
    interval_ms      INTEGER NOT NULL
);
CREATE INDEX resources_kind ON resources (kind);

CREATE TABLE relations (
    from_id       TEXT NOT NULL,
    relation_type TEXT NOT NULL,
    to_id         TEXT NOT NULL,
    PRIMARY KEY (from_id, relation_type, to_id)
);
CREATE INDEX relations_to ON relations (to_id);

-- One row per resource version: every health transition and every change of
-- labels, attributes or relations.
CREATE TABLE health_history (
    resource_id      TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    previous_health  TEXT NOT NULL,
    health           TEXT NOT NULL,
    reasons          TEXT NOT NULL,
    changed          TEXT NOT NULL,
    observed_at_ms   INTEGER NOT NULL,
    recorded_at_ms   INTEGER NOT NULL,
    source           TEXT NOT NULL,
    PRIMARY KEY (resource_id, resource_version)
);

-- Highest batch sequence applied per agent identity, written in the same
-- transaction as the batch's data (effectively-once delivery).
CREATE TABLE agent_cursors (
    agent_id      TEXT PRIMARY KEY,
    last_seq      INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- One-minute rollups of every series.
CREATE TABLE metric_rollups (
    resource_id     TEXT NOT NULL,
    metric          TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    sample_count    INTEGER NOT NULL,
    value_sum       REAL NOT NULL,
    value_min       REAL NOT NULL,
    value_max       REAL NOT NULL,
    value_last      REAL NOT NULL,
    last_ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (resource_id, metric, attributes, bucket_start_ms)
);
