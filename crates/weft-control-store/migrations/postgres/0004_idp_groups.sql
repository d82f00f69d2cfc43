-- What the identity provider (OIDC, docs/OIDC.md) said about a user at their last
-- login: idp_groups, a JSON array of policy group names (["group:oidc:engineering"],
-- mapped from the ID token's groups claim with the configured prefix), replaced at
-- every login and used by policy compile next to the policy's own groups; and
-- idp_auth_ms, when the user last authenticated at the IdP (the ID token's
-- auth_time, else the login time), which SSH checks compare with checkPeriod.
-- NULL: never logged in through the IdP. Keep in step with ../sqlite/0004_idp_groups.sql.
ALTER TABLE users ADD COLUMN idp_groups TEXT NOT NULL DEFAULT '[]';
ALTER TABLE users ADD COLUMN idp_auth_ms BIGINT;
