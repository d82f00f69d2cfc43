//! The compiled access policy as it travels to a node: packet filter rules and SSH rules.
//! (Owned by the policy work; in progress.)
