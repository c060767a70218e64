#!/usr/bin/env python3
"""Check that a running smtpgate enforces the benchmark's policy.

Usage: policy_probe.py HOST PORT HELO SENDER RCPT CANARY CANARY_REPLY

One SMTP session, no message sent (the sink's message count is untouched):

    EHLO HELO                      250
    MAIL FROM:<SENDER>             250 (the traffic's sender passes)
    RCPT TO:<probe@not-local.invalid>
                                   550 ... Relay access denied (relay: on,
                                   127.0.0.1 not trusted, domain not local)
    RCPT TO:<RCPT>                 250 (its domain is in local_domains)
    RSET                           250
    MAIL FROM:<CANARY>             CANARY_REPLY exactly: the generated
                                   policy's last rule, so the running
                                   process has that policy loaded
    QUIT

Prints one line and exits 0 when every reply is as expected, else prints
what differed and exits 1.  Python standard library only.
"""
import socket
import sys


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__.split("\n\n")[1])
    host, port, helo, sender, rcpt, canary, canary_reply = sys.argv[1:]
    s = socket.create_connection((host, int(port)), timeout=10)
    f = s.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline()
            if not line:
                raise EOFError("connection closed")
            lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return lines[-1][:3], " ".join(lines)

    def cmd(c):
        s.sendall(c.encode("ascii") + b"\r\n")
        return reply()

    bad = []

    def expect(what, got, ok):
        if not ok:
            bad.append(f"{what}: got {got[1]!r}")

    expect("greeting", reply(), True)
    r = cmd(f"EHLO {helo}")
    expect("EHLO", r, r[0] == "250")
    r = cmd(f"MAIL FROM:<{sender}>")
    expect("MAIL of the traffic's sender", r, r[0] == "250")
    r = cmd("RCPT TO:<probe@not-local.invalid>")
    expect("RCPT of a non-local recipient (relay denied expected)", r,
           r[0] == "550" and "Relay access denied" in r[1])
    r = cmd(f"RCPT TO:<{rcpt}>")
    expect("RCPT of the traffic's recipient", r, r[0] == "250")
    r = cmd("RSET")
    expect("RSET", r, r[0] == "250")
    r = cmd(f"MAIL FROM:<{canary}>")
    expect(f"MAIL of the canary (expected {canary_reply!r})", r,
           r[1] == canary_reply)
    try:
        cmd("QUIT")
    except (OSError, EOFError):
        pass
    s.close()
    if bad:
        print("policy probe FAILED: " + "; ".join(bad))
        sys.exit(1)
    print(f"policy enforced: non-local recipient refused (relay), "
          f"canary rule answered {canary_reply!r}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, EOFError) as e:
        print(f"policy probe FAILED: {e}")
        sys.exit(1)
