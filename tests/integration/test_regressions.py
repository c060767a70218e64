#!/usr/bin/env python3
"""Regressions: bugs found in review (commit 8854a51), one behaviour each.

  StaleFilterAnswer   a rate-limit answer from Redis outliving its RCPT
                      (the backend refused the pipelined MAIL meanwhile)
                      must not abort the process at the next command
  ClientNeverReads    a client pipelining backend commands that never reads
                      its replies is closed by the command timeout
  UnsolicitedReply    a backend's "421 ... timeout" in an open transaction
                      is a lost backend: 451 4.4.2 at once, not a hang,
                      also when it comes in the same read as MAIL's 250
  BackendReplyTimer   a hung backend is timed out even while the client
                      keeps sending bytes
  PipelinedRefusal    a refused MAIL's reply does not end the next
                      transaction pipelined behind RSET

Each test starts its own gateway in front of a RecordingBackend of its own
(some tests change how the backend answers); the Redis-backed ones share a
redis-server per class, with a key prefix per gateway."""

import itertools
import os
import re
import select
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Gateway, RecordingBackend, RedisServer, SmtpClient, _failure_count, check_reply,
    dot_stuff, make_message, show_log_tail, wait_until,
)

SENDER = "sender@client.example.test"
REFUSED = "refused@client.example.test"
REFUSED_REPLY = "550 5.7.1 <%s>: Sender address rejected: Access denied" % REFUSED
RCPT = "user@example.test"
TIMEOUT = 5.0   # every reply is awaited this long at most, unless told

# What fatalx() logs just before abort(), and words of a crash report.
FATAL_RX = re.compile(r"(?i)fatal|abort|stage \w+ while \w+ is in progress")

_prefixes = itertools.count(1)


class RegressionCase(unittest.TestCase):
    """Base: a RecordingBackend and a gateway (OVERRIDES, POLICY) per test,
    started by self.start(); tearDown asserts the gateway is still alive
    and printed no sanitizer report, and shows its log on failure."""

    OVERRIDES = {}
    POLICY = None

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = None
        self._failed_before = _failure_count(self)

    def start(self, overrides=None):
        """Starts the test's gateway (OVERRIDES updated with overrides)."""
        over = dict(self.OVERRIDES)
        over.update(overrides or {})
        self.gw = Gateway([self.backend.addr], over, name="regress", policy=self.POLICY)
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()
        return self.gw

    def tearDown(self):
        if self.gw is None:
            return
        alive = self.gw.running()
        if not alive or _failure_count(self) != self._failed_before:
            show_log_tail(self.gw, self.id())
        self.assertIsNone(self.gw.sanitizer_report(), "sanitizer report in the gateway log")
        self.assertTrue(alive, "gateway died during the test (status %s)"
                        % self.gw.proc.returncode)

    def client(self, ehlo=True, source="127.0.0.1", timeout=TIMEOUT):
        c = self.gw.client(source_addr=source, timeout=timeout)
        self.addCleanup(c.close)
        if ehlo:
            c.ehlo()
        return c

    def assert_serves(self, sender=SENDER, rcpt=RCPT):
        """A new session delivers a message, byte for byte."""
        self.assertTrue(self.gw.running(), "gateway is not running")
        before = len(self.backend.messages)
        msg = make_message(subject="after")
        c = self.client()
        final = c.transaction(sender, [rcpt], msg)
        m = self.backend.wait_messages(before + 1)[-1]
        self.assertEqual(final.text, "2.0.0 Ok: queued as " + m.queue_id)
        self.assertEqual(m.data, dot_stuff(msg))
        c.expect(221, line="QUIT")
        c.wait_closed()

    def read_replies(self, c, n, timeout=TIMEOUT):
        """n replies, each within timeout."""
        return [c.read_reply(timeout) for _ in range(n)]


def _codes(replies):
    return [r.code for r in replies]


# ---------------------------------------------------------------------------
# 1. A filter answer outliving its command
# ---------------------------------------------------------------------------


