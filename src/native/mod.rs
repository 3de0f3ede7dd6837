//! The platform's own backend, built from the `[builder]` configuration, and its probe for
//! `jailbuilder doctor`. The one place (besides `lib.rs`'s alias) that picks a platform.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(target_os = "freebsd")]
#[path = "freebsd.rs"]
mod imp;

use std::ops::Range;

use crate::config::BuilderConfig;

pub use imp::{open_backend, probe, NativeError};

/// One line of `jailbuilder doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeItem {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// `name (id)` of every `/etc/passwd` or `/etc/group` line whose numeric id (the third
/// field in both, and in FreeBSD's master.passwd) is in `ids`. Comments, NIS `+`/`-` lines
/// and malformed lines are skipped.
pub fn accounts_in_range(text: &str, ids: &Range<u32>) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.trim().parse().ok()?;
            ids.contains(&id).then(|| format!("{name} ({id})"))
        })
        .collect()
}

/// True when a Linux `/proc/<pid>/status` has a real, effective, saved or filesystem uid in
/// `uids` or gid in `gids` (proc(5): `Uid:` and `Gid:` lines, four ids each).
pub fn status_in_range(status: &str, uids: &Range<u32>, gids: &Range<u32>) -> bool {
    status.lines().any(|l| {
        let (range, rest) = if let Some(r) = l.strip_prefix("Uid:") {
            (uids, r)
        } else if let Some(r) = l.strip_prefix("Gid:") {
            (gids, r)
        } else {
            return false;
        };
        rest.split_whitespace()
            .filter_map(|id| id.parse::<u32>().ok())
            .any(|id| range.contains(&id))
    })
}

/// `jailbuilder doctor`'s check that the build id range is jailbuilder's alone: no local
/// account or group uses one (NSS sources beyond the files are not consulted), and no
/// running process holds one (Linux; a running jailbuilder's own builds count too).
pub fn probe_build_ids(cfg: &BuilderConfig) -> Vec<ProbeItem> {
    let (uids, gids) = cfg.build_id_ranges();
    let shown = |r: &Range<u32>| format!("{}..={}", r.start, r.end.saturating_sub(1));
    let mut items = Vec::new();
    for (name, path, range, what) in [
        ("build uids: accounts", "/etc/passwd", &uids, "uid"),
        ("build gids: groups", "/etc/group", &gids, "gid"),
    ] {
        items.push(match std::fs::read_to_string(path) {
            Err(e) => ProbeItem {
                name,
                ok: false,
                detail: format!("reading {path}: {e}"),
            },
            Ok(text) => {
                let used = accounts_in_range(&text, range);
                ProbeItem {
                    name,
                    ok: used.is_empty(),
                    detail: if used.is_empty() {
                        format!("no entry of {path} has a {what} in {}", shown(range))
                    } else {
                        format!(
                            "{path} uses {what}s of the build range {}: {}; choose another \
                             build_{what}_base",
                            shown(range),
                            used.join(", ")
                        )
                    },
                }
            }
        });
    }
    items.push(match imp::processes_in_range(&uids, &gids) {
        None => ProbeItem {
            name: "build ids: processes",
            ok: true,
            detail: "not checked on this platform".into(),
        },
        Some(Err(e)) => ProbeItem {
            name: "build ids: processes",
            ok: false,
            detail: format!("scanning processes: {e}"),
        },
        Some(Ok(found)) => ProbeItem {
            name: "build ids: processes",
            ok: found.is_empty(),
            detail: if found.is_empty() {
                format!(
                    "no process runs as a uid in {} or a gid in {}",
                    shown(&uids),
                    shown(&gids)
                )
            } else {
                format!(
                    "processes run as build ids (a running jailbuilder's builds do): {}",
                    found.join(", ")
                )
            },
        },
    });
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_groups_in_the_build_range_are_found() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534::/:/usr/sbin/nologin\n\
                      squatter:x:1879048193:100::/home/s:/bin/sh\n\
                      +nis::::::\nbroken line\n";
        let r = 1_879_048_192..1_879_048_200;
        assert_eq!(accounts_in_range(passwd, &r), ["squatter (1879048193)"]);
        assert!(accounts_in_range(passwd, &(1..100)).is_empty());
        let group = "wheel:*:0:root\nbuilders:*:1879048199:a,b\nafter:*:1879048200:\n";
        assert_eq!(accounts_in_range(group, &r), ["builders (1879048199)"]);
    }

    #[test]
    fn a_process_status_with_a_build_id_is_found() {
        let status = |uid: &str, gid: &str| {
            format!("Name:\tcc1\nState:\tS\nUid:\t{uid}\nGid:\t{gid}\nGroups:\t5\n")
        };
        let (u, g) = (1000..1004, 2000..2004);
        assert!(!status_in_range(&status("0 0 0 0", "0 0 0 0"), &u, &g));
        assert!(status_in_range(&status("0 1003 0 0", "0 0 0 0"), &u, &g));
        assert!(status_in_range(&status("0 0 0 0", "0 0 0 2000"), &u, &g));
        assert!(!status_in_range(
            &status("1004 1004 1004 1004", "1999 1999 1999 1999"),
            &u,
            &g
        ));
        // A gid in the uid range (or the reverse) is not a match: the ranges are separate.
        assert!(!status_in_range(
            &status("2000 2000 2000 2000", "0 0 0 0"),
            &u,
            &g
        ));
    }
}
