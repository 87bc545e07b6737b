# Sourced by the wrk load scripts (gateway-load.sh, plugins-load.sh): processes.sh (a port
# answers within 10 s or never), and measure LUA, which checks that
# every target of ORDER (at URL[target]) answers BODY (or BODY_OF[target]) with a result, then runs wrk with the script
# LUA on core 1 against each target in turn, ROUNDS rounds of SECS seconds, into
# $WORK/<target>.<round>.txt (wrk_report.py reads them).
WAIT_PORT_TRIES=100
source tests/load/processes.sh

body_of() { # target
    if declare -p BODY_OF >/dev/null 2>&1 && [ -n "${BODY_OF[$1]:-}" ]; then echo "${BODY_OF[$1]}"; else echo "$BODY"; fi
}

measure() {
    for t in "${ORDER[@]}"; do # every target must answer a real result before it is measured
        curl -sf -H 'content-type: application/json' -d "$(body_of "$t")" "${URL[$t]}" | grep -q '"result"' \
            || { echo "$t does not answer"; exit 1; }
    done
    for round in $(seq "$ROUNDS"); do
        for t in "${ORDER[@]}"; do
            BODY=$(body_of "$t") taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -s "$1" "${URL[$t]}" > "$WORK/$t.$round.txt"
            echo "round $round $t: $(grep Requests/sec "$WORK/$t.$round.txt" | awk '{print $2}') req/s" >&2
        done
    done
}
