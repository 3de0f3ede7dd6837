//! Safe layer over libzfs_core and libnvpair (sys/).
