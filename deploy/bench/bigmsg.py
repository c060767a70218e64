#!/usr/bin/env python3
"""Send one large message over SMTP (benchmark helper).

Usage: bigmsg.py HOST PORT SIZE_BYTES

Speaks EHLO / MAIL FROM (with SIZE=) / RCPT TO / DATA to HOST:PORT, then
streams SIZE_BYTES of message (a few header lines, then body lines of 998
octets + CRLF, generated on the fly; no line starts with ".", no bare CR
or LF), the final <CRLF>.<CRLF>, and QUIT.  Prints one line:

    sent=BYTES seconds=S mbps=MB/s reply=<final reply to the dot>

and exits 0 when the final reply is 250, 1 otherwise.  Python standard
library only.
"""
import socket
import sys
import time


def read_reply(f):
    """Reads one (possibly multi-line) SMTP reply; returns its text."""
    lines = []
    while True:
        line = f.readline(4096)
        if not line:
            raise ConnectionError("connection closed while awaiting reply")
        lines.append(line.decode("latin-1").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return "\n".join(lines)


def expect(f, code, what):
    r = read_reply(f)
    if not r.startswith(code):
        raise RuntimeError(f"{what}: unexpected reply: {r!r}")
    return r


def main():
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    sock = socket.create_connection((host, port), timeout=300)
    f = sock.makefile("rb")
    expect(f, "220", "greeting")
    sock.sendall(b"EHLO bench.example.test\r\n")
    expect(f, "250", "EHLO")
    sock.sendall(b"MAIL FROM:<bench@example.test> SIZE=%d\r\n" % size)
    expect(f, "250", "MAIL")
    sock.sendall(b"RCPT TO:<sink@example.test>\r\n")
    expect(f, "250", "RCPT")
    sock.sendall(b"DATA\r\n")
    expect(f, "354", "DATA")

    header = (b"From: <bench@example.test>\r\n"
              b"To: <sink@example.test>\r\n"
              b"Subject: smtpgate benchmark large message\r\n"
              b"Message-ID: <bench-bigmsg@example.test>\r\n"
              b"\r\n")
    # 64 body lines of 998 octets + CRLF = 64000 bytes per block.
    line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 28)[:998] + b"\r\n"
    block = line * 64
    t0 = time.monotonic()
    sent = 0
    sock.sendall(header)
    sent += len(header)
    while size - sent >= len(block):
        sock.sendall(block)
        sent += len(block)
    # The rest: whole lines, then one short line (at least 3 octets with
    # its CRLF, never starting with ".").
    rest = size - sent
    tail = line * (rest // len(line))
    short = rest - len(tail)
    if short:
        tail += b"x" * max(short - 2, 1) + b"\r\n"
    sock.sendall(tail)
    sent += len(tail)
    sock.sendall(b".\r\n")
    final = read_reply(f)
    secs = time.monotonic() - t0
    try:
        sock.sendall(b"QUIT\r\n")
        read_reply(f)
    except (OSError, ConnectionError):
        pass
    sock.close()
    print(f"sent={sent} seconds={secs:.2f} "
          f"mbps={sent / secs / 1048576:.1f} reply={final.splitlines()[-1]}",
          flush=True)
    return 0 if final.startswith("250") else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, RuntimeError, ConnectionError) as e:
        print(f"error: {e}", flush=True)
        sys.exit(1)
