# Sourced by every load script (directly, or through common.sh): a work directory and the PIDs of
# what the script starts (in PIDS, or in $WORK/pids for processes started in a subshell), both
# cleaned up on exit; a free loopback port; waiting until a port answers (WAIT_PORT_TRIES times
# 0.1 s, 300 unless the script sets it before sourcing this).
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

WAIT_PORT_TRIES=${WAIT_PORT_TRIES:-300}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq "$WAIT_PORT_TRIES"); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
