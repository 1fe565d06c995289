-- Warning events of the watched Kubernetes clusters (events.k8s.io/v1, type
-- Warning), as the leader's watch last saw them: a row per event object, gone
-- when the API server expires the event. Any replica answers
-- GET /api/v1/kubernetes/events from here.
CREATE TABLE k8s_warnings (
    cluster      TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    note         TEXT NOT NULL,
    count        BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster, namespace, name)
);
CREATE INDEX k8s_warnings_by_resource ON k8s_warnings (resource_id);
CREATE INDEX k8s_warnings_by_time ON k8s_warnings (last_seen_ms);
