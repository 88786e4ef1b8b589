#!/usr/bin/env python3
"""The power-cut simulation's own race, with no database (see tests/common/power.rs).

A child writes record n at offset n*512 (n as 8 bytes, repeated), calls
fdatasync, and prints n once it returned. The parent cuts the power under it
(FS_IOC_SHUTDOWN through xfs_io on an ext4 loop image), first freezing it
with SIGSTOP if asked, kills it, mounts the image again and checks that
every record printed is on disk. Root, mkfs.ext4 and xfs_io are needed.

    python3 tests/probes/fdatasync_race.py nofreeze 40   # loses an acknowledged record now and then
    python3 tests/probes/fdatasync_race.py freeze 40     # loses none
"""
import os, sys, subprocess, time, random, signal
def sh(*a): subprocess.run(a, check=True, capture_output=True)
if sys.argv[1] == "child":
    fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o644)
    n = int(sys.argv[3])
    while True:
        os.pwrite(fd, n.to_bytes(8, "little") * 64, n * 512)
        os.fdatasync(fd)
        sys.stdout.write(f"{n}\n"); sys.stdout.flush()
        n += 1
freeze = sys.argv[1] == "freeze"
cuts = int(sys.argv[2])
d = "/tmp/tcc-fdatasync-race"; os.makedirs(d + "/mnt", exist_ok=True)
img = d + "/img"
with open(img, "wb") as f: f.truncate(256 << 20)
sh("mkfs.ext4", "-q", "-F", img); sh("mount", "-o", "loop", img, d + "/mnt")
path = d + "/mnt/f"; n = 0; lost = 0
for cut in range(cuts):
    p = subprocess.Popen([sys.executable, __file__, "child", path, str(n)], stdout=subprocess.PIPE)
    time.sleep(0.3 + random.random() * 0.7)
    if freeze:
        os.kill(p.pid, signal.SIGSTOP)
        while open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "Tt": time.sleep(0.0002)
    sh("xfs_io", "-x", "-c", "shutdown", d + "/mnt")
    p.kill(); raw = p.stdout.read().decode(); p.wait()
    lines = raw.split("\n")
    acked = [int(x) for x in lines[:-1]]  # after the last newline: a line cut short
    sh("umount", d + "/mnt"); sh("mount", "-o", "loop", img, d + "/mnt")
    data = open(path, "rb").read()
    bad = [k for k in acked if data[k*512:k*512+8] != k.to_bytes(8, "little")]
    lost += len(bad)
    print(f"cut {cut}: {len(acked)} acknowledged, {len(bad)} lost {bad[:5]}", flush=True)
    if acked: n = acked[-1] + 2
sh("umount", d + "/mnt")
print("freeze" if freeze else "no freeze", cuts, "cuts, lost", lost)
