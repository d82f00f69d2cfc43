//! Interop with Tailscale's own programs (added next).
