//! The server's Noise static key: generated on first start and kept in the
//! state directory as `server.key` (`privkey:<hex>`, mode 0600,
//! `weft_types::keyfile`). Nodes pin its public half, so losing it means
//! every node must log in again.

use std::path::Path;

use weft_types::MachinePrivate;
pub use weft_types::keyfile::KeyFileError;

/// Loads the key at `path`, or creates one there (0600, written to a
/// temporary file and renamed, so a crash never leaves half a key).
///
/// # Errors
/// [`KeyFileError`].
pub fn load_or_create(path: &Path) -> Result<MachinePrivate, KeyFileError> {
    let loaded = weft_types::keyfile::load_or_create::<MachinePrivate>(
        path,
        "server key",
        "restore it from a backup or remove it to make a new one (every node must then log in again)",
    )?;
    if loaded.loose_permissions {
        tracing::warn!(path = %path.display(), "the server key is readable by others; chmod 600 it");
    }
    if loaded.created {
        tracing::info!(path = %path.display(), public = %loaded.key.public(), "generated the server key");
    }
    Ok(loaded.key)
}
