//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary
//! directory, the server listening only on a unix socket in that directory
//! (so no port can clash with anything), stopped and removed at the end.
//!
//! One cluster per test binary ([`Cluster::get`]); each test works in a
//! schema of its own ([`Cluster::connect`]). The server is stopped and its
//! directory removed by [`Cluster`]'s `Drop`, and, since a static is never
//! dropped, by a watchdog process that waits for the test binary to exit
//! (however it exits: a panic, an abort, SIGKILL) on a pipe only the test
//! binary holds.
//!
//! The tests' cluster runs with fsync, `synchronous_commit` and full-page
//! writes off ([`Disk::Volatile`]): no test cuts the machine's power under
//! it, and it is faster. A benchmark starts one of its own that commits as
//! a production server does ([`Cluster::start`] with [`Disk::Durable`]).
//!
//! Without server binaries (neither `initdb` on `PATH` nor in
//! `/usr/lib/postgresql/*/bin`) the PostgreSQL tests print one line and
//! pass, unless `TCC_REQUIRE_POSTGRES=1`, which makes that a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

pub struct Cluster {
    /// The temporary directory: data in `data/`, the socket and the log.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the server binaries as `postgres` (we are root, which `initdb`
    /// refuses to be).
    as_postgres: bool,
    /// Holding its stdin open keeps the watchdog waiting.
    _watchdog: Option<(Child, ChildStdin)>,
}

/// How the server commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disk {
    /// fsync, `synchronous_commit` and full-page writes off: a commit never
    /// waits for the disk. For tests, which cut no power under the server.
    Volatile,
    /// fsync, `synchronous_commit` and full-page writes on, as the server's
    /// defaults are: a durable commit waits for its WAL flush. For
    /// benchmarks.
    Durable,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

