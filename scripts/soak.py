#!/usr/bin/env python3
"""Soak test (issue 8): mixed load on a real agentfs mount for a while, reporting the daemon's
resident memory, open file descriptors and threads every minute. Both must stay flat.

Usage: scripts/soak.py [--minutes 30] [--agents 4] [--bin target/release/agentfs]
                        [--wrap "heaptrack -o /tmp/soak"] [--env MALLOC_ARENA_MAX=2]

The load reaches a steady state on purpose (a bounded set of file names, checkpoints taken and
deleted, a bounded set of queries), so any growth is the daemon's, not the data's. Per agent, one
thread loops over: overwrite a fact, append to the episodic log, read a fact back, search,
delete a fact, snapshot + rollback + delete the checkpoint now and then, STOP/CONT now and then.
Needs root and /dev/fuse. Prints a table and exits 1 if RSS grew by more than 20 % after the
first minute or the fd count grew by more than 8 (a few come and go with the load).
"""

import argparse
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def daemon_pid(data):
    with open(os.path.join(data, "agentfs.pid")) as f:
        return int(f.read().split()[0])


def sample(pid):
    """RSS, its anonymous and file-backed parts (MiB), open fds, threads."""
    rss = anon = filed = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1]) // 1024
            elif line.startswith("RssFile:"):
                filed = int(line.split()[1]) // 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, anon, filed, fds, threads


def disk_mib(path):
    """Allocated bytes below `path`, in MiB (holes do not count)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total // (1 << 20)


def mount_wrapped(args, mnt, data):
    """Runs the daemon in the foreground under `args.wrap` (a profiler such as heaptrack) and
    waits for the mount and its pid file. Returns the wrapper's process."""
    log = open(os.path.join(os.path.dirname(data), "daemon.log"), "w")
    cmd = shlex.split(args.wrap) + [args.bin, "mount", mnt, "--data-dir", data, "--foreground"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soak.py: the wrapped daemon exited ({proc.returncode}): {' '.join(cmd)}")
        if os.path.ismount(mnt) and os.path.exists(os.path.join(data, "agentfs.pid")):
            return proc
        time.sleep(0.2)
    sys.exit("soak.py: the wrapped daemon did not mount within 120 s")


def worker(mnt, agent, stop, counter, errors):
    rng = random.Random(agent)
    sem = os.path.join(mnt, agent, "mem", "semantic")
    log = os.path.join(mnt, agent, "mem", "episodic", f"log{rng.randrange(1000)}")
    words = [f"w{i}x" for i in range(50)]
    n = 0
    while not stop.is_set():
        n += 1
        name = os.path.join(sem, f"f{rng.randrange(200)}")
        try:
            r = rng.random()
            if r < 0.35:
                with open(name, "w") as f:
                    f.write(f"{rng.choice(words)} fact {n} " + "x" * rng.randrange(2000) + "\n")
            elif r < 0.55:
                with open(log, "a") as f:
                    f.write(f"event {n}\n")
            elif r < 0.75:
                try:
                    with open(name) as f:
                        f.read()
                except FileNotFoundError:
                    pass
            elif r < 0.85:
                with open(os.path.join(sem, ".search", rng.choice(words))) as f:
                    f.read()
            elif r < 0.95:
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
            elif r < 0.98:
                cp = os.path.join(mnt, agent, "state", "soak")
                os.mkdir(cp)
                with open(os.path.join(mnt, "sys", "agents", agent, "rollback"), "w") as f:
                    f.write("soak\n")
                os.rmdir(cp)
            else:
                sig = os.path.join(mnt, "sys", "agents", agent, "signal")
                with open(sig, "w") as f:
                    f.write("STOP\n")
                with open(sig, "w") as f:
                    f.write("CONT\n")
            counter[0] += 1
        except OSError as e:
            errors.append(f"{agent}: {e}")
            if len(errors) > 100:
                stop.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--bin", default=os.environ.get("AGENTFS_BIN", "target/release/agentfs"))
    ap.add_argument(
        "--wrap",
        help="run the daemon in the foreground under this command, e.g. "
        '"heaptrack -o /tmp/soak" (the profile is written when the daemon exits)',
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the daemon (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    args = ap.parse_args()
    for kv in args.env:
        name, _, value = kv.partition("=")
        os.environ[name] = value
    if os.geteuid() != 0:
        sys.exit("soak.py: must run as root (it mounts)")
    root = tempfile.mkdtemp(prefix="agentfs-soak-")
    mnt, data = os.path.join(root, "mnt"), os.path.join(root, "data")
    os.mkdir(mnt)
    wrapped = None
    if args.wrap:
        wrapped = mount_wrapped(args, mnt, data)
    else:
        subprocess.run([args.bin, "mount", mnt, "--data-dir", data], check=True)
    stop = threading.Event()
    counters = []
    errors = []
    threads = []
    try:
        pid = daemon_pid(data)
        for i in range(args.agents):
            agent = f"soak{i}"
            os.mkdir(os.path.join(mnt, agent))
            c = [0]
            counters.append(c)
            t = threading.Thread(target=worker, args=(mnt, agent, stop, c, errors), daemon=True)
            t.start()
            threads.append(t)
        start = time.time()
        rows = []
        print(
            f"{'minute':>6} {'ops':>10} {'ops/s':>7} {'RSS MiB':>8} {'anon':>6} {'file':>6} "
            f"{'fds':>5} {'threads':>7} {'disk MiB':>8}"
        )
        last_ops, last_t = 0, start
        minute = 0
        while minute < args.minutes and not stop.is_set():
            time.sleep(max(0.0, start + (minute + 1) * 60 - time.time()))
            minute += 1
            ops = sum(c[0] for c in counters)
            now = time.time()
            rss, anon, filed, fds, nthreads = sample(pid)
            disk = disk_mib(data)
            rate = (ops - last_ops) / (now - last_t)
            last_ops, last_t = ops, now
            rows.append((minute, ops, rss, fds, nthreads))
            print(
                f"{minute:>6} {ops:>10} {rate:>7.0f} {rss:>8} {anon:>6} {filed:>6} {fds:>5} "
                f"{nthreads:>7} {disk:>8}",
                flush=True,
            )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        subprocess.run([args.bin, "unmount", mnt])
        if wrapped is not None:
            # The wrapper (e.g. heaptrack) writes its output after the daemon exits.
            try:
                wrapped.wait(timeout=600)
            except subprocess.TimeoutExpired:
                wrapped.terminate()
        shutil.rmtree(root, ignore_errors=True)
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}")
        sys.exit(1)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        growth = (last[2] - first[2]) / max(first[2], 1)
        print(
            f"RSS {first[2]} -> {last[2]} MiB ({growth:+.0%} after minute 1), "
            f"fds {first[3]} -> {last[3]}, threads {first[4]} -> {last[4]}"
        )
        # fds: a few come and go with the load (pack files, journal segments, open files);
        # a leak grows without bound.
        if growth > 0.20 or last[3] > first[3] + 8:
            print("soak: FAIL (growth)")
            sys.exit(1)
    print("soak: ok")


if __name__ == "__main__":
    main()
