#!/bin/sh
# An agent in POSIX sh that keeps its memory in an agentfs tree with echo, cat, grep, mkdir.
#
# Usage: sh examples/shell_agent.sh MNT AGENT
#
# The same story as python_agent.py: learn facts (mem/semantic), log experience
# (mem/episodic/log), search (mem/semantic/.search/QUERY), checkpoint (mkdir state/NAME),
# take a risky step that loses facts, notice, roll back, check the facts are back.
#
# Rolling back is an operator's right: run unbound, this script writes the checkpoint name
# to MNT/sys/agents/AGENT/rollback. Run bound (`agentfs run --agent AGENT -- sh
# examples/shell_agent.sh MNT AGENT`), that write fails with EPERM ("Operation not
# permitted"), and the script copies its facts back from the read-only checkpoint tree
# state/NAME/semantic/ instead.
#
# Exit status: 0 when the facts are back, 1 with a message on stderr otherwise, 2 on a
# usage error.
set -u

if [ $# -ne 2 ]; then
  echo "usage: $0 MNT AGENT" >&2
  exit 2
fi
mnt=$1
agent=$2
mem=$mnt/$agent/mem
sem=$mem/semantic
ckpt=sh-before-cleanup-$(date +%s)-$$

fail() {
  echo "shell_agent: FAILED: $*" >&2
  exit 1
}
log() {
  echo "$(date +%H:%M:%S) shell-agent: $*" >> "$mem/episodic/log" || fail "cannot append to the episodic log"
}
# search QUERY PATH: waits up to 10 s for a hit on PATH in .search/QUERY (score<TAB>path<TAB>snippet).
search() {
  tries=0
  tab=$(printf '\t')
  while ! cat "$sem/.search/$1" | grep -q "^[^$tab]*$tab$2$tab"; do
    tries=$((tries + 1))
    [ "$tries" -lt 100 ] || fail "search '$1' did not find $2 within 10 s"
    sleep 0.1
  done
}
# facts_ok: true when every fact holds what the agent learned.
facts_ok() {
  grep -qx "Mount Everest is 8849 metres high." "$sem/everest" 2>/dev/null &&
    grep -qx "The Nile flows into the Mediterranean Sea." "$sem/nile" 2>/dev/null &&
    grep -qx "Octopuses have three hearts." "$sem/octopus" 2>/dev/null
}

[ -d "$sem" ] || fail "$sem is not a directory: is $mnt an agentfs mount with agent $agent?"

# 1. Learn facts, log the experience.
echo "Mount Everest is 8849 metres high." > "$sem/everest" || fail "cannot write a fact"
echo "The Nile flows into the Mediterranean Sea." > "$sem/nile" || fail "cannot write a fact"
echo "Octopuses have three hearts." > "$sem/octopus" || fail "cannot write a fact"
log "learned everest, nile, octopus"
echo "comparing mountains" > "$mem/working/scratch" || fail "cannot write working memory"

# 2. Recall through search.
search "octopus hearts" octopus
echo "search 'octopus hearts': $(head -n 1 "$sem/.search/octopus hearts" | cut -f 2)"

# 3. Checkpoint before the risky step.
mkdir "$mnt/$agent/state/$ckpt" || fail "cannot take checkpoint $ckpt"
log "checkpoint $ckpt"
grep -q "Everest" "$mnt/$agent/state/$ckpt/semantic/everest" || fail "checkpoint $ckpt lacks everest"
echo "checkpoint: $mnt/$agent/state/$ckpt"

# 4. The risky step: a cleanup that goes wrong.
echo "Mount Everest is 88 metres high." > "$sem/everest" || fail "risky step: cannot write"
rm "$sem/nile" || fail "risky step: cannot delete"
log "cleanup: rewrote everest, deleted nile"

# 5. Notice the damage and roll back.
if facts_ok; then
  fail "the risky step was meant to damage facts, but nothing changed"
fi
echo "risky step damaged the facts"
if (echo "$ckpt" > "$mnt/sys/agents/$agent/rollback") 2>/dev/null; then
  how="sys/agents/$agent/rollback"
else
  # Bound processes may not write control files: restore the facts from the checkpoint.
  how="a copy of state/$ckpt"
  for f in "$mnt/$agent/state/$ckpt/semantic/"*; do
    cat "$f" > "$sem/${f##*/}" || fail "cannot restore ${f##*/}"
  done
fi
log "rolled back to $ckpt with $how"
echo "rolled back with $how"

# 6. Every fact is back, and search finds them again.
facts_ok || fail "after the rollback the facts are still wrong"
search "Nile Mediterranean" nile
grep -q "rolled back to $ckpt" "$mem/episodic/log" || fail "the episodic log does not record the rollback"
echo "all facts are back"
