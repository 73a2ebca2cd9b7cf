#!/usr/bin/env python3
"""Live allocations of every site over time, from a heaptrack data file (step 1 of 2).

Usage: scripts/heaptrack_live.py /tmp/ht.zst /tmp/ht.pkl
Samples the live allocation count of every heaptrack allocation site once a second and pickles
them with the symbols; scripts/heaptrack_growth.py then says which sites grew. Used to tell a
leak from fragmentation in the soak (docs/reliability.md, Soak). Needs zstd; a 6-minute soak's
profile (75 M allocations) takes ~2.5 minutes."""
import subprocess, sys
import pickle

path, out = sys.argv[1], sys.argv[2]
p = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE, bufsize=1 << 20)
strings = [None]
ips = [None]   # ip index -> (module, [(func, file, line), ...])
traces = [(0, 0)]  # trace index -> (ip, parent)
sizes, tr = [], []
cnt = [0] * (1 << 16)
samples, times, rss = [], [], []
next_t = 1000
last_rss = 0
for raw in p.stdout:
    c = raw[0]
    if c == 43:  # '+'
        cnt[int(raw[2:], 16)] += 1
    elif c == 45:  # '-'
        cnt[int(raw[2:], 16)] -= 1
    elif c == 99:  # 'c'
        t = int(raw[2:], 16)
        if t >= next_t:
            samples.append(cnt[: len(sizes)])
            times.append(t)
            rss.append(last_rss)
            next_t = t - t % 1000 + 1000
    elif c == 82:  # 'R'
        last_rss = int(raw[2:], 16) * 4096
    elif c == 97:  # 'a'
        _, s, t_ = raw.split()
        sizes.append(int(s, 16)); tr.append(int(t_, 16))
        if len(sizes) > len(cnt):
            cnt.extend([0] * len(cnt))
    elif c == 115:  # 's'
        parts = raw.decode(errors="replace").rstrip("\n").split(" ", 2)
        strings.append(parts[2] if len(parts) > 2 else "")
    elif c == 105:  # 'i'
        f = raw.decode().split()
        frames = []
        rest = f[3:]
        while rest:
            fn = int(rest[0], 16)
            fl = int(rest[1], 16) if len(rest) > 1 else 0
            ln = int(rest[2], 16) if len(rest) > 2 else 0
            frames.append((fn, fl, ln))
            rest = rest[3:]
        ips.append((int(f[2], 16), frames))
    elif c == 116:  # 't'
        _, ip, parent = raw.split()
        traces.append((int(ip, 16), int(parent, 16)))
with open(out, "wb") as f:
    pickle.dump(dict(samples=samples, times=times, rss=rss, sizes=sizes, tr=tr,
                     strings=strings, ips=ips, traces=traces), f)
print(len(sizes), "sites", len(samples), "samples")
