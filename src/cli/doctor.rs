//! `jailbuilder doctor`: what this machine has and lacks for the native backend.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let items = jailbuilder::native::probe();
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
