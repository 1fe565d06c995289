-- The machine each agent certificate identity speaks for, pinned on its first
-- stream: a certificate reports for one machine. With grpc.machine_binding =
-- "exclusive" (the default) a machine is also spoken for by one identity only
-- (the earliest binding wins), so another certificate cannot take a machine
-- over while its own is away; an admin releases a binding (REST DELETE
-- /api/v1/agents/{identity}/machine).
CREATE TABLE agent_machines (
    identity    TEXT PRIMARY KEY,
    machine_id  TEXT NOT NULL,
    bound_at_ms BIGINT NOT NULL
);
CREATE INDEX agent_machines_by_machine ON agent_machines (machine_id);
