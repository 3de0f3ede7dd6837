//! Tests of the sccache glue over a directory-backed test backend.
