//! `jailbuilder doctor`: what this machine has and lacks for the native backend, and
//! whether the configured build id range is free.

use std::process::ExitCode;

use super::common::BuilderArgs;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The configuration to check (dataset root, devfs ruleset, limits, the build id
    /// range: build_uid_base, build_gid_base, max_containers).
    #[command(flatten)]
    pub builder: BuilderArgs,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.builder.load()?;
    let mut items = jailbuilder::native::probe(&cfg);
    items.extend(jailbuilder::native::probe_build_ids(&cfg));
    println!("jailbuilder doctor ({} backend)", std::env::consts::OS);
    let mut missing = 0;
    for i in &items {
        println!(
            "  [{}] {:<22} {}",
            if i.ok { " ok " } else { "MISS" },
            i.name,
            i.detail
        );
        missing += usize::from(!i.ok);
    }
    if missing == 0 {
        println!("everything the backend needs is present");
    } else {
        println!("{missing} item(s) missing or unavailable (some are optional; see the detail)");
    }
    Ok(ExitCode::SUCCESS)
}