class StaleFilterAnswer(RegressionCase):
    """A recipients limit (checked in Redis at RCPT) while the backend
    refuses the pipelined MAIL: the RCPT is answered 503 with its Redis
    check still pending, and the next command starts a filter stage."""

    POLICY = {"rate_limits": [{"name": "rcpts-per-sender", "key": "sender",
                               "count": "recipients", "limit": 1000000,
                               "window": "60s"}]}

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer()
        cls.addClassCleanup(cls.redis.cleanup)
        cls.redis.start()

    def setUp(self):
        super().setUp()
        self.backend.mail_replies = {REFUSED: REFUSED_REPLY}
        # Each round below costs the session two errors (550, 503).
        self.start({"limits": {"max_errors": 1000000},
                    "redis": {"address": self.redis.addr,
                              "key_prefix": "rg%d-%d:" % (os.getpid(), next(_prefixes)),
                              "timeout": "3s", "on_error": "allow"}})
        rx = re.compile(r"ratelimit store=.* redis=127\.0\.0\.1:%d (connected|available again)"
                        % self.redis.port)
        wait_until(lambda: rx.search(self.gw.log), 10, "the gateway's Redis connection (log)")
        self.off = self.gw.log_size()

    def assert_no_fatal(self):
        log = self.gw.log_since(self.off)
        m = FATAL_RX.search(log)
        self.assertIsNone(m, "fatal error in the gateway log:\n" + log[-3000:])

    def test_late_redis_answer_after_refused_mail(self):
        c = self.client()
        # Redis holds every command (ours included) for a second: the
        # RCPT's check is pending when the backend's 550 to MAIL comes.
        self.assertEqual(self.redis.command("CLIENT", "PAUSE", "1000", "ALL"), "OK")
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nHELO client.example.test\r\n"
               "MAIL FROM:<%s>\r\n" % (REFUSED, RCPT, SENDER))
        got = self.read_replies(c, 4)
        self.assertEqual(_codes(got), [550, 503, 250, 250], [str(r) for r in got])
        self.assertEqual(got[0].text, REFUSED_REPLY[4:])
        # Answered once the pause is over, so after the stale answer: the
        # gateway's Redis connection is one ordered stream.
        self.assertEqual(self.redis.command("PING", timeout=5.0), "PONG")
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        c.expect(250)
        c.expect(221, line="QUIT")
        c.wait_closed()
        self.assert_serves()
        self.assert_no_fatal()

    def test_redis_answer_racing_refused_mail(self):
        # No pause: Redis's answer and the backend's refusal race, and one
        # or the other comes first each round.
        c = self.client()
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nHELO client.example.test\r\n"
                   % (REFUSED, RCPT))
            got = self.read_replies(c, 3)
            self.assertEqual(_codes(got), [550, 503, 250],
                             "round %d: %s" % (rounds, [str(r) for r in got]))
        self.assertGreater(rounds, 10)
        c.expect(221, line="QUIT")
        c.wait_closed()
        self.assert_serves()
        self.assert_no_fatal()


# ---------------------------------------------------------------------------
# 2. A client that never reads its replies
# ---------------------------------------------------------------------------


class ClientNeverReads(RegressionCase):
    OVERRIDES = {
        "timeouts": {"command": "2s", "data": "2s", "drain": "30s"},
        "backend": {"timeouts": {"connect": "2s", "greeting": "2s", "helo": "2s",
                                 "mail": "2s", "rcpt": "2s", "data_init": "2s",
                                 "data_block": "2s", "data_done": "2s"}},
    }

    SOURCE = "127.0.0.7"

    def test_pipelining_client_that_never_reads_is_closed(self):
        self.start()
        # Small buffers on our side, so that the gateway's replies back up
        # (and it stops reading) after a few thousand commands.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.bind((self.SOURCE, 0))
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", self.gw.port))
        sock.settimeout(None)
        c = SmtpClient(self.gw.port, timeout=TIMEOUT)
        c.sock = sock
        self.addCleanup(c.close)
        c.greet()
        c.ehlo()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        # RSETs until the gateway takes no more (a second without room),
        # reading nothing.
        sock.setblocking(False)
        chunk = b"RSET\r\n" * 2000
        sent = 0
        deadline = time.monotonic() + 15.0
        while True:
            self.assertLess(time.monotonic(), deadline,
                            "the gateway still reads after %d bytes" % sent)
            try:
                sent += sock.send(chunk)
                continue
            except BlockingIOError:
                pass
            _, w, _ = select.select([], [sock], [], 1.0)
            if not w:
                break
        sock.setblocking(True)
        self.assertGreater(sent, 6 * 1000, "the gateway stopped reading early")
        stalled = time.monotonic()
        # Closed within the command timeout and a little (timer slack).
        m = wait_until(lambda: re.search(r"session end session=\S+ client=%s .*"
                                         % re.escape(self.SOURCE), self.gw.log),
                       10.0, "the end of the session that never reads (log)")
        took = time.monotonic() - stalled
        self.assertLess(took, 8.0, m.group(0))
        # What was queued for us ends in a close.
        data = c.wait_closed(10.0)
        self.assertTrue(data.startswith(b"250 "), data[:100])
        self.assert_serves()


# ---------------------------------------------------------------------------
# 3. An unsolicited backend reply in a transaction
# ---------------------------------------------------------------------------


