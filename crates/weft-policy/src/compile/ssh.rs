//! Compiling `ssh` rules into each node's [`SshPolicy`](weft_types::filter::SshPolicy) pieces.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_types::filter::{LocalUser, SSH_ANY_USER, SshAction, SshMode, SshPrincipal};

use super::{CompiledTailnet, Compiler, Src, SshPiece, origin, push_list};
use crate::bits::Bits;
use crate::policy::{Autogroup, Selector, SshRuleAction, SshUser};

impl<'a> Compiler<'a> {
    pub(super) fn compile_ssh(
        &self,
        out: &mut CompiledTailnet,
        only: Option<usize>,
        user_slot_cache: &mut BTreeMap<&'a str, Bits>,
    ) {
        let n = self.n;
        for (ri, rule) in self.policy.ssh.iter().enumerate() {
            let r = u32::try_from(ri).unwrap_or(u32::MAX);
            let (users, localparts) = ssh_users(rule.users.iter().map(|u| &u.value));
            let mode = match rule.action {
                SshRuleAction::Accept => SshMode::Accept,
                SshRuleAction::Check(period) => SshMode::Check { period },
            };
            let action = SshAction {
                mode,
                allow_agent_forwarding: true,
                allow_local_port_forwarding: true,
                allow_remote_port_forwarding: true,
                recorder: rule.recorder,
            };
            out.ssh_meta
                .push((Arc::new(users.clone()), action, origin(ri, rule.loc.line)));
            let src = self.resolve_src(rule.src.iter().map(|s| &s.value));
            // Which nodes does the rule reach, and how (normally or as self)?
            let mut reach: BTreeMap<usize, bool> = BTreeMap::new(); // node -> reached normally
            let candidates: Vec<usize> = match only {
                Some(b) => vec![b],
                None => {
                    let mut nodes = Bits::new(n);
                    for d in &rule.dst {
                        if d.value == Selector::Autogroup(Autogroup::SelfDevices) {
                            nodes.or_assign(&self.members);
                        } else {
                            nodes.or_assign(&self.target_slots(&d.value).project_pairs(n));
                        }
                    }
                    nodes.ones().collect()
                }
            };
            for b in candidates {
                for d in &rule.dst {
                    if d.value == Selector::Autogroup(Autogroup::SelfDevices) {
                        if self.members.get(b) {
                            reach.entry(b).or_insert(false);
                        }
                    } else if self.target_slots_of(&d.value, b) != (false, false) {
                        reach.insert(b, true);
                    }
                }
            }
            let lp_users: Vec<(&'a str, String)> = localparts
                .iter()
                .flat_map(|d| self.domain_users(d))
                .collect();
            let mut normal_list: Option<Option<u32>> = None;
            let mut per_user: BTreeMap<&'a str, Option<u32>> = BTreeMap::new();
            let mut localpart_lists: BTreeMap<(&'a str, Option<&'a str>), Option<u32>> =
                BTreeMap::new();
            for (b, normally) in reach {
                let owner: Option<&'a str> = self
                    .tailnet
                    .nodes()
                    .get(b)
                    .and_then(|node| node.owner_name());
                // Principals: all sources, or (self) only the owner's own devices.
                let restrict = if normally { None } else { owner };
                if !users.is_empty() {
                    let list = match restrict {
                        None => *normal_list.get_or_insert_with(|| {
                            self.principals(&mut out.principal_lists, &src, None)
                        }),
                        Some(u) => *per_user.entry(u).or_insert_with(|| {
                            let us = user_slot_cache
                                .entry(u)
                                .or_insert_with(|| self.user_slots(u));
                            self.principals(&mut out.principal_lists, &src, Some(us))
                        }),
                    };
                    if let Some(list) = list {
                        out.ssh[b].push(SshPiece {
                            rule: r,
                            principals: list,
                            localpart: None,
                        });
                    }
                }
                for (login, local) in &lp_users {
                    if restrict.is_some_and(|u| u != *login) {
                        continue;
                    }
                    let list = *localpart_lists
                        .entry((*login, restrict))
                        .or_insert_with(|| {
                            let us = user_slot_cache
                                .entry(*login)
                                .or_insert_with(|| self.user_slots(login));
                            let slots = src.slots.and(us);
                            if slots.is_empty() {
                                None
                            } else {
                                let prefixes = self.prefixes(&slots, &[]);
                                Some(push_list(
                                    &mut out.principal_lists,
                                    prefixes.into_iter().map(SshPrincipal::Prefix).collect(),
                                ))
                            }
                        });
                    if let Some(list) = list {
                        out.ssh[b].push(SshPiece {
                            rule: r,
                            principals: list,
                            localpart: Some(local.clone()),
                        });
                    }
                }
            }
        }
    }

    /// Principals for `src`, optionally restricted to the slots `only`.
    fn principals(
        &self,
        lists: &mut Vec<Arc<Vec<SshPrincipal>>>,
        src: &Src,
        only: Option<&Bits>,
    ) -> Option<u32> {
        let list: Vec<SshPrincipal> = match only {
            None if src.any => vec![SshPrincipal::Any],
            None => self
                .prefixes(&src.slots, &src.raw)
                .into_iter()
                .map(SshPrincipal::Prefix)
                .collect(),
            Some(us) => self
                .prefixes(&src.slots.and(us), &[])
                .into_iter()
                .map(SshPrincipal::Prefix)
                .collect(),
        };
        if list.is_empty() {
            None
        } else {
            Some(push_list(lists, list))
        }
    }

    /// Users whose login is in `domain`, with their local part.
    fn domain_users(&self, domain: &str) -> Vec<(&'a str, String)> {
        self.tailnet
            .users()
            .keys()
            .filter_map(|login| {
                let (local, d) = login.as_str().split_once('@')?;
                (d.eq_ignore_ascii_case(domain)
                    && local != "root"
                    && crate::syntax::local_user_name(local).is_ok())
                .then(|| (login.as_str(), local.to_string()))
            })
            .collect()
    }
}

/// Compiles an `ssh` rule's `users` into the wire map, plus the domains of
/// its `localpart:` entries (compiled into per-user rules).
fn ssh_users<'u>(
    users: impl Iterator<Item = &'u SshUser>,
) -> (BTreeMap<String, LocalUser>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut domains = Vec::new();
    let mut root = false;
    for u in users {
        match u {
            SshUser::Root => {
                root = true;
                map.insert("root".to_string(), LocalUser::Named("root".to_string()));
            }
            SshUser::NonRoot => {
                map.insert(SSH_ANY_USER.to_string(), LocalUser::SameNameNonRoot);
            }
            SshUser::Named(n) => {
                map.insert(n.clone(), LocalUser::Named(n.clone()));
            }
            SshUser::Localpart { domain } => domains.push(domain.clone()),
        }
    }
    if !root && map.contains_key(SSH_ANY_USER) {
        map.insert("root".to_string(), LocalUser::NoMapping);
    }
    (map, domains)
}
