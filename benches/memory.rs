//! E: heap allocations per orchestration (counted by dhat) and the peak RSS
//! of one orchestration of 100,000 services.
//!
//! `cargo bench -p in-memory-benches --bench memory`

mod common;

use common::{Noop, OK, names, services};
use tcc::{Orchestrator, Service, tcc};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Allocations and bytes that `work` makes, averaged over `runs`.
fn count<F: FnMut()>(runs: u64, mut work: F) -> (f64, f64) {
    work(); // warm up: lazily initialised state is not per-run cost
    let before = dhat::HeapStats::get();
    for _ in 0..runs {
        work();
    }
    let after = dhat::HeapStats::get();
    let blocks = (after.total_blocks - before.total_blocks) as f64 / runs as f64;
    let bytes = (after.total_bytes - before.total_bytes) as f64 / runs as f64;
    (blocks, bytes)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` (CI) does not, and
    // gets a smaller run that only proves the bench works.
    let full = std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Peak RSS first, before the profiler keeps its own books. The services
    // are built in place, each name formatted straight into its service.
    let size = if full { 100_000 } else { 1_000 };
    let baseline = peak_rss_kib();
    runtime.block_on(async {
        let services = (0..size).map(|i| Service::new(format!("service-{i}"), OK, OK, OK));
        Orchestrator::new(services).orchestrate().await.unwrap();
    });
    let peak = peak_rss_kib();
    if let (Some(baseline), Some(peak)) = (baseline, peak) {
        println!(
            "peak RSS, one orchestration of {size} services: {:.1} MiB (process before it: {:.1} MiB)",
            peak as f64 / 1024.0,
            baseline as f64 / 1024.0
        );
    }

    let _profiler = dhat::Profiler::builder().testing().build();
    for n in [1, 10, 100] {
        let names = names(n);
        let (build_blocks, build_bytes) =
            count(100, || drop(services(&names, false).collect::<Vec<_>>()));
        let reused = Orchestrator::new(services(&names, false));
        let (run_blocks, run_bytes) = count(100, || {
            runtime.block_on(reused.orchestrate()).unwrap();
        });
        let failing = Orchestrator::new(services(&names, true));
        let (fail_blocks, fail_bytes) = count(100, || {
            runtime.block_on(failing.orchestrate()).unwrap_err();
        });
        println!(
            "N={n:>3}: orchestrate {run_blocks:.1} allocations / {run_bytes:.0} bytes \
             ({:.2} per service); building the services {build_blocks:.1} / {build_bytes:.0} bytes; \
             try fails {fail_blocks:.1} / {fail_bytes:.0} bytes",
            run_blocks / n as f64
        );
    }
    let (blocks, bytes) = count(100, || {
        runtime
            .block_on(tcc! {
                Noop("a"), Noop("b"), Noop("c"), Noop("d"), Noop("e"),
                Noop("f"), Noop("g"), Noop("h"), Noop("i"), Noop("j"),
            })
            .unwrap();
    });
    println!(
        "tcc! over 10 typed services, built in the block: {blocks:.1} allocations / {bytes:.0} bytes"
    );
}
