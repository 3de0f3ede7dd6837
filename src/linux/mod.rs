//! Linux backend: overlayfs + namespaces.
