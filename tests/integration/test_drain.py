#!/usr/bin/env python3
"""
test_drain.py: SIGTERM while mail flows through the gateway into a private,
real Postfix.

Several senders of our own keep sending (a few transactions per
connection) and record what every message got.  Mid-run the gateway gets
SIGTERM; then:
  - every message that got 250 at the client is in Postfix's log with the
    queue id the client saw, and Postfix queued no message of ours that the
    client was not told 250 for (nothing lost, nothing duplicated);
  - every other outcome is 421 4.3.2 (a session between transactions, or
    one whose transaction finished) or a refused connection (the listener
    is closed);
  - the gateway exits by itself, with status 0, within timeouts.drain.
"""

import os
import re
import select
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ConnectionClosed, Gateway, PrivatePostfix, SmtpClient, dot_stuff, make_message,
    show_log_tail, wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
QUEUED_RX = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)\r\n$")
DRAIN = 20          # timeouts.drain, seconds
SENDERS = 6
PER_CONNECTION = 3  # transactions per connection


def _msgid(msg):
    return re.search(rb"^Message-ID: <([^>]+)>", msg, re.M).group(1).decode()


class Outcomes:
    """What each sender saw, under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.accepted = {}      # Message-ID -> Postfix queue id (from the 250)
        self.other = []         # (stage, reply text or error) of every other end

    def accept(self, msgid, qid):
        with self.lock:
            self.accepted[msgid] = qid

    def end(self, stage, what):
        with self.lock:
            self.other.append((stage, what))

    def naccepted(self):
        with self.lock:
            return len(self.accepted)


class Sender(threading.Thread):
    """Sends until its session ends otherwise than by its own QUIT (421,
    refused, an error) after stop_after is set, or at once on an error
    before it."""

    def __init__(self, port, idx, out, stop_after):
        super().__init__(daemon=True)
        self.port, self.idx, self.out, self.stop_after = port, idx, out, stop_after

    def _cmd(self, c, stage, line, want):
        # A 421 sent between transactions is read before the next command.
        if not select.select([c.sock], [], [], 0)[0]:
            c.sendline(line)
        r = c.read_reply(30)
        if r.code != want:
            self.out.end(stage, r.raw.decode("utf-8", "replace").strip())
            return None
        return r

    def _session(self):
        try:
            c = SmtpClient(self.port, source_addr="127.0.0.%d" % (10 + self.idx)).connect()
        except OSError as e:
            self.out.end("connect", type(e).__name__)
            return False
        stage = "greeting"
        try:
            r = c.read_reply(30)
            if r.code != 220:
                self.out.end(stage, r.raw.decode().strip())
                return False
            stage = "EHLO"
            if not self._cmd(c, stage, "EHLO sender%d.client.example.test" % self.idx, 250):
                return False
            for _ in range(PER_CONNECTION):
                msg = make_message(subject="drain test")
                stage = "MAIL"
                if not self._cmd(c, stage, "MAIL FROM:<%s>" % SENDER, 250):
                    return False
                stage = "RCPT"
                if not self._cmd(c, stage, "RCPT TO:<%s>" % RCPT, 250):
                    return False
                stage = "DATA"
                if not self._cmd(c, stage, "DATA", 354):
                    return False
                stage = "end of data"
                c.send(dot_stuff(msg))
                r = c.read_reply(60)
                m = QUEUED_RX.match(r.raw.decode("utf-8", "replace"))
                if not m:
                    self.out.end(stage, r.raw.decode("utf-8", "replace").strip())
                    return False
                self.out.accept(_msgid(msg), m.group(1))
            stage = "QUIT"
            r = c.cmd("QUIT", 30)
            if r.code != 221:
                self.out.end(stage, r.raw.decode().strip())
                return False
            return True
        except (OSError, ConnectionClosed) as e:
            self.out.end(stage, "%s: %s" % (type(e).__name__, e))
            return False
        finally:
            c.close()

    def run(self):
        while self._session() or not self.stop_after.is_set():
            if self.out.other and not self.stop_after.is_set():
                return      # an error before the drain: the test fails on it
        return


class DrainUnderLoad(unittest.TestCase):

    def setUp(self):
        self.postfix = PrivatePostfix()
        self.addCleanup(self.postfix.cleanup)
        self.postfix.start()
        self.gw = Gateway([self.postfix.addr], {
            "workers": 2, "log_level": "info",
            "timeouts": {"drain": "%ds" % DRAIN}}, name="drain")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def test_sigterm_mid_run_loses_nothing(self):
        out = Outcomes()
        signalled = threading.Event()
        senders = [Sender(self.gw.port, i, out, signalled) for i in range(SENDERS)]
        for s in senders:
            s.start()
        try:
            # Mid-run: once some mail went through (and the senders are busy).
            wait_until(lambda: out.naccepted() >= 20 or out.other, 60, "20 messages relayed")
            self.assertEqual(out.other, [], "errors before SIGTERM")
            # One more transaction, in the middle of its message data.
            c = SmtpClient(self.gw.port, source_addr="127.0.0.9").connect()
            self.addCleanup(c.close)
            c.greet()
            c.ehlo()
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            c.expect(250, line="RCPT TO:<%s>" % RCPT)
            c.expect(354, line="DATA")
            msg = dot_stuff(make_message(subject="in flight at SIGTERM"))
            c.send(msg[:40])
            self.gw.signal(15)
            signalled.set()
            t0 = time.monotonic()
            # It finishes: 250 with Postfix's queue id, then 421 4.3.2.
            c.send(msg[40:])
            r = c.read_reply(30)
            m = QUEUED_RX.match(r.raw.decode())
            self.assertIsNotNone(m, str(r))
            out.accept(_msgid(msg), m.group(1))
            c.expect(421, "4.3.2")
            self.assertEqual(c.wait_closed(), b"")
            status = self.gw.wait_exit(DRAIN + 5)
            took = time.monotonic() - t0
        except BaseException:
            show_log_tail(self.gw, self.id())
            raise
        finally:
            signalled.set()
            for s in senders:
                s.join(60)
        self.assertEqual(status, 0, self.gw.log[-2000:])
        self.assertLess(took, DRAIN, "the drain ran into its timeout")
        self.assertNotIn("drain timeout", self.gw.log)

        # Every other outcome is the shutdown's 421 4.3.2 or a connection
        # refused (or reset before its greeting: it was in the backlog of
        # a listener that closed).
        bad = [(st, w) for st, w in out.other
               if not (w.startswith("421 4.3.2") or
                       (st == "connect" and w == "ConnectionRefusedError") or
                       (st == "greeting" and w.startswith(("ConnectionResetError",
                                                           "ConnectionClosed"))))]
        self.assertEqual(bad, [], "outcomes other than 421 4.3.2 and refused connections")
        self.assertTrue(any(w.startswith("421 4.3.2") for _, w in out.other), out.other)

        # Postfix has exactly the messages the clients were told 250 for,
        # under the queue ids they were told.
        want = dict(out.accepted)
        rx = re.compile(r"\b([0-9A-Za-z]+): message-id=<([^>]+@client\.example\.test)>")

        def logged():
            got = {m.group(2): m.group(1) for m in rx.finditer(self.postfix.read_log())}
            return got if set(want) <= set(got) else None
        try:
            got = wait_until(logged, 30, "Postfix logging every accepted message")
        except TimeoutError:
            got = {m.group(2): m.group(1) for m in rx.finditer(self.postfix.read_log())}
            self.fail("accepted by the gateway, not in Postfix's log: %s"
                      % sorted(set(want) - set(got)))
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main()
