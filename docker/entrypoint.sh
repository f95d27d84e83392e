#!/usr/bin/env bash
# Starts the ranker under torchrun. Arguments are main.py's: --config_path CFG [--mode M]
# [dotted.path=value ...]. The launch shape comes from the environment:
#   NPROC_PER_NODE   processes (GPUs) on this node              (default: 1)
#   NNODES           nodes in the job                           (default: 1)
#   NODE_RANK        informational; c10d rendezvous assigns ranks
#   RDZV_ENDPOINT    host:port of the rendezvous (any one node)  (required when NNODES > 1)
#   RDZV_ID          a job id shared by all nodes                (default: tml)
#   MAX_RESTARTS     times torchrun restarts the workers after one fails; each restart resumes
#                    from the newest checkpoint                  (default: 3). A mistake in
#                    config or data is not retried: the job ends with exit 2.
# docs/operations.md says what survives what. run_local.sh and `make run` launch through here.
set -euo pipefail

nproc="${NPROC_PER_NODE:-1}"
nnodes="${NNODES:-1}"
if [ "$nnodes" -gt 1 ]; then
    : "${RDZV_ENDPOINT:?RDZV_ENDPOINT=host:port is required when NNODES > 1}"
    launch=(--nnodes "$nnodes" --nproc_per_node "$nproc" --rdzv_backend c10d
            --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-tml}")
else
    launch=(--standalone --nnodes 1 --nproc_per_node "$nproc")
fi
launch+=(--max-restarts "${MAX_RESTARTS:-3}")
# A fresh rendezvous store for each round of workers: with the shared one, restarted workers
# read the dead ones' addresses and hang (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

# SIGTERM and SIGUSR1 (preemption) go to the workers, not to torchrun: they agree on a step to
# stop at, checkpoint and exit 0, and torchrun with them. torchrun itself would answer SIGTERM by
# terminating the workers and exiting with an error. Job control gives torchrun a process group
# of its own, where a background job would otherwise ignore Ctrl-C; SIGINT is passed on to it.
set -m
# A worker that stops on a mistake in config or data sends this script SIGUSR2: torchrun would
# restart the workers into the same mistake, whatever their exit code.
export TML_LAUNCHER_PID=$$
torchrun "${launch[@]}" -m projects.home.recap.main "$@" &
agent=$!

workers() {  # torchrun's running children (not the ones that exited and wait to be reaped)
    local stat line fields
    for stat in /proc/[0-9]*/stat; do
        { read -r line < "$stat"; } 2>/dev/null || continue
        fields=(${line##*) })  # after the command name: state, parent pid, ...
        if [ "${fields[1]}" = "$agent" ] && [ "${fields[0]}" != Z ]; then echo "${line%% *}"; fi
    done
}

forward() {
    local pid
    for pid in $(workers); do kill -s "$1" "$pid" 2>/dev/null || true; done
}

user_error=0
end_on_user_error() {
    # Frozen, torchrun restarts nothing. The worker that found the mistake and its peers (on
    # losing it) exit by themselves within moments; what is left after 5 s is ended.
    user_error=1
    kill -s STOP "$agent" 2>/dev/null || true
    local waited=0 pid
    while [ -n "$(workers)" ] && [ "$waited" -lt 50 ]; do sleep 0.1; waited=$((waited + 1)); done
    for pid in $(workers); do kill -s KILL "$pid" 2>/dev/null || true; done
    disown "$agent" 2>/dev/null || true  # no "Killed" note from the shell's job control
    kill -s KILL "$agent" 2>/dev/null || true
}

trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap end_on_user_error USR2
trap 'kill -s INT "$agent" 2>/dev/null || true' INT
while true; do
    status=0
    wait "$agent" || status=$?
    # wait also returns when a trapped signal arrives; only a finished torchrun ends the loop.
    [ "$user_error" = 0 ] || break
    kill -0 "$agent" 2>/dev/null || break
done
if [ "$user_error" = 1 ]; then
    echo "stopped without restarting: a worker found a mistake in the config or data (above)" >&2
    exit 2
fi
exit "$status"
