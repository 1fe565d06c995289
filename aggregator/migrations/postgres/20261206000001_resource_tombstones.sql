-- A deleted resource (a Kubernetes object that went away, a cloud instance
-- that was terminated) keeps its row as a tombstone: the time it was deleted
-- and its last version, so that its history stays readable and an object
-- created again under the same id continues from the next version instead of
-- starting over at 1. Tombstones older than the history retention are pruned.
ALTER TABLE resources ADD COLUMN deleted_at_ms BIGINT;
CREATE INDEX resources_deleted ON resources (deleted_at_ms);
