//! Configuration (TOML) with defaults that work without a file.
