//! The bench's results: per strategy and concurrency, the human table, JSON (by hand: no
//! serde_json dependency) and an SVG plot (by hand too).

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

/// Overheads below this (ms) are within noise: ratios divide by at least this much.
const OVERHEAD_FLOOR: f64 = 0.1;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// /proc/loadavg's first three fields ("" where there is none).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One strategy at one concurrency level.
pub struct Cell {
    pub strategy: &'static str,
    pub concurrency: usize,
    /// (position in the sequence, latency ms)
    latencies: Vec<(usize, f64)>,
    pub compiles: usize,
    pub p50: f64,
    pub p95: f64,
    pub throughput: f64,
    /// Median over compiles of (latency - bare latency of the same compile); None without bare.
    pub overhead: Option<f64>,
    /// p50 - bare p50.
    pub overhead_p50_diff: Option<f64>,
    pub spawns: f64,
    pub tasks: Option<f64>,
    pub recycle_p50: Option<f64>,
    pub recycles: usize,
    pub recycle_what: &'static str,
    /// CPU time (user + system, the bench and its reaped children) per compile, ms.
    pub cpu: f64,
    /// cpu - bare cpu.
    pub cpu_overhead: Option<f64>,
    pub notes: Option<String>,
}

impl Cell {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        strategy: &'static str,
        concurrency: usize,
        latencies: Vec<(usize, Duration)>,
        wall: Duration,
        tasks: Option<u64>,
        spawned: u64,
        recycles: Vec<Duration>,
        recycle_what: &'static str,
    ) -> Cell {
        let n = latencies.len();
        let lat = sorted(latencies.iter().map(|(_, d)| ms(*d)).collect());
        let rec = sorted(recycles.iter().map(|d| ms(*d)).collect());
        Cell {
            strategy,
            concurrency,
            compiles: n,
            p50: pct(&lat, 50.0),
            p95: pct(&lat, 95.0),
            throughput: n as f64 / wall.as_secs_f64().max(1e-9),
            latencies: latencies.into_iter().map(|(p, d)| (p, ms(d))).collect(),
            overhead: None,
            overhead_p50_diff: None,
            spawns: spawned as f64 / n.max(1) as f64,
            tasks: tasks.map(|t| t as f64 / n.max(1) as f64),
            recycle_p50: (!rec.is_empty()).then(|| pct(&rec, 50.0)),
            recycles: rec.len(),
            recycle_what,
            cpu: f64::NAN,
            cpu_overhead: None,
            notes: None,
        }
    }

    pub fn set_cpu(&mut self, cpu: Duration, notes: Option<String>) {
        self.cpu = ms(cpu) / self.compiles.max(1) as f64;
        self.notes = notes;
    }
}

/// What one strategy's traced compiles made, per compile (the syscall census, Linux:
/// `census.rs`).
pub struct Census {
    pub strategy: &'static str,
    pub compiles: usize,
    /// System calls per compile on the compile path (threads + the child until execve).
    pub per_compile: f64,
    /// System calls per reset (native only; one reset follows each compile).
    pub per_reset: f64,
    /// The most frequent calls of the compile path, per compile.
    pub top_compile: Vec<(String, f64)>,
    /// The most frequent calls of a reset.
    pub top_reset: Vec<(String, f64)>,
}

pub struct Report {
    cells: Vec<Cell>,
    levels: Vec<usize>,
    cores: usize,
    compiler: String,
    /// small units, large units, lines per large unit, compiles, warm-up compiles
    shape: [usize; 5],
    elapsed: Duration,
    quick: bool,
    load_before: String,
    load_after: String,
    /// The syscall census of native and bare, when taken.
    pub census: Vec<Census>,
    /// Why there is no census.
    pub census_note: Option<String>,
    /// What the census counted, for the table's heading.
    pub census_what: &'static str,
    /// How equal the toolchain copies' page caches are (Linux: large folios, per copy).
    pub page_cache: Option<String>,
}

