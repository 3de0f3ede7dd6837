//! Raw declarations for libzfs_core and libnvpair.
