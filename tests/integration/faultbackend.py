"""
faultbackend.py: a scriptable SMTP backend for the fault-injection tests
(standard library only).

FaultBackend listens on 127.0.0.1:<port 0> and serves each connection in a
thread of its own.  A connection follows a Script taken from the queue
(backend.plan(script, ...)) when it is accepted; once the queue is empty,
connections are served normally (Postfix-like replies).  A Script says, per
event, what the server does instead of its usual reply:

  events   "greeting", "EHLO", "MAIL", "RCPT", "DATA" (the 354), "DOT" (the
           reply to the final dot), "RSET", "QUIT"
  actions  None           the usual reply
           bytes          sent as they are (garbage, a 421, a long line...)
           CLOSE          close at once, without a reply
           RESET          close with a TCP reset (SO_LINGER 0), no reply
           HANG           never reply; go on reading (and discarding) until
                          the peer closes or the server stops
           STALL          stop reading altogether (after the 354 when the
                          event is "DATA"): the peer's writes fill the socket
                          buffers; the server waits until it stops
           HOLD           (DOT only) the message is accepted (recorded), and
                          the 250 is sent once release() is called
           a tuple        its actions one after the other: (b"354 ...", CLOSE)
                          replies, then closes
  A STALL ends at release() (the server then reads and discards until the
  peer closes) or when the server stops.
  split    None: each reply in one write; "bytewise": one write per byte;
           "lines": one write per line, with a short pause between writes so
           that each line arrives in a packet of its own

What the server accepted is recorded per message, keyed by the value of the
message's X-Token header:
  accepted    {token: count}: messages whose 250 to the final dot was sent
  unanswered  {token: count}: messages whose final dot arrived but that got
              no 250 (the script closed instead): what a real MTA may or may
              not have queued (the duplicate risk when the client retries)
  aborted     number of transactions cut off inside the data (no dot)
  held        number of final dots that arrived under HOLD
  quits       number of QUIT commands received
Every accepted connection is counted (connections) and its end is seen by
wait_idle().
"""

import re
import select
import socket
import struct
import threading
import time

CRLF = b"\r\n"

CLOSE = "close"
RESET = "reset"
HANG = "hang"
STALL = "stall"
HOLD = "hold"

EHLO_KEYWORDS = ["PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES",
                 "SMTPUTF8", "DSN"]
TOKEN_RX = re.compile(rb"(?mi)^X-Token: *(\S+)\r?$")


class Script:
    """What one connection does differently (see the module text)."""

    def __init__(self, split=None, **actions):
        self.split = split
        self.actions = actions

    def action(self, event):
        return self.actions.get(event)


class _Stop(Exception):
    pass


