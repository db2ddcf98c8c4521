//! shoal-vfs (work in progress).
