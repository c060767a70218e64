#!/usr/bin/env python3
"""smtpgate's CPU while clients keep coming past its open files limit.

Usage: deploy/bench/nofile_cpu.py [SECONDS]   (SMTPGATE_BIN: the binary,
default build/smtpgate)

Starts smtpgate (2 workers, RLIMIT_NOFILE 64) in front of a recording
backend of the integration harness, fills its descriptor table with
sessions that each hold a backend connection, then connects clients one
after another for SECONDS (default 5) and prints how many got 421 and
smtpgate's CPU time over that window: a figure, not a test.
"""
import os
import sys
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
os.environ.setdefault("SMTPGATE_BIN", os.path.join(TOP, "build", "smtpgate"))
from harness import Gateway, RecordingBackend, SmtpClient  # noqa: E402


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    backend = RecordingBackend()
    gw = Gateway([backend.addr], {"workers": 2, "log_level": "warning"},
                 name="nofile-cpu", nofile=64).start()
    held, n421, n220 = [], 0, 0
    try:
        while True:
            c = SmtpClient(gw.port).connect()
            if c.read_reply().code != 220:
                c.close()
                break
            c.ehlo()
            c.cmd("MAIL FROM:<bench@sender.example>")
            held.append(c)
        wall0, cpu0 = time.monotonic(), gw.cpu_seconds()
        while time.monotonic() < wall0 + seconds:
            c = SmtpClient(gw.port).connect()
            code = c.read_reply().code
            c.close()
            n421 += code == 421
            n220 += code == 220
        wall, cpu = time.monotonic() - wall0, gw.cpu_seconds() - cpu0
        print("sessions held: %d; in %.1f s: %d clients got 421, %d got 220; "
              "smtpgate CPU %.2f s = %.1f%% of wall time, %.0f us per client"
              % (len(held), wall, n421, n220, cpu, 100 * cpu / wall,
                 cpu * 1e6 / max(1, n421 + n220)))
    finally:
        for c in held:
            c.close()
        gw.cleanup()
        backend.stop()


if __name__ == "__main__":
    main()
