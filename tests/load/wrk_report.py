"""The report of a wrk load script (gateway-load.sh, plugins-load.sh), imported by the Python at
its end: each target's medians over the rounds of wrk output ($WORK/<target>.<round>.txt), and
the table of them with the microseconds each target adds per call to its direct one."""
import re
import statistics


def ms(value):
    """A wrk duration (`812.00us`, `1.20ms`, `2s`, `1m`) in milliseconds; NaN when it is none."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[m.group(2)]


def medians(work, rounds, order):
    """{target: (median req/s, median p50 ms, median p99 ms)} over rounds 1..rounds."""
    rows = {}
    for t in order:
        rps, p50, p99 = [], [], []
        for r in range(1, rounds + 1):
            text = open(f"{work}/{t}.{r}.txt").read()
            rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)))
            p50.append(ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)))
            p99.append(ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)))
        rows[t] = (statistics.median(rps), statistics.median(p50), statistics.median(p99))
    return rows


def print_table(rows, order, direct_of):
    """One line a target; `direct_of(target)` names the target it is compared with (None for a
    direct one, which adds nothing)."""
    print(f"{'target':16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'added µs/call vs direct':>24}")
    for t in order:
        rps, p50, p99 = rows[t]
        direct = direct_of(t)
        added = "" if direct is None else f"{1e6 / rps - 1e6 / rows[direct][0]:.1f}"
        print(f"{t:16} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {added:>24}")


def report(args, direct_of):
    """`args` as the scripts pass them (work directory, rounds, the targets in order): prints the
    table and returns the medians, for the script's own conclusions."""
    work, rounds, order = args[0], int(args[1]), args[2:]
    rows = medians(work, rounds, order)
    print_table(rows, order, direct_of)
    return rows
