//! The relay's own key: X25519, generated on first start and kept as
//! `privkey:<hex>` in a file of mode 0600 (`weft_types::keyfile`). Clients
//! learn its public half from the `ServerKey` frame; nothing pins it, so
//! losing it costs nothing but a reconnect.

use std::path::Path;

use weft_types::NodePrivate;
pub use weft_types::keyfile::KeyFileError;

/// Loads the relay key at `path`, or creates one there (0600).
///
/// # Errors
/// [`KeyFileError`].
pub fn load_or_create_key(path: &Path) -> Result<NodePrivate, KeyFileError> {
    let loaded = weft_types::keyfile::load_or_create::<NodePrivate>(
        path,
        "relay key",
        "remove it to make a new one",
    )?;
    if loaded.loose_permissions {
        tracing::warn!(path = %path.display(), "the relay key is readable by others; chmod 600 it");
    }
    if loaded.created {
        tracing::info!(path = %path.display(), public = %loaded.key.public(), "generated the relay key");
    }
    Ok(loaded.key)
}
