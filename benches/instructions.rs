//! A fixed number of runs of one case, for callgrind: instruction counts do
//! not depend on the machine's load, as the clock does.
//!
//! ```sh
//! cargo bench -p in-memory-benches --bench instructions --no-run    # then, with the binary it names:
//! valgrind --tool=callgrind --branch-sim=yes target/release/deps/instructions-HASH build 100 110
//! ```
//!
//! Cases: `build` (A, services built each run), `reuse` (A, one
//! `Orchestrator`), `fail` (B, the last Try fails), `macro` (`tcc!`, N = 2 or
//! 10). Instructions per run: the difference between two counts (say 10 and
//! 110 runs) divided by the difference in runs, so that setup cancels out.
//! With no case (`cargo test --benches`), every case runs once. With
//! `TCC_BENCH_RECORDER=prometheus`, tcc's metrics are recorded.

mod common;

use std::hint::black_box;

use common::{Noop, names, services};
use tcc::{Orchestrator, tcc};

async fn run(case: &str, names: &[String], reused: &Orchestrator) {
    match case {
        "build" => {
            let orchestrator = Orchestrator::new(services(names, false));
            black_box(orchestrator.orchestrate().await.unwrap());
        }
        "reuse" => {
            black_box(reused.orchestrate().await.unwrap());
        }
        "fail" => {
            let orchestrator = Orchestrator::new(services(names, true));
            black_box(orchestrator.orchestrate().await.unwrap_err());
        }
        "macro" if names.len() == 2 => {
            black_box(tcc! { Noop("a"), Noop("b") }.await.unwrap());
        }
        "macro" => {
            let report = tcc! {
                Noop("a"), Noop("b"), Noop("c"), Noop("d"), Noop("e"),
                Noop("f"), Noop("g"), Noop("h"), Noop("i"), Noop("j"),
            }
            .await;
            black_box(report.unwrap());
        }
        other => panic!("unknown case `{other}`: build, reuse, fail or macro"),
    }
}

fn main() {
    common::install_recorder();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cases, n, runs): (Vec<&str>, usize, usize) = match &args[..] {
        [case, n, runs] => (
            vec![case.as_str()],
            n.parse().unwrap(),
            runs.parse().unwrap(),
        ),
        _ => (vec!["build", "reuse", "fail", "macro"], 10, 1),
    };
    let names = names(n);
    let reused = Orchestrator::new(services(&names, false));
    runtime.block_on(async {
        for case in cases {
            for _ in 0..runs {
                run(case, &names, &reused).await;
            }
        }
    });
}
