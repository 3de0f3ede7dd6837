//! An error and its causes on one line, each said once.
//!
//! Many library errors follow the common `"{step} {path}: {source}"` pattern *and* return
//! that source from `source()`, so printing the chain (anyhow's `{:#}`) repeats each cause
//! once per level: `preparing /x: Permission denied: Permission denied`. [`render`] walks
//! the chain and leaves out a cause whose text the line already holds.

use std::error::Error;

/// `e` and each of its causes, joined by ": ", a cause whose text already appears in the
/// line so far left out.
pub fn render(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("preparing {path}: {source}")]
    struct Prepare {
        path: String,
        #[source]
        source: io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the server")]
    struct Start(#[source] Prepare);

    #[test]
    fn each_cause_is_said_once() {
        let e = Start(Prepare {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        let denied = io::Error::from(io::ErrorKind::PermissionDenied).to_string();
        // What anyhow's `{:#}` prints: the io error twice.
        let anyhow_line = format!(
            "{:#}",
            anyhow::Error::new(Start(Prepare {
                path: "/x".into(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }))
        );
        assert_eq!(anyhow_line.matches(&denied).count(), 2, "{anyhow_line}");
        let line = render(&e);
        assert_eq!(line, format!("starting the server: preparing /x: {denied}"));
        assert_eq!(line.matches(&denied).count(), 1);
    }
}
