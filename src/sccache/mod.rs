//! sccache-dist integration.
