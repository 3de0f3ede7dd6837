//! FreeBSD backend: jails + ZFS, orchestrated over a kernel seam.
