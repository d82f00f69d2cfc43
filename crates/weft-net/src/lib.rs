//! Weft's data-plane drivers: the TUN device, batched UDP and the engine loop joining them to weft-wg
