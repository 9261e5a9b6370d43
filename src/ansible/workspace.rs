//! The per-run private directory: inventory, extra vars, key file.
