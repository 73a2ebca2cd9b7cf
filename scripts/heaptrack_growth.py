#!/usr/bin/env python3
"""Which allocation sites grew, from scripts/heaptrack_live.py's output (step 2 of 2).

Usage: scripts/heaptrack_growth.py /tmp/ht.pkl A0 A1 B0 B1 [N]
Prints the live heap and heaptrack's RSS every 30 s, then, per allocation stack, the smallest
live bytes within [A0, A1] s and within [B0, B1] s (the minimum skips transient buffers), and
the N stacks that grew most. COMPACT=1 prints one line per stack (its agentfs, tantivy or
fuser frames)."""
import pickle, sys, subprocess
from collections import defaultdict
d = pickle.load(open(sys.argv[1], "rb"))
a0, a1, b0, b1 = map(float, sys.argv[2:6])
N = int(sys.argv[6]) if len(sys.argv) > 6 else 12
import os
COMPACT = os.environ.get("COMPACT")
t0 = d["times"][0] - 1000
times = [(t - t0) / 1000 for t in d["times"]]
sizes, tr = d["sizes"], d["tr"]
# total live and rss over time
print("time  live MiB  rss MiB")
for i, t in enumerate(times):
    if i % 30 == 0 or i == len(times) - 1:
        live = sum(c * sizes[j] for j, c in enumerate(d["samples"][i]))
        print(f"{t:5.0f} {live/2**20:8.1f} {d['rss'][i]/2**20:8.1f}")
def per_trace(i):
    out = defaultdict(int)
    for j, c in enumerate(d["samples"][i]):
        if c:
            out[tr[j]] += c * sizes[j]
    return out
def window_min(lo, hi):
    idx = [i for i, t in enumerate(times) if lo <= t <= hi]
    mins = None
    for i in idx:
        pt = per_trace(i)
        if mins is None:
            mins = dict(pt)
        else:
            for k in list(mins):
                mins[k] = min(mins[k], pt.get(k, 0))
    return mins
A, B = window_min(a0, a1), window_min(b0, b1)
keys = set(A) | set(B)
diff = sorted(keys, key=lambda k: -(B.get(k, 0) - A.get(k, 0)))
strings, ips, traces = d["strings"], d["ips"], d["traces"]
def stack(t, depth=40):
    out = []
    while t and len(out) < depth:
        ip, parent = traces[t]
        mod, frames = ips[ip]
        for fn, fl, ln in frames:
            out.append(f"{strings[fn] if fn < len(strings) else '?'}  {strings[fl] if fl and fl < len(strings) else ''}:{ln}")
        t = parent
    return out
tot = sum(B.get(k, 0) - A.get(k, 0) for k in keys)
print(f"sum of per-trace min growth: {tot/2**20:+.2f} MiB")
for k in diff[:N]:
    g = B.get(k, 0) - A.get(k, 0)
    print(f"\n=== {g/2**20:+.2f} MiB  ({A.get(k,0)/2**20:.2f} -> {B.get(k,0)/2**20:.2f})")
    names = "\n".join(stack(k))
    if COMPACT:
        dem = subprocess.run(["c++filt"], input=names, capture_output=True, text=True).stdout.splitlines()
        pick = [l for l in dem if ("agentfs" in l or "tantivy::" in l or "sqlite3" in l or "fuser" in l) ][:3]
        print("   ", " <- ".join(p.split("  ")[0][-90:] + " " + p.split("  ")[-1].split("/")[-1] for p in pick))
        continue
    dem = subprocess.run(["c++filt"], input=names, capture_output=True, text=True).stdout
    for line in dem.splitlines():
        if any(x in line for x in ("alloc::alloc", "raw_vec", "__rust", "heaptrack", "core::ptr")):
            continue
        print("   ", line[:220])
