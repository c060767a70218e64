#!/usr/bin/env python3
"""Counting helpers of deploy/loadtest.sh (standard library only).

  loadstat.py cpu MASTER GATE REDIS
      One line per process, "LABEL PID TICKS" (utime + stime, clock
      ticks): smtpgate (GATE), redis (REDIS), Postfix's master (MASTER) as
      "master", each child of MASTER under its name (smtpd, cleanup, qmgr,
      trivial-rewrite, discard, postlogd, ...) and "exited" for the
      children MASTER has reaped (its cutime + cstime).
  loadstat.py cpudiff BEFORE AFTER MESSAGES
      From two "cpu" outputs: "LABEL MS_PER_MSG" per label, CPU spent
      between them per message; a process that started in between counts
      from zero.
  loadstat.py maillog LOG OFFSET SENDER
      Postfix's log from byte OFFSET: the messages from SENDER that qmgr
      took in (one "from=<SENDER>" line each), how many of them the
      discard transport delivered (status=sent), how many got any other
      status, and how many had a Message-ID seen before in the same run.
      Prints "ACCEPTED DELIVERED OTHER DUPLICATES".
  loadstat.py rss PID INTERVAL
      Prints "SECONDS KB" (VmRSS of PID) every INTERVAL seconds, flushed,
      until SIGTERM or until PID is gone.
  loadstat.py rsssummary FILE
      From "rss" output: "SAMPLES FIRST_KB LAST_KB GROWTH_KB VERDICT", the
      medians of the first and last third of the samples and FLAT when the
      last is at most 1 MiB or 5 % (the larger) above the first, else
      GROWING.
"""
import os
import re
import signal
import statistics
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def comm(pid):
    try:
        with open("/proc/%s/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu(master, gate, redis):
    out = []
    for label, pid in (("smtpgate", gate), ("redis", redis)):
        f = stat_fields(pid)
        if f:
            out.append((label, pid, int(f[11]) + int(f[12])))
    f = stat_fields(master)
    if f:
        out.append(("master", master, int(f[11]) + int(f[12])))
        out.append(("exited", master, int(f[13]) + int(f[14])))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = stat_fields(name)
        if f and f[1] == str(master):
            out.append((comm(name) or "?", name, int(f[11]) + int(f[12])))
    for label, pid, ticks in out:
        print(label, pid, ticks)


def read_cpu(path):
    d = {}
    with open(path) as f:
        for line in f:
            label, pid, ticks = line.split()
            d[(label, pid)] = int(ticks)
    return d


def cpudiff(before, after, msgs):
    b, a = read_cpu(before), read_cpu(after)
    per = {}
    for key, ticks in a.items():
        per[key[0]] = per.get(key[0], 0) + ticks - b.get(key, 0)
    for label in sorted(per):
        print(label, "%.3f" % (1000.0 * per[label] / HZ / int(msgs)))


def maillog(path, offset, sender):
    rx_msgid = re.compile(r"\]: ([0-9A-Za-z]+): message-id=(\S*)")
    rx_from = re.compile(r"\]: ([0-9A-Za-z]+): from=<([^>]*)>, size=\d+, nrcpt=\d+ \(queue active\)")
    rx_to = re.compile(r"\]: ([0-9A-Za-z]+): to=<[^>]*>, .* status=(\w+)")
    msgid, ours, seen = {}, set(), set()
    accepted = delivered = other = dups = 0
    with open(path, "rb") as f:
        f.seek(int(offset))
        for raw in f:
            line = raw.decode("utf-8", "replace")
            m = rx_msgid.search(line)
            if m:
                msgid[m.group(1)] = m.group(2)
                continue
            m = rx_from.search(line)
            if m:
                if m.group(2) == sender:
                    accepted += 1
                    ours.add(m.group(1))
                    mid = msgid.get(m.group(1))
                    if mid in seen:
                        dups += 1
                    elif mid:
                        seen.add(mid)
                continue
            m = rx_to.search(line)
            if m and m.group(1) in ours:
                if m.group(2) == "sent":
                    delivered += 1
                else:
                    other += 1
    print(accepted, delivered, other, dups)


def rss(pid, interval):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.monotonic()
    while not stop:
        try:
            with open("/proc/%s/status" % pid) as f:
                kb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return
        print("%.0f %d" % (time.monotonic() - t0, kb), flush=True)
        end = time.monotonic() + float(interval)
        while not stop and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def rsssummary(path):
    with open(path) as f:
        kb = [int(line.split()[1]) for line in f if line.strip()]
    if len(kb) < 3:
        print(len(kb), 0, 0, 0, "n/a")
        return
    third = len(kb) // 3
    first = statistics.median(kb[:third])
    last = statistics.median(kb[-third:])
    growth = last - first
    verdict = "FLAT" if growth <= max(1024, 0.05 * first) else "GROWING"
    print(len(kb), "%.0f" % first, "%.0f" % last, "%.0f" % growth, verdict)


def main():
    cmds = {"cpu": (cpu, 3), "cpudiff": (cpudiff, 3), "maillog": (maillog, 3),
            "rss": (rss, 2), "rsssummary": (rsssummary, 1)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) != 2 + cmds[sys.argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    cmds[sys.argv[1]][0](*sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
