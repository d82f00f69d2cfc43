//! Identifiers: node, user, profile ids (in progress).
