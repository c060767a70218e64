#!/usr/bin/env python3
"""Fault injection: the gateway in front of a scripted backend of the tests'
own (faultbackend.FaultBackend) and a real redis-server, with faults on
every side.  Each case runs its fault a number of times and asserts:

  - the client gets the right reply (code and enhanced code), or the
    session ends cleanly;
  - the gateway goes on serving: a healthy session delivers a message after
    each fault (and, where the fault lasts, while it lasts);
  - no leak: the gateway's open file descriptors (/proc/PID/fd) are exactly
    as many after the batch as before it, and its resident memory (VmRSS)
    grew by at most RSS_TOLERANCE_KB after a warm-up run (the memory check
    is skipped on a sanitizer build, whose allocator keeps freed memory in
    quarantine; LeakSanitizer checks that build at exit instead);
  - no message lost or duplicated: a message whose client got 250 is at the
    backend exactly once, and one whose client did not get 250 is not there
    (except where the case says why it may be).

Every message carries an X-Token header; the backend counts messages by it.
At the end the module prints a table of the cases (reply seen, backend
counts, descriptors and memory before and after)."""

import os
import re
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    CRLF, ClosedPort, ConnectionClosed, Gateway, RedisServer, _failure_count,
    check_reply, dot_stuff, gateway_bin, make_message, show_log_tail, wait_until,
)
from faultbackend import (  # noqa: E402
    CLOSE, HANG, HOLD, RESET, STALL, FaultBackend, Script,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
TIMEOUT = 5.0          # every reply is awaited this long at most
RSS_TOLERANCE_KB = 256  # VmRSS growth allowed over a batch after warm-up

# Small timeouts, so that every timeout case takes a fraction of a second.
OVERRIDES = {
    "backend": {"xclient": False,
                "timeouts": {"connect": "500ms", "greeting": "300ms", "helo": "300ms",
                             "mail": "300ms", "rcpt": "300ms", "data_init": "300ms",
                             "data_block": "300ms", "data_done": "500ms"}},
    "timeouts": {"command": "10s", "data": "10s"},
}

RESULTS = []   # one row per case, printed at the end


def _sanitized():
    try:
        with open(gateway_bin(), "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized()
_tokens = iter(range(1, 1 << 30))


def token():
    return "t%d-%d" % (os.getpid(), next(_tokens))


def message(tok, size=None):
    """A message carrying X-Token: tok; about size bytes when given."""
    if size is None:
        return make_message(subject=tok, extra_headers=["X-Token: " + tok])
    head = make_message(subject=tok, extra_headers=["X-Token: " + tok], body_lines=[])
    line = b"x" * 998 + CRLF
    return head + line * max(1, (size - len(head)) // len(line))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


class FaultCase(unittest.TestCase):
    """Base: a FaultBackend and a gateway in front of it per class."""

    OVERRIDES = OVERRIDES
    POLICY = None
    RCVBUF = 16384   # the backend's socket receive buffer (stalls fill it)

    @classmethod
    def backends(cls):
        return [cls.backend.addr]

    @classmethod
    def setUpClass(cls):
        cls.backend = FaultBackend(rcvbuf=cls.RCVBUF)
        cls.addClassCleanup(cls.backend.stop)
        cls.extra_setup()
        cls.gw = Gateway(cls.backends(), cls.gw_overrides(), name=cls.__name__,
                         policy=cls.POLICY)
        cls.addClassCleanup(cls.gw.stop_and_check)
        cls.gw.start()

    @classmethod
    def extra_setup(cls):
        pass

    @classmethod
    def gw_overrides(cls):
        return cls.OVERRIDES

    def setUp(self):
        self.backend.clear()
        self.sent = {}       # token -> reply the client got to its dot (or None)
        self.expect = {}     # token -> count the backend may have without a 250
        self._nfail = _failure_count(self)
        self.assertTrue(self.gw.running(), "gateway is not running")

    def tearDown(self):
        self.backend.clear()
        alive = self.gw.running()
        if not alive or _failure_count(self) != self._nfail:
            show_log_tail(self.gw, self.id())
        self.assertIsNone(self.gw.sanitizer_report(), "sanitizer report in the gateway log")
        self.assertTrue(alive, "gateway died (status %s)" % self.gw.proc.returncode)

    # -- clients -------------------------------------------------------------

    def client(self, ehlo=True, greet=True, timeout=TIMEOUT):
        c = self.gw.client(greet=greet, timeout=timeout)
        self.addCleanup(c.close)
        if ehlo:
            c.ehlo()
        return c

    def healthy(self):
        """A session that delivers a message (250) and quits."""
        tok = token()
        c = self.client()
        final = c.transaction(SENDER, [RCPT], message(tok))
        self.sent[tok] = final
        self.assertEqual(final.raw, b"250 2.0.0 Ok: queued as %s\r\n" % tok.encode())
        c.expect(221, line="QUIT")
        c.wait_closed()
        c.close()

    def to_data(self, c, tok):
        """MAIL, RCPT, DATA (all accepted); records tok as sent."""
        self.sent[tok] = None
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")

    def final(self, c, tok, msg=None):
        """Sends the message and returns the reply to its dot."""
        c.send(dot_stuff(msg if msg is not None else message(tok)))
        r = c.read_reply()
        self.sent[tok] = r
        return r

    # -- measuring -------------------------------------------------------------

    def settle(self, fds=None):
        """Waits for the backend's connections to end and, with fds, for
        the gateway's descriptor count to come back to it.  Returns the
        count."""
        self.backend.release()
        self.backend.wait_idle()
        pid = self.gw.pid
        if fds is not None:
            try:
                wait_until(lambda: fd_count(pid) == fds, 5.0, "the fd count back to %d" % fds)
            except TimeoutError:
                pass   # asserted by the caller, with the figures
        return fd_count(pid)

    def batch(self, name, one, reps, healthy=True, check_fds=True):
        """Runs one() once to warm up, then reps times (each followed by a
        healthy session when healthy), and asserts the leak and message
        invariants.  one() returns a short text of what the client saw."""
        seen = one()
        if healthy:
            self.healthy()
        pid = self.gw.pid
        fd0 = self.settle()
        rss0 = rss_kb(pid)
        for _ in range(reps):
            seen = one()
            if healthy:
                self.healthy()
        fd1 = self.settle(fd0)
        rss1 = rss_kb(pid)
        self.record(name, seen, reps, fd0, fd1, rss0, rss1)
        if check_fds:
            self.assertEqual(fd1, fd0, "descriptors leaked: %d before, %d after" % (fd0, fd1))
        if not SANITIZED:
            self.assertLessEqual(rss1 - rss0, RSS_TOLERANCE_KB,
                                 "VmRSS grew from %d to %d kB" % (rss0, rss1))
        self.check_messages()

    def record(self, name, seen, reps, fd0, fd1, rss0, rss1):
        got = sum(1 for r in self.sent.values() if r is not None and r.code == 250)
        at_be = sum(self.backend.count(t) for t in self.sent)
        unans = sum(self.backend.unanswered_count(t) for t in self.sent)
        RESULTS.append((name, seen, reps, "%d/%d/%d" % (got, at_be, unans),
                        "%d->%d" % (fd0, fd1), "%d->%d" % (rss0, rss1)))

    def check_messages(self):
        """Every 250 is at the backend exactly once; nothing else is,
        except what self.expect allows."""
        for tok, r in self.sent.items():
            n = self.backend.count(tok)
            if r is not None and r.code == 250:
                self.assertEqual(n, 1, "message %s: client got 250, backend has it %d "
                                 "times" % (tok, n))
            else:
                self.assertEqual(n, self.expect.get(tok, 0),
                                 "message %s: client got %s, backend has it %d times"
                                 % (tok, r, n))


def _short(r):
    return str(r).split("\r\n")[0][:48] if r is not None else "-"


# ---------------------------------------------------------------------------
# The backend does not answer, or goes away
# ---------------------------------------------------------------------------


class BackendRefuses(FaultCase):
    """The backend's port is closed: MAIL gets 451 4.4.1; sessions that do
    not need the backend go on; once the port listens, mail flows."""

    @classmethod
    def extra_setup(cls):
        cls.closed = ClosedPort()
        cls.addClassCleanup(cls.closed.close)

    @classmethod
    def backends(cls):
        return [cls.closed.addr]

    def test_connection_refused(self):
        def one():
            c = self.client()
            r = c.expect(451, "4.4.1", line="MAIL FROM:<%s>" % SENDER)
            # Another session meanwhile: everything not needing the backend.
            other = self.client()
            other.expect(250, line="NOOP")
            other.expect(221, line="QUIT")
            c.expect(250, line="RSET")
            c.expect(221, line="QUIT")
            c.wait_closed()
            other.wait_closed()
            return _short(r)
        self.batch("backend refuses connections", one, 20, healthy=False)
        # The port opens: the same gateway delivers.
        self.closed.sock.listen(8)
        conn = []
        t = threading.Thread(target=self._serve_once, args=(conn,), daemon=True)
        t.start()
        c = self.client()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        t.join(5)
        c.expect(221, line="QUIT")

    def _serve_once(self, out):
        s, _ = self.closed.sock.accept()
        out.append(s)
        f = s.makefile("rb")
        s.sendall(b"220 late.test ESMTP\r\n")
        f.readline()
        s.sendall(b"250-late.test\r\n250 PIPELINING\r\n")
        f.readline()
        s.sendall(b"250 2.1.0 Ok\r\n")
        f.readline()
        s.sendall(b"221 2.0.0 Bye\r\n")
        f.close()
        s.close()


class BackendFaults(FaultCase):
    """Faults of the backend, one script per fault."""

    def fault_session(self, script, until, tok=None):
        """A session whose backend connection follows script; a healthy
        session runs while it waits for its reply at `until` ("MAIL",
        "DATA" or "DOT").  Returns the reply."""
        self.backend.plan(script)
        n = self.backend.connections
        c = self.client()
        tok = tok or token()
        if until == "MAIL":
            c.sendline("MAIL FROM:<%s>" % SENDER)
        else:
            self.to_data(c, tok)
            c.send(dot_stuff(message(tok)))
        self.backend.wait_connections(n + 1)
        self.healthy()   # concurrently, while the fault holds the other
        r = c.read_reply()
        if until != "MAIL":
            self.sent[tok] = r
        return c, r

    def each_reply_lost(self, cases):
        """For each (event, reply) of cases, a session whose backend answers
        the command at event ("MAIL", "RCPT", "DATA" or "DOT") with reply,
        the ones before it accepted: the client must be told 451 4.4.2 (the
        backend is lost), and the session goes on to QUIT.  Returns a
        summary for the batch."""
        seen = []
        for event, reply in cases:
            tok = token()
            self.backend.plan(Script(**{event: (reply, HANG)}))
            c = self.client()
            self.sent[tok] = None
            ctx = "%s answered %r" % (event, reply[:40])
            try:
                if event == "MAIL":
                    r = c.cmd("MAIL FROM:<%s>" % SENDER)
                else:
                    c.expect(250, line="MAIL FROM:<%s>" % SENDER)
                    if event == "RCPT":
                        r = c.cmd("RCPT TO:<%s>" % RCPT)
                    else:
                        c.expect(250, line="RCPT TO:<%s>" % RCPT)
                        if event == "DATA":
                            r = c.cmd("DATA")
                        else:
                            c.expect(354, line="DATA")
                            r = self.final(c, tok)
                check_reply(r, 451, "4.4.2")
            except AssertionError as e:
                raise AssertionError("%s: %s" % (ctx, e))
            c.expect(221, line="QUIT")
            seen.append(r.code)
        return "451 4.4.2 x%d" % len(seen) if set(seen) == {451} else str(seen)

    def test_greeting_never_comes(self):
        def one():
            c, r = self.fault_session(Script(greeting=HANG), "MAIL")
            check_reply(r, 451, "4.4.1")
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend never greets", one, 10)

    def test_garbage_greeting(self):
        def one():
            c, r = self.fault_session(Script(greeting=b"hello there\r\n"), "MAIL")
            check_reply(r, 451, "4.4.1")
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("greeting is garbage", one, 20)

    def test_many_at_once(self):
        # Ten sessions wait for a backend that never greets and ten for the
        # reply to their dot, all at once; a healthy one passes meanwhile.
        def one():
            waiting = []
            for _ in range(10):
                self.backend.plan(Script(greeting=HANG))
                n = self.backend.connections
                c = self.client()
                c.sendline("MAIL FROM:<%s>" % SENDER)
                self.backend.wait_connections(n + 1)
                waiting.append((c, None, "4.4.1"))
            for _ in range(10):
                self.backend.plan(Script(DOT=HANG))
                tok = token()
                c = self.client()
                self.to_data(c, tok)
                c.send(dot_stuff(message(tok)))
                waiting.append((c, tok, "4.4.2"))
            self.healthy()
            for c, tok, enhanced in waiting:
                r = c.read_reply()
                if tok is not None:
                    self.sent[tok] = r
                check_reply(r, 451, enhanced)
                c.expect(221, line="QUIT")
                c.close()
            return "451 x20"
        self.batch("20 faulty sessions at once", one, 3)

    def test_greeting_refuses(self):
        # A 421 or 554 greeting: the server will not serve us.
        greetings = [b"421 4.3.2 backend.test Service not available\r\n",
                     b"554 5.3.2 backend.test No SMTP service here\r\n"]
        def one():
            for g in greetings:
                c, r = self.fault_session(Script(greeting=(g, HANG)), "MAIL")
                check_reply(r, 451, "4.4.1")
                c.expect(221, line="QUIT")
            return _short(r)
        self.batch("greeting 421 or 554", one, 10)

    def test_reset_at_rcpt(self):
        def one():
            self.backend.plan(Script(RCPT=RESET))
            tok = token()
            c = self.client()
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            r = c.expect(451, "4.4.2", line="RCPT TO:<%s>" % RCPT)
            r2 = c.expect(451, "4.4.2", line="DATA")
            c.expect(250, line="RSET")
            self.sent[tok] = c.transaction(SENDER, [RCPT], message(tok))
            c.expect(221, line="QUIT")
            return "%s; DATA %d" % (_short(r), r2.code)
        self.batch("backend resets the connection at RCPT", one, 20)

    def test_garbage_with_pipelined_commands(self):
        # MAIL, two RCPTs and DATA in one write; the backend answers the
        # first RCPT with garbage: every command still gets one reply, in
        # order, and none of them a 250 it did not earn.
        def one():
            self.backend.plan(Script(RCPT=(b"2\x00\x01 what\r\n", HANG)))
            c = self.client()
            c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<other@example.test>\r\n"
                   "DATA\r\n" % (SENDER, RCPT))
            rs = [c.read_reply() for _ in range(4)]
            self.assertEqual([r.code for r in rs], [250, 451, 451, 451], [str(r) for r in rs])
            self.assertEqual([r.enhanced for r in rs[1:]], ["4.4.2"] * 3)
            c.expect(250, line="NOOP")
            c.expect(221, line="QUIT")
            return "250 451 451 451"
        self.batch("garbage among pipelined commands", one, 20)

    def test_stall_mid_data(self):
        # The backend stops reading after its 354: the gateway's writes
        # stall until data_block (300ms) ends the backend connection.
        def one():
            self.backend.plan(Script(DATA=STALL))
            tok = token()
            c = self.client()
            self.to_data(c, tok)
            off = self.gw.log_size()
            msg = dot_stuff(message(tok, 4 << 20))
            err = []
            t = threading.Thread(target=_send_all, args=(c, msg, err), daemon=True)
            t.start()
            self.healthy()   # meanwhile
            r = c.read_reply(15)
            t.join(15)
            self.sent[tok] = r
            check_reply(r, 451, "4.4.2")
            self.assertEqual(err, [])
            # It failed in the data phase (data_block), not waiting for the
            # reply to a dot that got through.
            self.assertIn("message refused: backend lost", self.gw.log_since(off))
            self.backend.release()
            c.expect(250, line="RSET")
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend stalls mid-DATA", one, 5)

    def test_close_after_354(self):
        def one():
            self.backend.plan(Script(DATA=(b"354 go ahead\r\n", CLOSE)))
            tok = token()
            c = self.client()
            self.to_data(c, tok)
            r = self.final(c, tok)
            check_reply(r, 451, "4.4.2")
            # The session goes on: its next transaction opens a new backend
            # connection.
            r2 = c.transaction(SENDER, [RCPT], message(tok + "b"))
            self.sent[tok + "b"] = r2
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend closes after 354", one, 20)

    def test_close_after_dot_unanswered(self):
        # The duplicate risk: the backend had the whole message and may
        # have queued it; the client is told 451, so it retries.
        def one():
            tok = token()
            c, r = self.fault_session(Script(DOT=CLOSE), "DOT", tok)
            check_reply(r, 451, "4.4.2")
            self.assertEqual(self.backend.unanswered_count(tok), 1)
            self.assertEqual(self.backend.count(tok), 0)
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend closes after the dot, no reply", one, 20)

    def test_no_reply_to_dot(self):
        def one():
            tok = token()
            c, r = self.fault_session(Script(DOT=HANG), "DOT", tok)
            check_reply(r, 451, "4.4.2")
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend silent after the dot", one, 10)

    def test_garbage_replies(self):
        # Each is answered 451 4.4.2 (the backend is lost), never passed on.
        cases = [
            ("MAIL", b"hello world\r\n"),                    # no code
            ("MAIL", b"2x0 Ok\r\n"),                         # not numeric
            ("MAIL", b"099 Ok\r\n"),                         # no such class
            ("RCPT", b"250-first\r\n251 second\r\n"),        # codes differ
            ("RCPT", b"250 " + b"x" * 2100 + b"\r\n"),       # over the buffer
            ("RCPT", (b"250-" + b"z" * 400 + b"\r\n") * 6 + b"250 Ok\r\n"),  # ditto, lines
            ("DATA", b"35\r\n"),                             # short code
            ("DOT", b"hello\r\n"),                           # no code at the end
        ]
        self.batch("garbage replies (8 kinds)", lambda: self.each_reply_lost(cases), 5)

    def test_wrong_codes(self):
        # Well-formed replies with a code that does not fit the command.
        cases = [
            ("MAIL", b"354 go ahead\r\n"),
            ("RCPT", b"354 go ahead\r\n"),
            ("DATA", b"250 2.0.0 Ok\r\n"),
            ("DOT", b"354 more please\r\n"),
        ]
        self.batch("wrong reply codes (4 kinds)", lambda: self.each_reply_lost(cases), 5)

    def test_long_reply_line(self):
        # A reply line over 512 octets (RFC 5321 4.5.3.1.5) is a protocol
        # error of the backend.
        def one():
            self.backend.plan(Script(RCPT=(b"250 2.1.5 " + b"y" * 600 + b"\r\n", HANG)))
            c = self.client()
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            r = c.expect(451, "4.4.2", line="RCPT TO:<%s>" % RCPT)
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("reply line over 512 octets", one, 20)

    def test_replies_byte_by_byte(self):
        def one():
            self.backend.plan(Script(split="bytewise"))
            tok = token()
            c = self.client()
            self.to_data(c, tok)
            r = self.final(c, tok)
            self.assertEqual(r.raw, b"250 2.0.0 Ok: queued as %s\r\n" % tok.encode())
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("replies sent byte by byte", one, 20)

    def test_multiline_split_across_packets(self):
        reply = b"250-2.1.5 first line\r\n250-2.1.5 second line\r\n250 2.1.5 Ok\r\n"
        def one():
            self.backend.plan(Script(split="lines", RCPT=reply))
            tok = token()
            c = self.client()
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            r = c.cmd("RCPT TO:<%s>" % RCPT)
            self.assertEqual(r.raw, reply)
            c.expect(354, line="DATA")
            self.sent[tok] = None
            r2 = self.final(c, tok)
            check_reply(r2, 250)
            c.expect(221, line="QUIT")
            return "RCPT: 3 lines verbatim"
        self.batch("multi-line reply split across packets", one, 10)

    def test_421_mid_session(self):
        # The backend says 421 to RCPT and closes: the client is told the
        # backend was lost, and its session goes on.
        def one():
            self.backend.plan(Script(RCPT=(b"421 4.4.2 backend.test Error: timeout "
                                           b"exceeded\r\n", CLOSE)))
            tok = token()
            c = self.client()
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            r = c.expect(451, "4.4.2", line="RCPT TO:<%s>" % RCPT)
            c.expect(250, line="RSET")
            r2 = c.transaction(SENDER, [RCPT], message(tok))
            self.sent[tok] = r2
            c.expect(221, line="QUIT")
            return _short(r)
        self.batch("backend 421 mid-session", one, 20)


def _send_all(c, data, err):
    try:
        c.send(data)
    except OSError as e:
        err.append(e)


# ---------------------------------------------------------------------------
# The client goes away
# ---------------------------------------------------------------------------


class ClientFaults(FaultCase):
    """The client disconnects at every stage, or half-closes."""

    def gone(self, stage):
        tok = token()
        c = self.client(ehlo=stage != "connect", greet=stage != "connect")
        n = self.backend.connections
        held = self.backend.held
        if stage in ("mail", "rcpt", "data", "dot"):
            self.sent[tok] = None
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            self.backend.wait_connections(n + 1)
        if stage in ("rcpt", "data", "dot"):
            c.expect(250, line="RCPT TO:<%s>" % RCPT)
        if stage == "data":
            c.expect(354, line="DATA")
            c.send(message(tok)[:200])
        if stage == "dot":
            c.expect(354, line="DATA")
            c.send(dot_stuff(message(tok)))
            # The backend has the dot and holds its 250 back.
            self.backend.wait_for(lambda: self.backend.held > held, TIMEOUT, "the dot held")
        quits = self.backend.quits
        c.close()
        if stage == "dot":
            # The gateway waits for the backend's 250 and ends the backend
            # session with QUIT: the message is there once, and the client
            # (who got no 250) may send it again.
            self.backend.release()
            self.backend.wait_accepted(tok)
            self.backend.wait_for(lambda: self.backend.quits > quits, TIMEOUT, "QUIT")
            self.expect[tok] = 1
        return "closed"

    def run_stage(self, stage, reps=20):
        if stage == "dot":
            def one():
                self.backend.plan(Script(DOT=HOLD))
                return self.gone(stage)
        else:
            def one():
                return self.gone(stage)
        self.batch("client gone after %s" % stage, one, reps)

    def test_gone_after_connect(self):
        self.run_stage("connect")

    def test_gone_after_ehlo(self):
        self.run_stage("ehlo")

    def test_gone_after_mail(self):
        self.run_stage("mail")

    def test_gone_after_rcpt(self):
        self.run_stage("rcpt")

    def test_gone_mid_data(self):
        before = self.backend.aborted
        self.run_stage("data")
        self.assertEqual(self.backend.aborted - before, 21)

    def test_gone_after_dot(self):
        self.run_stage("dot")

    def test_half_close_after_quit(self):
        # Everything up to QUIT sent, then SHUT_WR: every reply still comes.
        def one():
            tok = token()
            c = self.client()
            self.to_data(c, tok)
            c.send(dot_stuff(message(tok)) + b"QUIT\r\n")
            c.sock.shutdown(socket.SHUT_WR)
            r = c.read_reply()
            self.sent[tok] = r
            self.assertEqual(r.raw, b"250 2.0.0 Ok: queued as %s\r\n" % tok.encode())
            c.expect(221)
            self.assertEqual(c.wait_closed(), b"")
            return _short(r)
        self.batch("client half-closes after QUIT", one, 20)

    def test_half_close_pipelined(self):
        # A pipelined envelope, then SHUT_WR: the replies come, then EOF.
        def one():
            c = self.client()
            c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nNOOP\r\n" % (SENDER, RCPT))
            c.sock.shutdown(socket.SHUT_WR)
            codes = [c.read_reply().code for _ in range(3)]
            self.assertEqual(codes, [250, 250, 250])
            self.assertEqual(c.wait_closed(), b"")
            return "250 250 250, EOF"
        self.batch("client half-closes mid-envelope", one, 20)


# ---------------------------------------------------------------------------
# Redis stalls and dies, with rate limits
# ---------------------------------------------------------------------------


def wait_redis_ready(gw, server, since=0, timeout=10.0):
    rx = re.compile(r"ratelimit store=.* redis=127\.0\.0\.1:%d (connected|available again)"
                    % server.port)
    wait_until(lambda: rx.search(gw.log_since(since)), timeout,
               "the gateway's Redis connection (log)")


class RedisFaults(FaultCase):
    """A rate limit in Redis; the redis-server is stopped (SIGSTOP) or
    killed (SIGKILL) in the middle of a session."""

    ON_ERROR = "allow"
    POLICY = {"rate_limits": [{"name": "msgs", "key": "client_ip", "count": "messages",
                               "limit": 100000, "window": "60s"}]}

    @classmethod
    def extra_setup(cls):
        cls.redis = RedisServer()
        cls.addClassCleanup(cls.redis.cleanup)
        cls.redis.start()

    @classmethod
    def gw_overrides(cls):
        over = dict(OVERRIDES)
        over["redis"] = {"address": cls.redis.addr, "key_prefix": "f%d:" % os.getpid(),
                         "timeout": "100ms", "on_error": cls.ON_ERROR}
        return over

    def setUp(self):
        super().setUp()
        off = 0
        if not self.redis.running():
            off = self.gw.log_size()
            self.redis.restart()
        wait_redis_ready(self.gw, self.redis, since=off, timeout=15)

    def fault(self, kind):
        """A session is in its transaction when Redis fails; more sessions
        come during the outage; then Redis comes back."""
        off = self.gw.log_size()
        pid = self.gw.pid
        fd0 = self.settle()
        rss0 = rss_kb(pid)
        tok = token()
        c = self.client()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        if kind == "stop":
            self.redis.pause()
        else:
            self.redis.kill()
        try:
            mid = self.during(c, tok)
            for _ in range(10):
                c2 = self.client()
                new = self.during(c2, token(), mail=True)
            seen = "in tx: %s; new: %s" % (mid[:3], new)
        finally:
            if kind == "stop":
                self.redis.resume()
            else:
                self.redis.restart()
        wait_redis_ready(self.gw, self.redis, since=off, timeout=15)
        self.healthy()
        fd1 = self.settle(fd0)
        rss1 = rss_kb(pid)
        self.record("redis %s, on_error %s" % ("SIGSTOP" if kind == "stop" else "SIGKILL",
                                              self.ON_ERROR), seen, 11, fd0, fd1, rss0, rss1)
        self.assertEqual(fd1, fd0)
        if not SANITIZED:
            self.assertLessEqual(rss1 - rss0, RSS_TOLERANCE_KB)
        self.check_messages()

    def during(self, c, tok, mail=False):
        """One transaction while Redis is down: 250 with allow.  With
        tempfail, a new transaction's MAIL gets 451 4.3.0; one whose MAIL
        passed before the outage gets 250, or 451 4.3.0 at a later step."""
        self.sent[tok] = None
        try:
            if mail:
                r = c.cmd("MAIL FROM:<%s>" % SENDER)
                if r.code != 250 or self.ON_ERROR == "tempfail":
                    return self.refused(c, r)
            r = c.cmd("RCPT TO:<%s>" % RCPT)
            if r.code != 250:
                return self.refused(c, r)
            r = c.cmd("DATA")
            if r.code != 354:
                return self.refused(c, r)
            r = self.final(c, tok)
            if r.code != 250:
                return self.refused(c, r)
            c.expect(221, line="QUIT")
            return _short(r)
        finally:
            c.close()

    def refused(self, c, r):
        self.assertEqual(self.ON_ERROR, "tempfail", "refused with on_error allow: %s" % (r,))
        check_reply(r, 451, "4.3.0")
        c.expect(221, line="QUIT")
        return _short(r)

    def test_redis_stopped(self):
        self.fault("stop")

    def test_redis_killed(self):
        self.fault("kill")


class RedisFaultsTempfail(RedisFaults):
    ON_ERROR = "tempfail"


def tearDownModule():
    if not RESULTS:
        return
    head = ("case", "client saw", "reps", "250/backend/unanswered", "fds", "VmRSS kB")
    rows = [head] + [tuple(str(x) for x in r) for r in RESULTS]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["", "fault cases (%s build; RSS tolerance %d kB%s):"
           % ("sanitizer" if SANITIZED else "optimised", RSS_TOLERANCE_KB,
              ", not asserted" if SANITIZED else "")]
    for r in rows:
        out.append("  " + "  ".join(r[i].ljust(w[i]) for i in range(len(head))))
    sys.stderr.write("\n".join(out) + "\n")


if __name__ == "__main__":
    unittest.main()
