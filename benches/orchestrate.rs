//! Timing benchmarks; the cases are those of BENCHMARKS.md.
//!
//! `cargo bench -p in-memory-benches --bench orchestrate`; one group with
//! `cargo bench -p in-memory-benches --bench orchestrate -- success`.
//!
//! With `TCC_BENCH_RECORDER=prometheus`, every case runs with
//! `metrics-exporter-prometheus`'s recorder installed (its upkeep run every
//! second, as a server's would), so that `tcc`'s metrics are recorded: the
//! difference from a run without it is what recording costs.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use common::{Noop, names, services};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use tcc::{Orchestrator, Service, tcc};
use tokio::runtime::{Builder, Runtime};

/// A type-erased future, as every orchestrator of dynamic services has.
type BoxedUnit = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ()>> + Send>>;

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// F: what any orchestrator of type-erased services must at least do: `n`
/// boxed no-op futures created and awaited, then `n` more.
async fn floor(n: usize) {
    for _round in 0..2 {
        let futures: Vec<BoxedUnit> = (0..n)
            .map(|_| Box::pin(async { Ok(()) }) as BoxedUnit)
            .collect();
        for future in futures {
            black_box(future.await).unwrap();
        }
    }
}

/// `tcc!` over typed services, built in the block as a handler would.
fn macro_cases(c: &mut Criterion) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("success");
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::new("tcc_macro", 2), |b| {
        b.to_async(&runtime)
            .iter(|| async { tcc! { Noop("a"), Noop("b") }.await.unwrap() })
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function(BenchmarkId::new("tcc_macro", 10), |b| {
        b.to_async(&runtime).iter(|| async {
            tcc! {
                Noop("a"), Noop("b"), Noop("c"), Noop("d"), Noop("e"),
                Noop("f"), Noop("g"), Noop("h"), Noop("i"), Noop("j"),
            }
            .await
            .unwrap()
        })
    });
    group.finish();
}

fn success(c: &mut Criterion) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("success");
    for n in [1, 2, 10, 100, 1000] {
        let names = names(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("orchestrator_build", n), &n, |b, _| {
            b.to_async(&runtime).iter(|| async {
                Orchestrator::new(services(&names, false))
                    .orchestrate()
                    .await
                    .unwrap()
            })
        });
        let reused = Orchestrator::new(services(&names, false));
        group.bench_with_input(BenchmarkId::new("orchestrator_reuse", n), &n, |b, _| {
            b.to_async(&runtime)
                .iter(|| async { reused.orchestrate().await.unwrap() })
        });
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |b, &n| {
            b.to_async(&runtime).iter(|| floor(n))
        });
    }
    group.finish();
}

fn try_fails(c: &mut Criterion) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("try_fails");
    for n in [2, 10, 100] {
        let names = names(n);
        group.bench_with_input(BenchmarkId::new("orchestrator_build", n), &n, |b, _| {
            b.to_async(&runtime).iter(|| async {
                Orchestrator::new(services(&names, true))
                    .orchestrate()
                    .await
                    .unwrap_err()
            })
        });
    }
    group.finish();
}

/// C: every phase sleeps 1 ms of real time; the ideal is one Try round and
/// one Confirm round, about 2 ms.
fn latency(c: &mut Criterion) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("latency_1ms");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for n in [10, 100] {
        let names = names(n);
        let sleepy = || async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<(), std::io::Error>(())
        };
        let orchestrator = Orchestrator::new(
            names
                .iter()
                .map(|name| Service::new(name.as_str(), sleepy, sleepy, sleepy)),
        );
        group.bench_with_input(BenchmarkId::new("orchestrator", n), &n, |b, _| {
            b.to_async(&runtime)
                .iter(|| async { orchestrator.orchestrate().await.unwrap() })
        });
        group.bench_with_input(BenchmarkId::new("ideal_two_sleeps", n), &n, |b, _| {
            b.to_async(&runtime).iter(|| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            })
        });
    }
    group.finish();
}

/// D: 64 callers on a multi-thread runtime, 10 services each; the figure
/// per element is the time per orchestration.
fn throughput(c: &mut Criterion) {
    const CALLERS: usize = 64;
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(CALLERS as u64));
    let names = std::sync::Arc::new(names(10));
    group.bench_function("64_callers_n10", |b| {
        b.iter_custom(|iters| {
            let names = names.clone();
            runtime.block_on(async move {
                let start = Instant::now();
                let callers: Vec<_> = (0..CALLERS)
                    .map(|_| {
                        let names = names.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                Orchestrator::new(services(&names, false))
                                    .orchestrate()
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for caller in callers {
                    caller.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    success,
    macro_cases,
    try_fails,
    latency,
    throughput
);

fn main() {
    common::install_recorder();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
