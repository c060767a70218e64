#!/usr/bin/env python3
"""Open many idle SMTP connections and hold them (benchmark helper).

Usage: idle_clients.py [--sources N] [--partial] HOST PORT COUNT [SETUP_TIMEOUT_SECONDS]

--sources N binds the connections to the source addresses 127.0.0.2 to
127.0.0.N+1 in turn, so that tens of thousands of them do not run out of
ephemeral ports of one address (loopback HOST only).  --partial sends
"NOOP" without its line end after each greeting: the server holds the
start of a command line for every connection (a slow client's state).  The open files limit
is raised to what COUNT needs, as far as the hard limit allows.

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
import resource
import selectors
import signal
import socket
import sys
import time

INFLIGHT = 256          # connects in progress at once


def main():
    args = sys.argv[1:]
    nsources, partial = 0, False
    while args and args[0].startswith("--"):
        if args[0] == "--sources" and len(args) >= 2:
            nsources = int(args[1])
            args = args[2:]
        elif args[0] == "--partial":
            partial = True
            args = args[1:]
        else:
            break
    if len(args) not in (3, 4) or not 0 <= nsources <= 254:
        sys.stderr.write(__doc__)
        return 2
    host, port, count = args[0], int(args[1]), int(args[2])
    setup_timeout = float(args[3]) if len(args) == 4 else 120.0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

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
        if nsources:
            try:
                s.bind(("127.0.0.%d" % (2 + started % nsources), 0))
            except OSError:
                failed += 1
                s.close()
                return
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
                if partial:
                    try:
                        s.send(b"NOOP")
                    except OSError:
                        pass
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
