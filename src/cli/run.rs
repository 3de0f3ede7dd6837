//! `jailbuilder run`: one compile in a fresh sandbox.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use jailbuilder::backend::ToolchainId;
use jailbuilder::engine::{BuildRequest, EngineConfig};
use jailbuilder::exec::CommandSpec;

use super::common::{self, BuilderArgs};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  jailbuilder toolchain --compiler gcc -o gcc.tar.gz\n  \
jailbuilder run --toolchain gcc.tar.gz --inputs-dir src --output hello.o -- /usr/bin/gcc -c hello.c -o hello.o"
)]
pub struct RunArgs {
    /// Toolchain archive (gzip'd tar, e.g. from `jailbuilder toolchain`).
    #[arg(long, value_name = "TC.tar.gz")]
    pub toolchain: PathBuf,
    /// Directory whose contents are placed at --cwd inside the sandbox.
    #[arg(long, value_name = "DIR", conflicts_with = "inputs")]
    pub inputs_dir: Option<PathBuf>,
    /// Inputs tar laid out from the sandbox root, as sccache sends them.
    #[arg(long, value_name = "TAR")]
    pub inputs: Option<PathBuf>,
    /// Working directory of the command inside the sandbox.
    #[arg(long, default_value = "/work", value_name = "/ABS/DIR")]
    pub cwd: String,
    /// An output to bring back (relative to --cwd, or absolute in the sandbox); repeatable.
    #[arg(long = "output", value_name = "REL")]
    pub outputs: Vec<String>,
    /// Where outputs are written (keeping their relative paths).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Environment variable for the command (KEY=VALUE); repeatable. Default: PATH and LC_ALL=C.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Wall-clock limit of the compile, seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Print how long each phase took (image, container, unpack, exec, outputs).
    #[arg(long)]
    pub timings: bool,
    #[command(flatten)]
    pub builder: BuilderArgs,
    /// The compiler and its arguments. A bare name is resolved in the host's PATH (toolchains
    /// keep host paths).
    #[arg(last = true, required = true, value_name = "EXE ARGS")]
    pub command: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    common::require_root("jailbuilder run")?;
    let mut cfg = args.builder.load()?;
    if let Some(t) = args.timeout {
        cfg.timeout_secs = t;
    }
    let mut exe = args.command[0].clone();
    if !exe.starts_with('/') {
        exe = jailbuilder::toolchain::which(&exe)
            .with_context(|| {
                format!(
                    "{exe:?} is not in PATH; give the absolute path it has inside the toolchain"
                )
            })?
            .to_string_lossy()
            .into_owned();
    }
    let inputs = match (&args.inputs_dir, &args.inputs) {
        (Some(dir), _) => common::tar_dir_at(dir, &args.cwd)?,
        (None, Some(tar)) => {
            std::fs::read(tar).with_context(|| format!("reading {}", tar.display()))?
        }
        (None, None) => common::tar_files(&[])?,
    };
    let env = if args.env.is_empty() {
        vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            ("LC_ALL".into(), "C".into()),
        ]
    } else {
        args.env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect::<Option<Vec<_>>>()
            .context("--env takes KEY=VALUE")?
    };
    let id = ToolchainId::new(jailbuilder::toolchain::archive_id(&args.toolchain)?)?;
    let engine_cfg = EngineConfig {
        max_containers: 1,
        warm_per_toolchain: 0,
        recycler_threads: 1,
        ..cfg.engine_config()
    };
    let engine = common::start_engine(&cfg, engine_cfg)?;
    let result = engine.build(BuildRequest {
        toolchain: id,
        toolchain_archive: &args.toolchain,
        inputs: &mut inputs.as_slice(),
        command: CommandSpec {
            executable: exe,
            arguments: args.command[1..].to_vec(),
            env_vars: env,
            cwd: args.cwd.clone(),
        },
        outputs: args.outputs.clone(),
    });
    engine.shutdown();
    let out = result?;
    std::io::stdout().write_all(&out.exec.stdout)?;
    std::io::stderr().write_all(&out.exec.stderr)?;
    for o in &out.outputs {
        let rel = o.path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            bail!("output path {:?} has '..'", o.path);
        }
        let dest = args.out_dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, &o.data).with_context(|| format!("writing {}", dest.display()))?;
    }
    if args.timings {
        let t = out.timings;
        eprintln!(
            "timings: image {} | container {} | unpack {} | exec {} | outputs {} | total {}",
            common::ms(t.image),
            common::ms(t.container),
            common::ms(t.unpack),
            common::ms(t.exec),
            common::ms(t.outputs),
            common::ms(t.total)
        );
    }
    if out.exec.status == jailbuilder::backend::ExitStatus::TimedOut {
        eprintln!("jailbuilder: the compile timed out and was killed");
    } else if let Some(hit) = out.exec.limit_hit {
        eprintln!("jailbuilder: the compile hit the sandbox's {hit}");
    }
    Ok(ExitCode::from(out.exec.status.code().clamp(0, 255) as u8))
}
