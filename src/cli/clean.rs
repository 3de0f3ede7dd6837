//! `jailbuilder clean`: remove everything jailbuilder created for a state dir / dataset root.

use std::process::ExitCode;

use jailbuilder::backend::Backend;

use super::common::{self, BuilderArgs};

#[derive(clap::Args, Debug)]
pub struct CleanArgs {
    #[command(flatten)]
    pub builder: BuilderArgs,
}

pub fn run(args: CleanArgs) -> anyhow::Result<ExitCode> {
    common::require_root("jailbuilder clean")?;
    let cfg = args.builder.load()?;
    // Opening takes the instance lock: a running server on the same root is not disturbed.
    let backend = jailbuilder::native::open_backend(&cfg)?;
    let report = backend.clean_all()?;
    if report.removed.is_empty() {
        println!("nothing to clean");
    }
    for line in &report.removed {
        println!("removed {line}");
    }
    Ok(ExitCode::SUCCESS)
}
