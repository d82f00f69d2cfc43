-- SSH check approvals (docs/PROTOCOL.md §9.5): the tailnet user re-authenticated
-- for logins from one source node at approved_ms; a check whose rule's checkPeriod
-- reaches back that far is accepted at once until expires_ms (approved_ms + the
-- approving rule's checkPeriod). One row per (user, source node): a new approval
-- replaces the old. Rows go with their user or node (ON DELETE CASCADE); the
-- store deletes them when a node is expired by an admin or changes owner, and
-- sweeps expired ones. Keep in step with ../sqlite/0003_ssh_approvals.sql.
CREATE TABLE ssh_approvals (
    user_id     BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    node_id     BIGINT  NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    approved_ms BIGINT  NOT NULL,
    expires_ms  BIGINT  NOT NULL CHECK (expires_ms > approved_ms),
    -- who approved (login name) and what: for the audit trail
    approved_by TEXT    NOT NULL,
    check_id    TEXT    NOT NULL,
    dst_node_id BIGINT  REFERENCES nodes (id) ON DELETE SET NULL,
    local_user  TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, node_id)
);
CREATE INDEX ssh_approvals_node ON ssh_approvals (node_id);
CREATE INDEX ssh_approvals_dst_node ON ssh_approvals (dst_node_id);
CREATE INDEX ssh_approvals_expires ON ssh_approvals (expires_ms);
