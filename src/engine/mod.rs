//! The platform-neutral engine: toolchain images, the warm pool, one build end to end.
