//! SSH check approvals as the admin sees them: list and revoke
//! (`GET /ssh/approvals`, `POST /ssh/approvals/revoke`,
//! `weft-control ssh approvals list|revoke`). Approving is
//! `POST /logins/{id}/approve` ([`Admin::approve`]).

use std::collections::BTreeMap;

use weft_control_store::{SshApproval, SshApprovalFilter};
use weft_types::{NodeId, UserId};

use super::types::{RevokeSshApprovals, SshApprovalView};
use super::{Admin, AdminError};

impl Admin {
    /// Lists the SSH check approvals in force, by user and node: all, or
    /// one user's (`user`, a login name), or those for logins from one node.
    ///
    /// # Errors
    /// `not_found` for an unknown user or node.
    pub async fn list_ssh_approvals(
        &self,
        user: Option<&str>,
        node: Option<i64>,
    ) -> Result<Vec<SshApprovalView>, AdminError> {
        let filter = self.approval_filter(user, node).await?;
        let list = self
            .ctx
            .store
            .list_ssh_approvals(filter, self.now())
            .await?;
        self.approval_views(&list).await
    }

    /// Revokes SSH check approvals: the users they name are asked again at
    /// their next login under a `check` rule. Returns what was revoked.
    ///
    /// # Errors
    /// `invalid` without `user`, `node` or `all` (or with `all` and one of
    /// them); `not_found` for an unknown user or node, or when `user`/`node`
    /// select no approval in force.
    pub async fn revoke_ssh_approvals(
        &self,
        r: &RevokeSshApprovals,
    ) -> Result<Vec<SshApprovalView>, AdminError> {
        let selector = r.user.is_some() || r.node.is_some();
        if r.all == selector {
            return Err(AdminError::invalid(if r.all {
                "--all revokes every approval; give it without --user or --node"
            } else {
                "say which approvals to revoke: --user LOGIN, --node ID (or both), or --all"
            }));
        }
        let filter = self.approval_filter(r.user.as_deref(), r.node).await?;
        let gone = self
            .ctx
            .store
            .revoke_ssh_approvals(filter, self.now())
            .await?;
        if gone.is_empty() && selector {
            return Err(AdminError::not_found(
                "no SSH check approval in force matches; see them with: weft-control ssh approvals list",
            ));
        }
        for a in &gone {
            tracing::info!(user = %a.user, node = %a.node, "ssh check approval revoked");
        }
        self.approval_views(&gone).await
    }

    async fn approval_filter(
        &self,
        user: Option<&str>,
        node: Option<i64>,
    ) -> Result<SshApprovalFilter, AdminError> {
        let user = match user {
            Some(login) => Some(self.ctx.store.user_by_login(login).await?.id),
            None => None,
        };
        let node = match node {
            Some(id) => Some(self.ctx.store.node(NodeId(id)).await?.id),
            None => None,
        };
        Ok(SshApprovalFilter { user, node })
    }

    async fn approval_views(
        &self,
        list: &[SshApproval],
    ) -> Result<Vec<SshApprovalView>, AdminError> {
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let logins: BTreeMap<UserId, String> = self.logins().await?;
        let names: BTreeMap<NodeId, String> = self
            .ctx
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.given_name.to_string()))
            .collect();
        Ok(list
            .iter()
            .map(|a| SshApprovalView {
                user: logins
                    .get(&a.user)
                    .cloned()
                    .unwrap_or_else(|| a.user.to_string()),
                node_id: a.node.0,
                node: names.get(&a.node).cloned().unwrap_or_default(),
                approved: a.approved.0,
                expires: a.expires.0,
                period_ms: u64::try_from(a.expires.0.saturating_sub(a.approved.0)).unwrap_or(0),
                approved_by: a.approved_by.clone(),
                check_id: a.check_id.clone(),
                dst_node_id: a.dst_node.map(|d| d.0),
                dst_node: a.dst_node.and_then(|d| names.get(&d).cloned()),
                local_user: a.local_user.clone(),
            })
            .collect())
    }
}
