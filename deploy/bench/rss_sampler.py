#!/usr/bin/env python3
"""Sample a process's resident set size (benchmark helper).

Usage: rss_sampler.py PID INTERVAL_SECONDS

Reads VmRSS from /proc/PID/status every INTERVAL_SECONDS until SIGTERM or
SIGINT (or until the process is gone), then prints one line:

    samples=N first_kb=A max_kb=B last_kb=C

It prints "started" first, once a signal no longer kills it unheard.

Python standard library only.
"""
import signal
import sys
import time


def vmrss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    pid, interval = int(sys.argv[1]), float(sys.argv[2])
    stop = False

    def on_signal(_signo, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # From here a SIGTERM gives the summary: the caller waits for this.
    print("started", flush=True)
    samples, first, peak, last = 0, None, 0, None
    while not stop:
        kb = vmrss_kb(pid)
        if kb is None:
            break
        samples += 1
        if first is None:
            first = kb
        peak = max(peak, kb)
        last = kb
        time.sleep(interval)
    kb = vmrss_kb(pid)          # one last sample at the end
    if kb is not None:
        samples += 1
        first = kb if first is None else first
        peak = max(peak, kb)
        last = kb
    print(f"samples={samples} first_kb={first or 0} max_kb={peak} "
          f"last_kb={last or 0}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
