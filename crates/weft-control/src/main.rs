//! weft-control, the Weft coordination server

fn main() {}
