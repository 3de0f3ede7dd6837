//! What the read-only binds of image directories (src/linux/binds.rs) save per compile,
//! measured without the noise that separates two runs, two images or two backends: one
//! backend, one image (so one copy of the compiler in the page cache), two warm
//! containers, one with its binds attached and one whose binds were detached (its build
//! wrote under /usr, as a client's inputs there would), compiling the same near-empty file
//! alternately (ABBA). Prints the medians of the per-pair differences, wall and CPU.
//!
//!   sudo cargo run --release --example binds_ab -- [PAIRS]      (Linux, root, a host cc)
//!
//! State goes to /var/lib/jailbuilder-binds-ab (removed at the end).
#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use jailbuilder::backend::{Backend, BuildUser, Limits, ToolchainId};
    use jailbuilder::exec::{CommandSpec, PreparedCommand};
    use jailbuilder::linux::{refill_page_cache, LinuxBackend, LinuxConfig, LinuxContainer};
    use jailbuilder::toolchain::{package, PackageOptions};

    const SRC: &str = "#include <stddef.h>\n#include <stdint.h>\n\
        uint32_t f(const int32_t *v, size_t n) { uint32_t h = 0; return h ^ (uint32_t)n; }\n";

    fn children_cpu_ms() -> f64 {
        // SAFETY: a zeroed rusage is valid; getrusage(2) writes only into it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        let ms = |tv: libc::timeval| tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3;
        ms(ru.ru_utime) + ms(ru.ru_stime)
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    let pairs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("PAIRS must be a number")?,
        None => 200,
    };
    let state = std::path::PathBuf::from("/var/lib/jailbuilder-binds-ab");
    std::fs::create_dir_all(&state)?;
    let mut archive = Vec::new();
    package(
        &PackageOptions {
            compiler: "cc".into(),
            headers: true,
            extra: vec![],
        },
        &mut archive,
    )
    .context("packaging the host's cc")?;
    let b = LinuxBackend::new(LinuxConfig {
        state_dir: state.clone(),
        ..LinuxConfig::default()
    })?;
    b.clean_all()?;
    let image = b.create_image(&ToolchainId::new("binds-ab")?, &mut &archive[..])?;
    let user = BuildUser {
        uid: jailbuilder::engine::DEFAULT_BUILD_ID_BASE,
        gid: jailbuilder::engine::DEFAULT_BUILD_ID_BASE,
    };
    let bound = b.create_container(&image)?;
    let unbound = b.create_container(&image)?;
    for c in [&bound, &unbound] {
        let work = b.root(c).join("work");
        std::fs::create_dir_all(&work)?;
        std::fs::write(work.join("t.c"), SRC)?;
        for p in [work.clone(), work.join("t.c")] {
            std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid))?;
        }
    }
    // The engine's view of a client's inputs under /usr: they make the next exec detach.
    std::fs::create_dir_all(b.root(&unbound).join("usr/src/inputs"))?;
    let cmd = PreparedCommand::new(CommandSpec {
        executable: "/usr/bin/cc".into(),
        arguments: ["-O2", "-c", "t.c", "-o", "t.o"].map(String::from).to_vec(),
        env_vars: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/work".into(),
    })?;
    let limits = Limits {
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let run = |c: &LinuxContainer| -> anyhow::Result<(f64, f64)> {
        let (t, cpu) = (Instant::now(), children_cpu_ms());
        let o = b.exec(c, &cmd, user, &limits, None)?;
        anyhow::ensure!(
            o.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok((t.elapsed().as_secs_f64() * 1e3, children_cpu_ms() - cpu))
    };
    for _ in 0..5 {
        run(&bound)?;
        run(&unbound)?;
    }
    refill_page_cache(image.dir())?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let (with, without) = if i % 2 == 0 {
            let w = run(&bound)?;
            (w, run(&unbound)?)
        } else {
            let wo = run(&unbound)?;
            (run(&bound)?, wo)
        };
        wall.push(without.0 - with.0);
        cpu.push(without.1 - with.1);
    }
    println!(
        "{pairs} pairs, one image, two warm containers: without the binds minus with them, \
         median per pair: wall {:.3} ms, CPU {:.3} ms",
        median(wall),
        median(cpu)
    );
    b.destroy_container(bound)?;
    b.destroy_container(unbound)?;
    b.destroy_image(image)?;
    b.clean_all()?;
    drop(b);
    std::fs::remove_dir_all(&state)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("binds_ab: Linux only");
}