/// native compared with another strategy at one level.
struct Ratio {
    other: &'static str,
    concurrency: usize,
    /// other's overhead / native's overhead ("x times less overhead").
    overhead: Option<f64>,
    /// native's throughput / other's.
    throughput: f64,
}

struct Target {
    name: String,
    met: Option<bool>,
    detail: String,
}

impl Report {
    pub fn new(mut cells: Vec<Cell>, levels: &[usize], cores: usize) -> Report {
        let bare: HashMap<usize, HashMap<usize, f64>> = cells
            .iter()
            .filter(|c| c.strategy == "bare")
            .map(|c| (c.concurrency, c.latencies.iter().copied().collect()))
            .collect();
        let bare_p50: HashMap<usize, f64> = cells
            .iter()
            .filter(|c| c.strategy == "bare")
            .map(|c| (c.concurrency, c.p50))
            .collect();
        let bare_cpu: HashMap<usize, f64> = cells
            .iter()
            .filter(|c| c.strategy == "bare")
            .map(|c| (c.concurrency, c.cpu))
            .collect();
        for c in cells.iter_mut() {
            if let Some(b) = bare.get(&c.concurrency) {
                let d = sorted(
                    c.latencies
                        .iter()
                        .filter_map(|(p, l)| b.get(p).map(|bl| l - bl))
                        .collect(),
                );
                c.overhead = Some(pct(&d, 50.0));
                c.overhead_p50_diff = Some(c.p50 - bare_p50[&c.concurrency]);
                c.cpu_overhead = Some(c.cpu - bare_cpu[&c.concurrency]);
            }
        }
        Report {
            cells,
            levels: levels.to_vec(),
            cores,
            compiler: String::new(),
            shape: [0; 5],
            elapsed: Duration::ZERO,
            quick: false,
            load_before: String::new(),
            load_after: String::new(),
            census: Vec::new(),
            census_note: None,
            page_cache: None,
            census_what: "syscalls (strace -ff; compile path = the bench's threads + the child until its execve)",
        }
    }

    pub fn set_context(
        &mut self,
        compiler: &str,
        shape: [usize; 5],
        elapsed: Duration,
        quick: bool,
        load_before: String,
    ) {
        self.compiler = compiler.to_string();
        self.shape = shape;
        self.elapsed = elapsed;
        self.quick = quick;
        self.load_before = load_before;
        self.load_after = loadavg();
    }

