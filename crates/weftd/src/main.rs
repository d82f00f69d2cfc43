//! weftd, the Weft node daemon (and, with 'weftd wg', a plain userspace WireGuard device)

fn main() {}