impl Cluster {
    /// The test binary's cluster ([`Disk::Volatile`]), started on first
    /// use; `None` (after one line on stderr) when PostgreSQL is not
    /// installed and not required.
    pub fn get() -> Option<&'static Cluster> {
        CLUSTER
            .get_or_init(|| Cluster::start(Disk::Volatile))
            .as_ref()
    }

    /// A [`Disk::Volatile`] cluster of the caller's own: for a test that
    /// crashes or restarts the server, which would break the connections of
    /// every other test on the shared one. `None` as for [`Cluster::get`].
    pub fn private() -> Option<Cluster> {
        Cluster::start(Disk::Volatile)
    }

    /// A cluster of the caller's own, stopped and removed when dropped;
    /// `None` (after one line on stderr) when PostgreSQL is not installed
    /// and not required.
    pub fn start(disk: Disk) -> Option<Cluster> {
        match find_bin() {
            Some(bin) => Some(Cluster::start_in(bin, disk)),
            None if std::env::var("TCC_REQUIRE_POSTGRES").as_deref() == Ok("1") => panic!(
                "TCC_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found \
                     (initdb on PATH or in /usr/lib/postgresql/*/bin)"
            ),
            None => {
                // Straight to stderr: the test harness captures
                // `eprintln!` of a passing test, and this line must show.
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL tests skipped: no initdb on PATH or in /usr/lib/postgresql/*/bin \
                         (install postgresql, or set TCC_REQUIRE_POSTGRES=1 to make this a failure)"
                );
                None
            }
        }
    }

    fn start_in(bin: PathBuf, disk: Disk) -> Cluster {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "tcc-barrier-pg-{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let port = free_port();
        let mut cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
            _watchdog: None,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &cluster.dir.to_string_lossy()])
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown of {} failed",
                cluster.dir.display()
            );
        }
        // From here on, a panic drops `cluster`, which stops and removes it,
        // and the watchdog does if the test binary dies.
        cluster._watchdog = Some(cluster.watchdog());
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        );
        let sync = match disk {
            Disk::Volatile => "off",
            Disk::Durable => "on",
        };
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses='' -c fsync={sync} \
             -c synchronous_commit={sync} -c full_page_writes={sync} -c max_connections=200 \
             -c deadlock_timeout=100ms",
            dir = cluster.dir.display()
        );
        let log = cluster.dir.join("server.log");
        cluster.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        );
        cluster
    }

    /// A shell that waits for end of file on its stdin (the test binary
    /// exited: the kernel closed our end), then stops the server and
    /// removes the directory. Its output goes nowhere, so it never holds a
    /// pipe that `cargo test`'s caller waits on.
    fn watchdog(&self) -> (Child, ChildStdin) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{} {} stop -m immediate -D {}",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            pg_ctl.display(),
            self.dir.join("data").display()
        );
        let script = format!("cat >/dev/null; {stop}; rm -rf {}", self.dir.display());
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
        let stdin = child.stdin.take().expect("piped stdin");
        (child, stdin)
    }

    /// Runs one of the server's programs, as `postgres` when we are root;
    /// panics with its output if it fails.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{program} failed ({}):\n{}\n{}\nserver log:\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Crashes the server and starts it again: `pg_ctl restart -m
    /// immediate` (every server process quits at once, no checkpoint, as in
    /// a crash), returning once it accepts connections again after its
    /// crash recovery. Every open connection is broken.
    ///
    /// What survives, although the cluster runs with `fsync=off`: a process
    /// crash is not an OS crash. A commit with `synchronous_commit=on`
    /// (the log's pools set it) returns only after its WAL was written
    /// (`write()`, into the kernel's page cache; `fsync=off` skips only the
    /// flush to the device), and the kernel keeps that across the crash of
    /// the server's processes, so crash recovery replays every such commit.
    /// A commit with `synchronous_commit=off` may still sit in the server's
    /// shared memory, which the crash discards: lost, as in a real crash.
    /// (`full_page_writes=off` matters only for pages torn by a power cut,
    /// which this is not.)
    pub fn restart_immediate(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        // The options of the first start are kept in `postmaster.opts` and
        // used again; `-l` is not one of them, and without it the server
        // would write to our pipe, which `run` waits on.
        self.run(
            "pg_ctl",
            &[
                "restart".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
            ],
        );
    }

    /// Where the server listens, as a connection string: its socket's
    /// directory, its port, the user and the database.
    pub fn address(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// How to connect with `search_path` set to `schema`.
    pub fn config(&self, schema: &str) -> tokio_postgres::Config {
        format!("{} options='-c search_path={schema}'", self.address())
            .parse()
            .expect("a valid connection string")
    }

    /// The server's process id, from its `postmaster.pid`, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    /// The directory of the server's programs (`pgbench` may be there).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A `postgres://` URL of the cluster whose connections have
    /// `search_path` set to `schema` and `synchronous_commit` on, as a
    /// PostgreSQL log needs (the cluster has it off).
    pub fn url(&self, schema: &str) -> String {
        let socket = self.dir.to_string_lossy().replace('/', "%2F");
        format!(
            "postgresql://postgres@{socket}:{}/postgres?options=-c%20search_path%3D{schema}%20-c%20synchronous_commit%3Don",
            self.port
        )
    }

    /// A new connection whose `search_path` is `schema`, created if needed.
    /// Its connection task runs on the caller's runtime.
    pub async fn connect(&self, schema: &str) -> Client {
        let (client, connection) = self
            .config(schema)
            .connect(NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(async move {
            // The connection ends when its client is dropped, or the test
            // binary exits; an error then is no test failure.
            let _ = connection.await;
        });
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .expect("create the test's schema");
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let pg_ctl = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(pg_ctl);
                command
            } else {
                Command::new(pg_ctl)
            };
            let _ = command
                .args(["stop", "-m", "immediate", "-D"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian keeps them there).
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .max()
        .map(|(_, bin)| bin);
    on_path
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| resolve(&dir))
}

/// The real directory of the binaries: `initdb` on `PATH` may be a link
/// into the version's directory, where `postgres` itself lives.
fn resolve(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| dir.to_path_buf())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A port no one listens on now. The server listens on a unix socket only,
/// in our own directory, so the port just names the socket file; a free one
/// keeps its messages unambiguous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(54329)
}