class UnsolicitedReply(RegressionCase):
    """The backend's own 421 (Postfix's idle timeout, say) and close while
    a transaction is open: the transaction is lost at once."""

    OVERRIDES = {"timeouts": {"command": "8s", "data": "8s", "drain": "30s"}}

    BYE = b"421 4.4.2 backend.test Error: timeout exceeded\r\n"

    def assert_lost_then_recovers(self, c):
        """RCPT and DATA of the open transaction get 451 4.4.2 well before
        the command timeout; the next transaction takes a new backend
        connection."""
        t0 = time.monotonic()
        r = c.cmd("RCPT TO:<%s>" % RCPT, timeout=3.0)
        took = time.monotonic() - t0
        check_reply(r, 451, "4.4.2", ctx="RCPT")
        self.assertLess(took, 2.0, "RCPT answered after %.2fs" % took)
        c.expect(451, "4.4.2", line="DATA")
        self.assertEqual(self.backend.messages, [])
        c.expect(250, line="RSET")
        msg = make_message()
        c.transaction(SENDER, [RCPT], msg)
        m = self.backend.wait_messages(1)[0]
        self.assertEqual(m.conn.index, 1)
        self.assertEqual(m.data, dot_stuff(msg))

    def test_421_after_mail_fails_transaction_at_once(self):
        self.start()
        c = self.client()
        off = self.gw.log_size()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        # MAIL's 250 has reached us: the 421 comes on its own, unasked.
        conn = self.backend.wait_connections(1)[0]
        conn.sock.sendall(self.BYE)
        conn.sock.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: "unsolicited reply" in self.gw.log_since(off), 5,
                   "the backend's 421 in the gateway log")
        self.assert_lost_then_recovers(c)

    # The 421 in the same read as MAIL's 250: no on_batch follows a closed
    # backend, so the session must write the queued 250 itself.
    def test_421_in_same_read_as_mail_reply(self):
        self.start()
        orig = self.backend._send

        def bye_with_mail_reply(conn, reply):
            if conn.index == 0 and conn.commands and \
                    conn.commands[-1].upper().startswith(b"MAIL"):
                conn.sock.sendall(b"250 2.1.0 Ok\r\n" + self.BYE)
                conn.sock.shutdown(socket.SHUT_RDWR)
                return
            orig(conn, reply)
        self.backend._send = bye_with_mail_reply

        c = self.client()
        c.sendline("MAIL FROM:<%s>" % SENDER)
        try:
            r = c.read_reply(3.0)
        except TimeoutError:
            self.fail("MAIL's 250 not relayed within 3s when the backend's 421 "
                      "came in the same read")
        check_reply(r, 250, ctx="MAIL")
        self.assert_lost_then_recovers(c)


# ---------------------------------------------------------------------------
# 4. The backend reply timer while the client sends
# ---------------------------------------------------------------------------


class BackendReplyTimer(RegressionCase):
    OVERRIDES = {"timeouts": {"command": "60s", "data": "60s", "drain": "30s"},
                 "backend": {"timeouts": {"rcpt": "2s"}}}

    def test_hung_backend_detected_while_client_trickles(self):
        self.start()
        # A backend that takes MAIL and never answers RCPT.
        orig = self.backend._send

        def no_rcpt_reply(conn, reply):
            if conn.commands and conn.commands[-1].upper().startswith(b"RCPT"):
                return
            orig(conn, reply)
        self.backend._send = no_rcpt_reply

        c = self.client(timeout=TIMEOUT)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        nxt = b"NOOP"           # the next command, a byte a second
        t0 = time.monotonic()
        c.sendline("RCPT TO:<%s>" % RCPT)
        trickled = 0
        while True:
            r, _, _ = select.select([c.sock], [], [], 1.0)
            if r:
                break
            self.assertLess(trickled, len(nxt),
                            "no reply to RCPT %.1fs after it while the client "
                            "sent a byte a second" % (time.monotonic() - t0))
            c.send(nxt[trickled:trickled + 1])
            trickled += 1
        r = c.read_reply(TIMEOUT)
        took = time.monotonic() - t0
        check_reply(r, 451, "4.4.2", "4.4.2 Error: backend timeout", ctx="RCPT")
        self.assertGreaterEqual(trickled, 1, "the reply came before any trickle")
        self.assertGreaterEqual(took, 1.5, "timed out after %.2fs, before rcpt: 2s" % took)
        self.assertLess(took, 5.0, "timed out after %.2fs (rcpt: 2s)" % took)
        # The session goes on with the command it was sent.
        c.send(nxt[trickled:] + b"\r\n")
        c.expect(250)


# ---------------------------------------------------------------------------
# 5. A refused MAIL, then another transaction in one pipeline
# ---------------------------------------------------------------------------


class PipelinedRefusal(RegressionCase):

    def test_second_transaction_after_refused_mail_and_rset(self):
        self.start()
        self.backend.mail_replies = {REFUSED: REFUSED_REPLY}
        c = self.client()
        c.send("MAIL FROM:<%s>\r\nRSET\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
               % (REFUSED, SENDER, RCPT))
        got = self.read_replies(c, 5)
        self.assertEqual(_codes(got), [550, 250, 250, 250, 354], [str(r) for r in got])
        self.assertEqual(got[0].text, REFUSED_REPLY[4:])
        msg = make_message()
        c.send(dot_stuff(msg))
        final = c.expect(250)
        m = self.backend.wait_messages(1)[0]
        self.assertEqual(final.text, "2.0.0 Ok: queued as " + m.queue_id)
        self.assertEqual(m.mail_from, SENDER)
        self.assertEqual(m.rcpts, [RCPT])
        self.assertEqual(m.data, dot_stuff(msg))


if __name__ == "__main__":
    unittest.main()
