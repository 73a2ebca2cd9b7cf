#!/usr/bin/env python3
"""An agent that keeps its memory in an agentfs tree with plain file I/O.

Usage: python3 examples/python_agent.py MNT AGENT

MNT is an agentfs mountpoint and AGENT a registered agent (`mkdir MNT/AGENT`). No agentfs
library is used: only open/read/write/mkdir/listdir. The story:

  1. learn three facts (files in mem/semantic) and log each step (mem/episodic/log);
  2. find a fact again through full-text search (mem/semantic/.search/QUERY);
  3. checkpoint before a risky step (mkdir state/NAME);
  4. the risky step: a "cleanup" that overwrites one fact and deletes another;
  5. check the result, see that knowledge was lost, and roll back;
  6. check that every fact (and search) is back, and log the outcome.

Who may roll back (docs/checkpoints.md, docs/signals.md): an agent process that is *bound*
(started with `agentfs run --agent AGENT`, or its pid written to sys/agents/AGENT/pids) may
take a checkpoint of itself but gets EPERM when it writes the control file
sys/agents/AGENT/rollback; only an unbound process (an operator) may roll back. So this
example works both ways:

  * run unbound (`python3 examples/python_agent.py MNT AGENT`): it acts for the agent (its
    writes go through the agent's policy and signals) and rolls back with
    `echo NAME > MNT/sys/agents/AGENT/rollback`: mem/ becomes exactly the checkpoint;
  * run bound (`agentfs run --agent AGENT -- python3 examples/python_agent.py MNT AGENT`):
    the rollback write is refused with EPERM, so the agent restores its facts itself by
    copying them back from the read-only checkpoint tree state/NAME/semantic/.

Exit status: 0 when the facts are back, 1 (with a message on stderr) on any unexpected
outcome, 2 on a usage error.
"""

import errno
import os
import sys
import time

FACTS = {
    "capital-france": "The capital of France is Paris.\n",
    "boiling-point": "Water boils at 100 degrees Celsius at sea level.\n",
    "speed-of-light": "Light travels at about 299792 kilometres per second.\n",
}
# A fresh name per run, so the example can run again on the same agent.
CHECKPOINT = f"py-before-cleanup-{time.time_ns()}"


class Failure(Exception):
    """An unexpected outcome: reported on stderr, exit status 1."""


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def log(mem, text):
    """Appends one line of experience to the episodic log (append-only memory)."""
    with open(os.path.join(mem, "episodic", "log"), "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%H:%M:%S')} python-agent: {text}\n")


def search(mem, query, want, timeout=10.0):
    """Reads .search/QUERY until a hit names `want` (the index is updated within about a
    second of a close). Returns the hit lines: score<TAB>path<TAB>snippet."""
    path = os.path.join(mem, "semantic", ".search", query)
    deadline = time.monotonic() + timeout
    while True:
        hits = [line.split("\t") for line in read(path).splitlines() if line]
        if any(len(h) == 3 and h[1] == want for h in hits):
            return hits
        if time.monotonic() >= deadline:
            raise Failure(f"search {query!r} did not find {want} within {timeout} s: {hits}")
        time.sleep(0.1)


def check_facts(semantic):
    """Returns the names of facts that are missing or differ from what was learned."""
    bad = []
    for name, text in FACTS.items():
        try:
            if read(os.path.join(semantic, name)) != text:
                bad.append(name)
        except FileNotFoundError:
            bad.append(name)
    return bad


def roll_back(mnt, agent, mem):
    """Rolls mem/ back to the checkpoint; returns how it was done."""
    control = os.path.join(mnt, "sys", "agents", agent, "rollback")
    try:
        write(control, CHECKPOINT + "\n")
        return "rollback"
    except PermissionError as e:
        if e.errno != errno.EPERM:
            raise
    # Bound to the agent: control files are the operator's. Restore the facts by copying
    # them back from the read-only checkpoint tree.
    saved = os.path.join(mnt, agent, "state", CHECKPOINT, "semantic")
    semantic = os.path.join(mem, "semantic")
    for name in sorted(os.listdir(saved)):
        write(os.path.join(semantic, name), read(os.path.join(saved, name)))
    for name in sorted(os.listdir(semantic)):
        if not name.startswith(".") and not os.path.exists(os.path.join(saved, name)):
            os.unlink(os.path.join(semantic, name))
    return "copy"


def run(mnt, agent):
    mem = os.path.join(mnt, agent, "mem")
    semantic = os.path.join(mem, "semantic")
    if not os.path.isdir(semantic):
        raise Failure(f"{semantic} is not a directory: is {mnt} an agentfs mount with agent {agent}?")

    # 1. Learn facts; log the experience.
    for name, text in FACTS.items():
        write(os.path.join(semantic, name), text)
        log(mem, f"learned {name}")
    write(os.path.join(mem, "working", "scratch"), "thinking about France\n")

    # 2. Recall through search.
    hits = search(mem, "capital France", "capital-france")
    print(f"search 'capital France': {hits[0][1]} (score {hits[0][0]})")

    # 3. Checkpoint before the risky step.
    state = os.path.join(mnt, agent, "state", CHECKPOINT)
    os.mkdir(state)
    log(mem, f"checkpoint {CHECKPOINT}")
    if read(os.path.join(state, "semantic", "capital-france")) != FACTS["capital-france"]:
        raise Failure(f"checkpoint {state} does not hold capital-france")
    print(f"checkpoint: {state}")

    # 4. The risky step: an over-eager cleanup.
    write(os.path.join(semantic, "capital-france"), "The capital of France is Lyon.\n")
    os.unlink(os.path.join(semantic, "boiling-point"))
    log(mem, "cleanup: rewrote capital-france, deleted boiling-point")

    # 5. Check the outcome; on failure, roll back.
    lost = check_facts(semantic)
    if not lost:
        raise Failure("the risky step was meant to damage facts, but nothing changed")
    print(f"risky step damaged: {', '.join(lost)}")
    how = roll_back(mnt, agent, mem)
    log(mem, f"rolled back to {CHECKPOINT} ({how}) after losing {', '.join(lost)}")
    print(
        "rolled back with "
        + (f"sys/agents/{agent}/rollback" if how == "rollback" else f"a copy of state/{CHECKPOINT}")
    )

    # 6. Every fact is back, and search finds them again.
    lost = check_facts(semantic)
    if lost:
        raise Failure(f"after the rollback these facts are still wrong: {', '.join(lost)}")
    search(mem, "boiling Celsius", "boiling-point")
    if read(os.path.join(semantic, "capital-france")) != FACTS["capital-france"]:
        raise Failure("capital-france is not the checkpoint's")
    episodes = read(os.path.join(mem, "episodic", "log"))
    if f"rolled back to {CHECKPOINT}" not in episodes:
        raise Failure("the episodic log does not record the rollback")
    print("all facts are back")


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} MNT AGENT", file=sys.stderr)
        return 2
    try:
        run(argv[1], argv[2])
    except Failure as e:
        print(f"python_agent: FAILED: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"python_agent: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
