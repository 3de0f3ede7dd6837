//! Command-line interface (binary only; anyhow lives here, not in the library).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod clean;
mod common;
mod demo;
mod doctor;
mod run;
#[cfg(feature = "sccache")]
mod serve;
mod toolchain_cmd;

#[derive(Parser)]
#[command(
    name = "jailbuilder",
    version,
    about = "Spawn-free build sandboxes for sccache-dist: FreeBSD jails + ZFS, Linux namespaces + overlayfs",
    after_help = "Start with `sudo jailbuilder demo`. Logging: RUST_LOG=debug (or SCCACHE_LOG)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Package a host compiler into an sccache-compatible toolchain archive.
    Toolchain(toolchain_cmd::ToolchainArgs),
    /// Run one compile in a fresh sandbox and bring its outputs back.
    Run(run::RunArgs),
    /// Compile a bundled C project with every compile sandboxed, link and run it, show timings.
    Demo(demo::DemoArgs),
    /// Run the same workload through native, pot/CLI, bwrap and bare host compiles; compare.
    Bench(bench::BenchArgs),
    /// Remove every image, container, mount, jail and dataset jailbuilder created.
    Clean(clean::CleanArgs),
    /// Report what the native backend needs and whether this machine has it.
    Doctor(doctor::DoctorArgs),
    /// Run an sccache-dist build server around jailbuilder (drop-in for `sccache-dist server`).
    #[cfg(feature = "sccache")]
    #[command(after_help = serve::AFTER_HELP)]
    Serve(serve::ServeArgs),
}

/// Logging to stderr, filtered by RUST_LOG (else SCCACHE_LOG, else warnings and errors).
fn init_stderr_logging() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("SCCACHE_LOG"))
        .unwrap_or_else(|_| "warn".into());
    env_logger::Builder::new().parse_filters(&filter).init();
}

/// Prints `e` and its causes, each once, as the process's last word.
pub fn report(e: &anyhow::Error) {
    // Library errors often repeat their source in their text.
    let err: &(dyn std::error::Error + 'static) = e.as_ref();
    eprintln!("jailbuilder: {}", jailbuilder::error_chain::render(err));
}

pub fn main() -> ExitCode {
    // Usage errors exit 2 here (clap), before any logging, as sccache-dist's do.
    let cli = Cli::parse();
    match &cli.command {
        #[cfg(feature = "sccache")]
        Command::Serve(serve::ServeArgs {
            syslog: Some(level),
            ..
        }) => {
            if let Err(e) = serve::init_syslog(*level) {
                // Never silently without logs (sccache-dist would be): stderr instead.
                init_stderr_logging();
                log::warn!(
                    "--syslog: {}; logging to stderr instead",
                    jailbuilder::error_chain::render(e.as_ref())
                );
            }
        }
        _ => init_stderr_logging(),
    }
    let result = match cli.command {
        Command::Toolchain(a) => toolchain_cmd::run(a),
        Command::Run(a) => run::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Clean(a) => clean::run(a),
        Command::Doctor(a) => doctor::run(a),
        #[cfg(feature = "sccache")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}