    fn cell(&self, strategy: &str, c: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|x| x.strategy == strategy && x.concurrency == c)
    }

    fn ratios(&self) -> Vec<Ratio> {
        let mut out = Vec::new();
        for &c in &self.levels {
            let Some(n) = self.cell("native", c) else {
                continue;
            };
            for o in self
                .cells
                .iter()
                .filter(|o| o.concurrency == c && o.strategy != "native")
            {
                let overhead = match (n.overhead, o.overhead) {
                    // Below the floor the other's overhead is noise too: no ratio.
                    (Some(a), Some(b)) if o.strategy != "bare" && b >= OVERHEAD_FLOOR => {
                        Some(b / a.max(OVERHEAD_FLOOR))
                    }
                    _ => None,
                };
                out.push(Ratio {
                    other: o.strategy,
                    concurrency: c,
                    overhead,
                    throughput: n.throughput / o.throughput,
                });
            }
        }
        out
    }

    /// Issue 13's targets, each a ratio or difference measured side by side in this run.
    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let n1 = self.cell("native", 1);
        let ov = |s: &str, c: usize| self.cell(s, c).and_then(|x| x.overhead);
        t.push(Target {
            name: "native overhead p50 <= 0.3 ms above bare (concurrency 1)".into(),
            met: ov("native", 1).map(|o| o <= 0.3),
            detail: ov("native", 1).map_or("needs native and bare at concurrency 1".into(), |o| {
                format!("{o:.2} ms")
            }),
        });
        let cpu = self
            .cell("native", self.cores)
            .or(n1)
            .and_then(|n| n.cpu_overhead.map(|o| (n.concurrency, o)));
        t.push(Target {
            name: "native CPU per compile <= 0.5 ms above bare, recycling included".into(),
            met: cpu.map(|(_, o)| o <= 0.5),
            detail: cpu.map_or("needs native and bare".into(), |(c, o)| {
                format!("{o:+.2} ms at concurrency {c}")
            }),
        });
        let mut levels = vec![1];
        if self.cores != 1 {
            levels.push(self.cores);
        }
        for c in levels {
            for (other, factor) in [("cli", 20.0), ("bwrap", 10.0)] {
                let r = ov("native", c)
                    .zip(ov(other, c))
                    .map(|(n, o)| o / n.max(OVERHEAD_FLOOR));
                t.push(Target {
                    name: format!(">= {factor}x less overhead than {other} (concurrency {c})"),
                    met: r.map(|r| r >= factor),
                    detail: r.map_or(
                        format!("needs native, {other} and bare at concurrency {c}"),
                        |r| {
                            let floor = if ov("native", c).is_some_and(|n| n < OVERHEAD_FLOOR) {
                                " (native's overhead counted as 0.1 ms: within noise)"
                            } else {
                                ""
                            };
                            format!("{r:.1}x{floor}")
                        },
                    ),
                });
            }
        }
        let nc = self
            .cell("native", self.cores)
            .zip(self.cell("bare", self.cores))
            .map(|(n, b)| n.throughput / b.throughput);
        t.push(Target {
            name: format!(
                "native throughput >= 97% of bare at concurrency {}",
                self.cores
            ),
            met: nc.map(|r| r >= 0.97),
            detail: nc.map_or(
                format!("needs native and bare at concurrency {}", self.cores),
                |r| format!("{:.1}%", r * 100.0),
            ),
        });
        let extra = n1
            .zip(self.cell("bare", 1))
            .and_then(|(n, b)| n.tasks.zip(b.tasks))
            .map(|(n, b)| n - b);
        t.push(Target {
            name: "zero spawns per compile besides the compiler".into(),
            met: n1.map(|n| n.spawns == 0.0),
            detail: match (n1, extra) {
                (Some(n), Some(e)) => format!(
                    "{} spawned by jailbuilder; kernel tasks vs bare: {e:+.2}/compile (forks inside the backend and recycler threads, see README, Benchmark)",
                    n.spawns
                ),
                (Some(n), None) => format!("{} spawned by jailbuilder", n.spawns),
                _ => "needs native at concurrency 1".into(),
            },
        });
        t
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let [small, large, lines, compiles, warm] = self.shape;
        let _ = writeln!(
            s,
            "\njailbuilder bench on {} ({} cores), {}: {small} small + {large} large units ({lines} lines), {compiles} compiles per strategy and level (+{warm} warm-up), interleaved; {:.0} s",
            std::env::consts::OS,
            self.cores,
            self.compiler,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "load average before {} / after {}{}\n",
            self.load_before,
            self.load_after,
            if self.quick {
                "  (--quick: smoke run, numbers not meaningful)"
            } else {
                ""
            }
        );
        if let Some(p) = &self.page_cache {
            let _ = writeln!(s, "{p}\n");
        }
        let _ = writeln!(
            s,
            "{:<12} {:>4} {:>9} {:>9} {:>12} {:>11} {:>9} {:>9} {:>7} {:>7} {:>11}",
            "strategy",
            "conc",
            "p50 ms",
            "p95 ms",
            "overhead ms",
            "compiles/s",
            "cpu ms",
            "cpu +ms",
            "spawns",
            "tasks",
            "recycle ms"
        );
        let opt =
            |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        for &c in &self.levels {
            for x in self.cells.iter().filter(|x| x.concurrency == c) {
                let _ = writeln!(
                    s,
                    "{:<12} {:>4} {:>9.2} {:>9.2} {:>12} {:>11.2} {:>9.2} {:>9} {:>7.2} {:>7} {:>11}",
                    x.strategy,
                    c,
                    x.p50,
                    x.p95,
                    if x.strategy == "bare" { "-".into() } else { opt(x.overhead, 2) },
                    x.throughput,
                    x.cpu,
                    if x.strategy == "bare" { "-".into() } else { opt(x.cpu_overhead, 2) },
                    x.spawns,
                    opt(x.tasks, 2),
                    opt(x.recycle_p50, 2)
                );
            }
        }
        let _ = writeln!(
            s,
            "\noverhead: median over compiles of (latency - bare latency of the same compile). spawns: processes the bench\n\
             spawned per compile (Command), recycling included. tasks: /proc/stat `processes` delta per compile\n\
             (every fork, clone and thread on the machine: valid when it is otherwise quiet; includes the compiler's own\n\
             cc1/as). cpu: user+system time per compile of the bench and its children, recycling included (cpu +ms:\n\
             minus bare's). recycle: p50 time to make a used container ready again."
        );
        for x in self.cells.iter().filter(|x| x.notes.is_some()) {
            let _ = writeln!(
                s,
                "{} at concurrency {}: {}",
                x.strategy,
                x.concurrency,
                x.notes.as_deref().unwrap_or_default()
            );
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(s, "\nnative vs the others:");
            for r in ratios {
                let ov = r
                    .overhead
                    .map_or(String::new(), |o| format!("{o:.1}x less overhead, "));
                let _ = writeln!(
                    s,
                    "  vs {:<12} at concurrency {}: {ov}{:.2}x the throughput",
                    r.other, r.concurrency, r.throughput
                );
            }
        }
        s.push_str(&self.census_table());
        let _ = writeln!(s, "\ntargets (benchmarks, not tests):");
        for t in self.targets() {
            let mark = match t.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            let _ = writeln!(s, "  [{mark}] {}: {}", t.name, t.detail);
        }
        s
    }

    fn census_table(&self) -> String {
        let mut s = String::new();
        if let Some(why) = &self.census_note {
            let _ = writeln!(s, "\nsyscall census: not taken: {why}");
        }
        let Some(first) = self.census.first() else {
            return s;
        };
        let _ = writeln!(
            s,
            "\n{}, {} compiles each at concurrency 1:",
            self.census_what, first.compiles
        );
        let calls = |v: &[(String, f64)]| {
            v.iter()
                .map(|(n, k)| format!("{n} {k:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for c in &self.census {
            let _ = writeln!(
                s,
                "  {:<7} {:>7.1} per compile{}",
                c.strategy,
                c.per_compile,
                if c.per_reset > 0.0 {
                    format!(", {:.1} per reset", c.per_reset)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(s, "          compile path: {}", calls(&c.top_compile));
            if !c.top_reset.is_empty() {
                let _ = writeln!(s, "          reset: {}", calls(&c.top_reset));
            }
        }
        let by = |n: &str| self.census.iter().find(|c| c.strategy == n);
        if let (Some(n), Some(b)) = (by("native"), by("bare")) {
            let _ = writeln!(
                s,
                "  native makes {:+.1} calls per compile on the compile path vs bare, plus {:.1} per reset off it",
                n.per_compile - b.per_compile,
                n.per_reset
            );
        }
        s
    }

    pub fn json(&self) -> String {
        fn num(v: f64) -> String {
            if v.is_finite() {
                format!("{v:.4}")
            } else {
                "null".into()
            }
        }
        fn opt(v: Option<f64>) -> String {
            v.map_or("null".into(), num)
        }
        fn st(v: &str) -> String {
            let mut o = String::from("\"");
            for ch in v.chars() {
                match ch {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        }
        let [small, large, lines, compiles, warm] = self.shape;
        let mut s = String::from("{\n");
        let _ = writeln!(
            s,
            "  \"machine\": {{\"os\": {}, \"cores\": {}, \"load_before\": {}, \"load_after\": {}, \"page_cache\": {}}},",
            st(std::env::consts::OS),
            self.cores,
            st(&self.load_before),
            st(&self.load_after),
            self.page_cache.as_deref().map_or("null".to_string(), st)
        );
        let _ = writeln!(
            s,
            "  \"workload\": {{\"compiler\": {}, \"small_units\": {small}, \"large_units\": {large}, \"large_lines\": {lines}, \"compiles\": {compiles}, \"warmup\": {warm}, \"quick\": {}, \"elapsed_s\": {}}},",
            st(&self.compiler),
            self.quick,
            num(self.elapsed.as_secs_f64())
        );
        s.push_str("  \"results\": [\n");
        let rows: Vec<String> = self
            .cells
            .iter()
            .map(|c| {
                format!(
                    "    {{\"strategy\": {}, \"concurrency\": {}, \"compiles\": {}, \"p50_ms\": {}, \"p95_ms\": {}, \"overhead_ms\": {}, \"overhead_p50_diff_ms\": {}, \"throughput_per_s\": {}, \"cpu_ms_per_compile\": {}, \"cpu_overhead_ms\": {}, \"spawns_per_compile\": {}, \"tasks_per_compile\": {}, \"recycle_p50_ms\": {}, \"recycles\": {}, \"recycle\": {}}}",
                    st(c.strategy),
                    c.concurrency,
                    c.compiles,
                    num(c.p50),
                    num(c.p95),
                    opt(if c.strategy == "bare" { None } else { c.overhead }),
                    opt(if c.strategy == "bare" { None } else { c.overhead_p50_diff }),
                    num(c.throughput),
                    num(c.cpu),
                    opt(if c.strategy == "bare" { None } else { c.cpu_overhead }),
                    num(c.spawns),
                    opt(c.tasks),
                    opt(c.recycle_p50),
                    c.recycles,
                    st(c.recycle_what)
                )
            })
            .collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n  ],\n  \"native_vs\": [\n");
        let rows: Vec<String> = self
            .ratios()
            .iter()
            .map(|r| {
                format!(
                    "    {{\"other\": {}, \"concurrency\": {}, \"overhead_ratio\": {}, \"throughput_ratio\": {}}}",
                    st(r.other),
                    r.concurrency,
                    opt(r.overhead),
                    num(r.throughput)
                )
            })
            .collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n  ],\n  \"targets\": [\n");
        let rows: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                format!(
                    "    {{\"target\": {}, \"met\": {}, \"detail\": {}}}",
                    st(&t.name),
                    t.met.map_or("null".into(), |m| m.to_string()),
                    st(&t.detail)
                )
            })
            .collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n  ],\n  \"syscalls\": [\n");
        let obj = |v: &[(String, f64)]| {
            let f: Vec<String> = v
                .iter()
                .map(|(n, k)| format!("{}: {}", st(n), num(*k)))
                .collect();
            format!("{{{}}}", f.join(", "))
        };
        let rows: Vec<String> = self
            .census
            .iter()
            .map(|c| {
                format!(
                    "    {{\"strategy\": {}, \"compiles\": {}, \"per_compile\": {}, \"per_reset\": {}, \"top_compile\": {}, \"top_reset\": {}}}",
                    st(c.strategy),
                    c.compiles,
                    num(c.per_compile),
                    num(c.per_reset),
                    obj(&c.top_compile),
                    obj(&c.top_reset)
                )
            })
            .collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n  ]\n}\n");
        s
    }

    /// Two bar charts side by side: sandbox overhead (ms, log scale: the strategies differ
    /// by orders of magnitude) and throughput (compiles/s), grouped by concurrency.
    pub fn svg(&self) -> String {
        const COLORS: [(&str, &str); 4] = [
            ("native", "#2b8a3e"),
            ("bwrap", "#1c7ed6"),
            ("cli", "#e8590c"),
            ("bare", "#868e96"),
        ];
        let color = |s: &str| {
            COLORS
                .iter()
                .find(|(n, _)| *n == s)
                .map_or("#495057", |(_, c)| c)
        };
        let mut names: Vec<&'static str> = Vec::new();
        for c in &self.cells {
            if !names.contains(&c.strategy) {
                names.push(c.strategy);
            }
        }
        let (w, h, panel_w, top, plot_h) = (980.0, 440.0, 440.0, 70.0, 280.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">jailbuilder bench: {} ({} cores), {}, load {}</text>",
            w / 2.0,
            std::env::consts::OS,
            self.cores,
            xml(&self.compiler),
            xml(&self.load_before)
        );
        for (i, name) in names.iter().enumerate() {
            let x = 30.0 + i as f64 * 110.0;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"38\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"49\">{name}</text>", color(name), x + 16.0);
        }
        type Metric<'a> = (&'a str, bool, Box<dyn Fn(&Cell) -> Option<f64>>);
        let panels: [Metric; 2] = [
            (
                "sandbox overhead p50 above bare, ms (log scale)",
                true,
                Box::new(|c: &Cell| {
                    if c.strategy == "bare" {
                        None
                    } else {
                        c.overhead
                    }
                }),
            ),
            (
                "throughput, compiles/s",
                false,
                Box::new(|c: &Cell| Some(c.throughput)),
            ),
        ];
        for (pi, (title, log, value)) in panels.iter().enumerate() {
            let x0 = 50.0 + pi as f64 * (panel_w + 50.0);
            let vals: Vec<f64> = self
                .cells
                .iter()
                .filter_map(&**value)
                .filter(|v| v.is_finite())
                .collect();
            let max = vals.iter().copied().fold(0.0f64, f64::max).max(1e-3);
            let (lo, hi) = if *log {
                (0.01f64.log10(), (max * 2.0).log10().max(0.0))
            } else {
                (0.0, max * 1.15)
            };
            let y_of = |v: f64| {
                let t = if *log {
                    (v.max(0.01).log10() - lo) / (hi - lo)
                } else {
                    v / hi
                };
                top + plot_h - t.clamp(0.0, 1.0) * plot_h
            };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\">{title}</text>",
                x0 + panel_w / 2.0,
                top - 6.0
            );
            let _ = writeln!(
                s,
                "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
                top + plot_h,
                x0 + panel_w,
                top + plot_h
            );
            let _ = writeln!(
                s,
                "<line x1=\"{x0}\" y1=\"{top}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>",
                top + plot_h
            );
            let ticks: Vec<f64> = if *log {
                (-2..=(hi.ceil() as i32))
                    .map(|e| 10f64.powi(e))
                    .filter(|v| v.log10() <= hi)
                    .collect()
            } else {
                (0..=4).map(|k| hi * k as f64 / 4.0).collect()
            };
            for t in ticks {
                let y = y_of(t);
                let _ = writeln!(s, "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{x0}\" y2=\"{y:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}</text>", x0 - 4.0, x0 - 6.0, y + 3.0, short(t));
                let _ = writeln!(
                    s,
                    "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#dee2e6\"/>",
                    x0 + panel_w
                );
            }
            let groups = self.levels.len().max(1) as f64;
            let gw = panel_w / groups;
            for (gi, &c) in self.levels.iter().enumerate() {
                let gx = x0 + gi as f64 * gw;
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrency {c}</text>",
                    gx + gw / 2.0,
                    top + plot_h + 18.0
                );
                let bw = (gw - 30.0) / names.len().max(1) as f64;
                for (ni, name) in names.iter().enumerate() {
                    let Some(v) = self.cell(name, c).and_then(&**value) else {
                        continue;
                    };
                    let x = gx + 15.0 + ni as f64 * bw;
                    let y = y_of(v);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{name} at {c}: {v:.3}</title></rect>",
                        x + 2.0,
                        bw - 4.0,
                        (top + plot_h - y).max(0.0),
                        color(name)
                    );
                    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>", x + bw / 2.0, y - 3.0, short(v));
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#495057\">overhead = median over compiles of (latency - bare latency of the same compile); values at or below 0.01 ms drawn at 0.01</text>",
            w / 2.0,
            h - 20.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
