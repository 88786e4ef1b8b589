//! No-op services shared by the benchmarks.

#![allow(dead_code)]

use std::future::{Future, Ready, ready};

use tcc::{BoxError, Service, TccService};

/// A phase function that finishes at once.
pub type PhaseFn = fn() -> Ready<Result<(), std::io::Error>>;
pub const OK: PhaseFn = || ready(Ok(()));
pub const FAIL: PhaseFn = || ready(Err(std::io::Error::other("no room")));

/// `n` no-op services named after `names`; the last one's Try fails when
/// `fail` is set.
pub fn services(names: &[String], fail: bool) -> impl Iterator<Item = Service> + '_ {
    let last = names.len() - 1;
    names.iter().enumerate().map(move |(i, name)| {
        let try_phase = if fail && i == last { FAIL } else { OK };
        Service::new(name.as_str(), try_phase, OK, OK)
    })
}

pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("service-{i}")).collect()
}

/// A no-op typed service named at compile time, for `tcc!`.
pub struct Noop(pub &'static str);

impl TccService for Noop {
    fn service_name(&self) -> &str {
        self.0
    }
    fn try_phase(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        ready(Ok(()))
    }
    fn confirm(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        ready(Ok(()))
    }
    fn cancel(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        ready(Ok(()))
    }
}

/// A participant that does nothing, and can be rebuilt after a crash: for
/// durable transactions.
#[derive(tcc::Recoverable)]
#[recoverable(kind = "noop")]
pub struct RecoverableNoop {
    pub name: String,
}

impl TccService for RecoverableNoop {
    fn service_name(&self) -> &str {
        &self.name
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Installs the recorder `TCC_BENCH_RECORDER` names, if any: with
/// `prometheus`, `metrics-exporter-prometheus`'s (its upkeep run every
/// second, as a server's would), so that `tcc`'s metrics are recorded.
pub fn install_recorder() {
    match std::env::var("TCC_BENCH_RECORDER").as_deref() {
        Err(_) => {}
        Ok("prometheus") => {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no other recorder is installed");
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    handle.run_upkeep();
                }
            });
        }
        Ok(other) => panic!("TCC_BENCH_RECORDER={other}: the recorder is `prometheus` or none"),
    }
}