class FaultBackend:
    """See the module text.  rcvbuf, when given, is set on the listening
    socket before listen() (accepted sockets inherit it), so a stalled
    server holds little data in its kernel buffers."""

    def __init__(self, hostname="backend.test", rcvbuf=None):
        self.hostname = hostname
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(128)
        self.cond = threading.Condition()
        self.scripts = []
        self.accepted = {}
        self.unanswered = {}
        self.aborted = 0
        self.held = 0           # final dots held (HOLD) so far
        self.quits = 0          # QUIT commands received
        self.connections = 0
        self.open = 0
        self.generation = 0     # bumped by release()
        self.stop_ev = threading.Event()
        self.conns = []
        self.threads = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.accept_thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    # -- scripting and inspection -------------------------------------------

    def plan(self, *scripts):
        """Queues scripts for the next connections, one each."""
        with self.cond:
            self.scripts.extend(scripts)

    def clear(self):
        """Drops the scripts not taken yet; releases held replies."""
        with self.cond:
            self.scripts = []
        self.release()

    def release(self):
        """Lets every HOLD reply and STALL waiting now go."""
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def _wait_release(self):
        """Waits for the next release() or the stop."""
        with self.cond:
            gen = self.generation
            self.cond.wait_for(lambda: self.generation != gen or self.stop_ev.is_set())

    def count(self, token):
        with self.cond:
            return self.accepted.get(token, 0)

    def unanswered_count(self, token):
        with self.cond:
            return self.unanswered.get(token, 0)

    def wait_for(self, pred, timeout=10.0, what="backend state"):
        """Waits until pred() (called under the lock) is true."""
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise TimeoutError("timed out waiting for %s" % what)

    def wait_connections(self, n, timeout=10.0):
        self.wait_for(lambda: self.connections >= n, timeout,
                      "%d backend connections (have %d)" % (n, self.connections))

    def wait_idle(self, timeout=10.0):
        """Waits until no connection is open (the peer closed each one)."""
        self.wait_for(lambda: self.open == 0, timeout,
                      "the backend connections to close (%d open)" % self.open)

    def wait_accepted(self, token, timeout=10.0):
        self.wait_for(lambda: self.accepted.get(token, 0) > 0, timeout,
                      "message %s at the backend" % token)

    def stop(self):
        """Closes the listener and every connection; joins the threads."""
        self.stop_ev.set()
        self.release()
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass
        self.accept_thread.join(5)
        with self.cond:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self.threads):
            t.join(5)
        for s in (self.sock, self.wake_r, self.wake_w):
            s.close()

    # -- serving ------------------------------------------------------------

    def _accept_loop(self):
        while not self.stop_ev.is_set():
            r, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in r:
                return
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                script = self.scripts.pop(0) if self.scripts else Script()
                self.connections += 1
                self.open += 1
                self.conns.append(s)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(s, script), daemon=True)
            self.threads.append(t)
            t.start()

    def _send(self, s, script, data):
        if script.split == "bytewise":
            for i in range(len(data)):
                s.sendall(data[i:i + 1])
        elif script.split == "lines":
            lines = data.split(CRLF)[:-1]
            for i, l in enumerate(lines):
                if i:
                    time.sleep(0.02)  # a packet of its own
                s.sendall(l + CRLF)
        else:
            s.sendall(data)

    def _wait_stop(self, s, read):
        """HANG (read=True: read and discard until EOF or the stop) or STALL
        (read nothing until release(), then as HANG)."""
        if not read:
            self._wait_release()
        while not self.stop_ev.is_set():
            r, _, _ = select.select([s, self.wake_r], [], [])
            if self.wake_r in r:
                break
            try:
                if not s.recv(65536):
                    break
            except OSError:
                break
        raise _Stop()

    def _act(self, s, script, event, default):
        """Does what the script says for event; returns normally when a
        reply was sent, raises _Stop when the connection is done."""
        a = script.action(event)
        if isinstance(a, tuple):
            for one in a:
                self._do(s, script, event, default, one)
            return
        self._do(s, script, event, default, a)

    def _do(self, s, script, event, default, a):
        if a is None:
            self._send(s, script, default)
        elif a == CLOSE:
            raise _Stop()
        elif a == RESET:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Stop()
        elif a == HANG:
            self._wait_stop(s, True)
        elif a == STALL:
            if event == "DATA":
                self._send(s, script, b"354 End data with <CR><LF>.<CR><LF>\r\n")
            self._wait_stop(s, False)
        elif isinstance(a, bytes):
            self._send(s, script, a)
        else:
            raise ValueError("bad action %r for %s" % (a, event))

    def _message_done(self, s, script, payload):
        m = TOKEN_RX.search(payload)
        token = m.group(1).decode() if m else "-"
        a = script.action("DOT")
        if a == HOLD:
            with self.cond:
                self.held += 1
                gen = self.generation
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.generation != gen or self.stop_ev.is_set())
            a = None
        if a is None:
            # Accepted: counted before the 250 goes (a real MTA has queued
            # the message by the time it answers).
            with self.cond:
                self.accepted[token] = self.accepted.get(token, 0) + 1
                self.cond.notify_all()
            self._send(s, script, b"250 2.0.0 Ok: queued as %s\r\n" % token.encode())
            return
        with self.cond:
            self.unanswered[token] = self.unanswered.get(token, 0) + 1
            self.cond.notify_all()
        self._act(s, script, "DOT", b"")

    def _serve(self, s, script):
        buf = bytearray()
        in_data = False
        have_mail = have_rcpt = False
        try:
            self._act(s, script, "greeting", b"220 %s ESMTP\r\n" % self.hostname.encode())
            while True:
                chunk = s.recv(262144)
                if not chunk:
                    break
                buf += chunk
                while True:
                    if in_data:
                        if buf.startswith(b".\r\n"):
                            end = 3
                        else:
                            i = buf.find(b"\r\n.\r\n")
                            if i < 0:
                                break
                            end = i + 5
                        payload = bytes(buf[:end])
                        del buf[:end]
                        in_data = have_mail = have_rcpt = False
                        self._message_done(s, script, payload)
                        continue
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line = bytes(buf[:i + 1]).rstrip(b"\r\n")
                    del buf[:i + 1]
                    verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                    if verb == b"EHLO":
                        kw = ["250-" + k for k in EHLO_KEYWORDS]
                        text = "250-%s\r\n%s\r\n" % (self.hostname, "\r\n".join(kw))
                        text = text[:text.rfind("250-")] + "250 " + text[text.rfind("250-") + 4:]
                        self._act(s, script, "EHLO", text.encode())
                    elif verb == b"HELO":
                        self._act(s, script, "EHLO", b"250 %s\r\n" % self.hostname.encode())
                    elif verb == b"MAIL":
                        have_mail = True
                        self._act(s, script, "MAIL", b"250 2.1.0 Ok\r\n")
                    elif verb == b"RCPT":
                        have_rcpt = have_mail
                        self._act(s, script, "RCPT", b"250 2.1.5 Ok\r\n")
                    elif verb == b"DATA":
                        if not have_rcpt:
                            self._send(s, script, b"554 5.5.1 Error: no valid recipients\r\n")
                            continue
                        self._act(s, script, "DATA",
                                  b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        in_data = True
                    elif verb == b"RSET":
                        have_mail = have_rcpt = False
                        self._act(s, script, "RSET", b"250 2.0.0 Ok\r\n")
                    elif verb == b"NOOP":
                        self._send(s, script, b"250 2.0.0 Ok\r\n")
                    elif verb == b"QUIT":
                        with self.cond:
                            self.quits += 1
                            self.cond.notify_all()
                        self._act(s, script, "QUIT", b"221 2.0.0 Bye\r\n")
                        raise _Stop()
                    else:
                        self._send(s, script, b"502 5.5.2 Error: command not recognized\r\n")
        except (_Stop, OSError):
            pass
        finally:
            if in_data:
                with self.cond:
                    self.aborted += 1
            try:
                s.close()
            except OSError:
                pass
            with self.cond:
                self.open -= 1
                self.conns.remove(s)
                self.cond.notify_all()
