//! weftd's end-to-end tests, one binary: the real weftd, weft and weft-control binaries in network
//! namespaces (root and `WEFT_E2E=1`; see weft-lab).
#![allow(clippy::unwrap_used)]

mod daemon_process;
mod dns_control_e2e;
mod dns_e2e;
mod dns_os_e2e;
mod first_hour_e2e;
mod https_e2e;
mod install_e2e;
mod nat_e2e;
mod oidc_e2e;
mod policy_e2e;
mod ssh_check_e2e;
mod ssh_common;
mod ssh_e2e;
mod ssh_record_e2e;
mod tailnet_e2e;
mod wg_interop;
