#!/usr/bin/env python3
"""Open many idle SMTP connections and hold them (benchmark helper).

Usage: idle_clients.py HOST PORT COUNT [SETUP_TIMEOUT_SECONDS]

Opens COUNT TCP connections to HOST:PORT (at most 256 connects in progress
at a time), reads the 220 greeting on each, and then keeps every
connection open without sending anything.  Once every connection is either
greeted or failed it prints one line and flushes stdout:

    ready greeted=N failed=M

and then holds the connections until SIGTERM/SIGINT, when it prints

    done greeted=N closed_by_server=K

and exits: 0 if every connection was greeted and none was closed by the
server while held, 1 otherwise.  Python standard library only.
"""
import errno
import selectors
import signal
import socket
import sys
import time

INFLIGHT = 256          # connects in progress at once


def main():
    if len(sys.argv) not in (4, 5):
        sys.stderr.write(__doc__)
        return 2
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    setup_timeout = float(sys.argv[4]) if len(sys.argv) == 5 else 120.0

    sel = selectors.DefaultSelector()
    state = {}          # socket -> bytes read so far (greeting pending)
    held = set()        # greeted sockets
    failed = 0
    started = 0
    closed_by_server = 0
    stop = False

    def on_signal(_signo, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start_one():
        nonlocal started, failed
        started += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            return
        state[s] = b""
        sel.register(s, selectors.EVENT_READ)

    deadline = time.monotonic() + setup_timeout
    while (started < count or state) and time.monotonic() < deadline:
        while started < count and len(state) < INFLIGHT:
            start_one()
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                failed += 1
                sel.unregister(s)
                del state[s]
                s.close()
                continue
            buf = state[s] + data
            if b"\n" not in buf:
                state[s] = buf
                continue
            del state[s]
            if buf.startswith(b"220 "):
                held.add(s)     # stays registered: EOF means closed
            else:
                failed += 1
                sel.unregister(s)
                s.close()
    failed += len(state) + (count - started)
    for s in state:
        sel.unregister(s)
        s.close()
    state.clear()

    print(f"ready greeted={len(held)} failed={failed}", flush=True)

    # Hold until SIGTERM/SIGINT; EOF on a held socket means the server
    # closed it.
    while not stop:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_by_server += 1
                sel.unregister(s)
                held.discard(s)
                s.close()
    print(f"done greeted={len(held) + closed_by_server} "
          f"closed_by_server={closed_by_server}", flush=True)
    for s in held:
        s.close()
    return 0 if failed == 0 and closed_by_server == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
