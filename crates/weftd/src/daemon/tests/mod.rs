//! Tests of the coordinator and the LocalAPI against a fake control server
//! and a recording data plane, on virtual time.

mod backend;
pub(super) mod fake;
mod localapi;
