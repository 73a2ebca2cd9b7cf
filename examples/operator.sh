#!/bin/sh
# An operator pauses an agent, inspects it, and resumes it — with echo, cat and tail.
#
# Usage: sh examples/operator.sh MNT AGENT
#
# Run it as an operator (an unbound process, e.g. your shell): only operators may write
# the control files under MNT/sys/agents/AGENT/. The agent's own write in step 3 is made
# by a process bound to the agent with `agentfs run` (set AGENTFS to the binary if it is
# not `agentfs` on PATH).
#
# 1. STOP the agent: sys/agents/AGENT/signal reads "stopped".
# 2. Inspect it: its status (JSON) and the last lines of its flight record.
# 3. The agent (a process bound with `agentfs run`) and the operator each append to the
#    agent's episodic log while it is stopped: both wait — the bound process is frozen
#    with SIGSTOP, the operator's write is parked in the daemon (status: parked_calls).
# 4. CONT: both writes proceed; both lines are in the log and both writers exited 0.
#
# Exit status: 0 when all of the above held, 1 with a message on stderr otherwise.
set -u

if [ $# -ne 2 ]; then
  echo "usage: $0 MNT AGENT" >&2
  exit 2
fi
mnt=$1
agent=$2
agentfs=${AGENTFS:-agentfs}
ctl=$mnt/sys/agents/$agent
logfile=$mnt/$agent/mem/episodic/log
line="operator-demo $(date +%s)-$$: written by the agent while stopped"
note="operator-demo $(date +%s)-$$: written by the operator while stopped"
writer=
parked=
paused=

# proc_state PID: the state letter of a process (R, S, T …) from /proc/PID/stat.
proc_state() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1
}
fail() {
  echo "operator: FAILED: $*" >&2
  # Never leave the agent paused behind us.
  if [ -n "$paused" ]; then
    { echo CONT > "$ctl/signal"; } 2>/dev/null
  fi
  exit 1
}

[ -e "$ctl/signal" ] || fail "$ctl/signal does not exist: is $mnt an agentfs mount with agent $agent?"
[ "$(cat "$ctl/signal")" = running ] || fail "agent $agent is $(cat "$ctl/signal"), not running"

# 1. Pause.
echo STOP > "$ctl/signal" || fail "cannot write STOP"
paused=1
state=$(cat "$ctl/signal")
[ "$state" = stopped ] || fail "after STOP the agent is $state"
echo "1. $agent is $state"

# 2. Inspect: status and the flight record (reads work while stopped).
echo "2. status:"
sed 's/^/   /' "$ctl/status"
echo
# A record reaches the flight recorder a fraction of a second after the call returned.
tries=0
until tail -n 3 "$ctl/audit" | grep -q '"op":"signal".*"detail":"STOP'; do
  tries=$((tries + 1))
  [ "$tries" -lt 50 ] || fail "no record of the STOP signal in $ctl/audit"
  sleep 0.1
done
echo "   last audit records:"
tail -n 3 "$ctl/audit" | sed 's/^/   /'

# 3. Writes while stopped wait. Two kinds:
#    a. the agent's own process (bound with `agentfs run`): a process bound to a stopped
#       agent gets SIGSTOP at once, so it is frozen before its write reaches the tree;
#    b. an operator writing into the agent's tree acts as the agent: its append is parked
#       in the daemon (status counts it in parked_calls) until CONT.
"$agentfs" run --agent "$agent" --mount "$mnt" -- sh -c 'echo "$1" >> "$2"' sh "$line" "$logfile" &
writer=$!
echo "$note" >> "$logfile" &
parked=$!
tries=0
until [ "$(proc_state "$writer")" = T ] && grep -q '"parked_calls": *[1-9]' "$ctl/status"; do
  tries=$((tries + 1))
  [ "$tries" -lt 100 ] || fail "after 10 s: agent process state $(proc_state "$writer"), status: $(cat "$ctl/status")"
  sleep 0.1
done
sleep 0.5
kill -0 "$writer" 2>/dev/null || fail "the agent's process finished while the agent was stopped"
kill -0 "$parked" 2>/dev/null || fail "the operator's append finished while the agent was stopped"
if grep -qF -e "$line" -e "$note" "$logfile"; then
  fail "a write landed while the agent was stopped"
fi
echo "3. waiting: the agent's process $writer is stopped (state T), the operator's append is parked"

# 4. Resume: the write lands.
echo CONT > "$ctl/signal" || fail "cannot write CONT"
wait "$writer"
rc=$?
[ "$rc" -eq 0 ] || fail "the agent's write exited $rc after CONT"
wait "$parked"
rc=$?
[ "$rc" -eq 0 ] || fail "the operator's append exited $rc after CONT"
grep -qF "$line" "$logfile" || fail "after CONT the agent's line is not in $logfile"
grep -qF "$note" "$logfile" || fail "after CONT the operator's line is not in $logfile"
state=$(cat "$ctl/signal")
[ "$state" = running ] || fail "after CONT the agent is $state"
echo "4. $agent is $state; both appends landed:"
grep -F -e "$line" -e "$note" "$logfile" | sed 's/^/   /'
