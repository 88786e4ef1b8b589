//! A disk that loses power: an ext4 file system in a 512 MiB image,
//! loop-mounted, and shut down with `FS_IOC_SHUTDOWN`
//! (`EXT4_GOING_FLAGS_NOLOGFLUSH`, what `xfs_io -x -c shutdown` sends):
//! from that instant nothing more reaches the image, and what was fsync'd
//! before stays. It needs root, a loop device, `mkfs.ext4` and `xfs_io`
//! (Debian's xfsprogs); [`Disk::new`] says which is missing.
//!
//! The writer is frozen (SIGSTOP, every thread stopped) before the
//! shutdown. The ioctl takes a few milliseconds, and an fdatasync begun
//! inside that window can return 0 and still lose its data (seen with plain
//! `pwrite` + `fdatasync`, no database): a cut that does not freeze first
//! blames the program for the simulation's own race. Frozen, every
//! fdatasync that returned did so before the cut began, and none is running
//! during it.
//!
//! `tests/probes/fdatasync_race.py` shows the race with no database: a child
//! writes numbered records with `pwrite` + `fdatasync` and prints each once
//! the sync returned; the parent cuts, kills, remounts and reads them back.
//! Measured 2026-12-07 (`python3 tests/probes/fdatasync_race.py nofreeze 40`,
//! then `freeze 40`, as root): unfrozen, 2 acknowledged records lost in 80
//! cuts; frozen, none in 40.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Set to make a machine that cannot cut power fail the test instead of
/// skipping it (`.ci/run` sets it: CI runs as root).
pub const REQUIRE: &str = "TCC_REQUIRE_POWER_CUT";

/// How many cuts a test makes: `TCC_POWER_CUTS`, else `default`.
pub fn cuts(default: usize) -> usize {
    std::env::var("TCC_POWER_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A loop-mounted ext4 image in a temporary directory; unmounted and
/// removed on drop.
pub struct Disk {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Disk {
    /// Makes and mounts the file system, or says why it cannot be done
    /// here. With [`REQUIRE`] set, a machine that cannot is a failure.
    pub fn new() -> Option<Disk> {
        match Disk::make() {
            Ok(disk) => Some(disk),
            Err(why) if std::env::var_os(REQUIRE).is_some() => {
                panic!("{REQUIRE} is set, but no power cut can be simulated here: {why}")
            }
            Err(why) => {
                eprintln!(
                    "power-cut test skipped: {why} (it needs root, a loop device, mkfs.ext4 and xfs_io)"
                );
                None
            }
        }
    }

    fn make() -> Result<Disk, String> {
        let uid = run("id", &["-u"])?;
        if uid.trim() != "0" {
            return Err("not running as root".into());
        }
        for tool in ["mkfs.ext4", "xfs_io", "mount", "umount"] {
            if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
                return Err(format!("`{tool}` is not installed"));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let disk = Disk {
            dir,
            mounted: false,
        };
        let image = disk.image();
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(512 << 20))
            .map_err(|e| format!("cannot make the image: {e}"))?;
        run("mkfs.ext4", &["-q", "-F", path_str(&image)])?;
        std::fs::create_dir(disk.path()).map_err(|e| format!("no mount point: {e}"))?;
        let mut disk = disk;
        disk.mount()?;
        Ok(disk)
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn mount(&mut self) -> Result<(), String> {
        let (image, mount) = (self.image(), self.path());
        run("mount", &["-o", "loop", path_str(&image), path_str(&mount)])?;
        self.mounted = true;
        Ok(())
    }

    /// Cuts the power under process `pid`, which writes to this disk: it is
    /// frozen first (see the module docs), then the file system is shut
    /// down. The caller kills it afterwards and [`remount`](Disk::remount)s.
    ///
    /// `TCC_POWER_CUT_NO_FREEZE=1` skips the freeze, to show the race it
    /// closes.
    pub fn cut(&mut self, pid: u32) {
        if std::env::var_os("TCC_POWER_CUT_NO_FREEZE").is_none() {
            freeze(pid);
        }
        run("xfs_io", &["-x", "-c", "shutdown", path_str(&self.path())])
            .unwrap_or_else(|why| panic!("the shutdown failed: {why}"));
    }

    /// Mounts the image again, as a machine does when the power is back
    /// (ext4 replays its journal); call once the writer is dead.
    pub fn remount(&mut self) {
        if self.mounted {
            run("umount", &[path_str(&self.path())])
                .unwrap_or_else(|why| panic!("cannot unmount the cut disk: {why}"));
            self.mounted = false;
        }
        self.mount()
            .unwrap_or_else(|why| panic!("cannot mount the disk again: {why}"));
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            // Lazily: a child that outlived a failing test may hold a file.
            let _ = run("umount", &["-l", path_str(&self.path())]);
        }
    }
}

/// Stops every thread of `pid` with SIGSTOP and waits until each is
/// stopped: a thread inside fdatasync stops only once the call returns.
fn freeze(pid: u32) {
    run("kill", &["-STOP", &pid.to_string()])
        .unwrap_or_else(|why| panic!("cannot stop {pid}: {why}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop in 30 s"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// Whether every thread of `pid` is stopped (state `T` or `t` in
/// `/proc/PID/task/TID/stat`), or the process is gone.
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        // "TID (comm) STATE ...": comm may hold spaces and parentheses.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        matches!(
            state.and_then(|s| s.chars().next()),
            Some('T' | 't' | 'X' | 'Z')
        )
    })
}

/// Runs a command to its end; its stdout, or what went wrong.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a temporary path is UTF-8")
}
