#!/usr/bin/env python3
"""Rate limits: the policy's rate_limits (in process and in Redis), the
per-client limits of the main config (max_connections_per_client,
max_failures_per_client), and what happens when Redis fails.

Each store-dependent behaviour runs twice: against the in-process store
(no redis: in the config) and against a real redis-server of our own.  A
test starts its own gateway (its policy is the test's subject) in front of
a RecordingBackend shared by the class; Redis-backed gateways get a key
prefix of their own, so tests sharing one redis-server never see each
other's counters.  Times: windows are short where the test waits for them
to pass, and 60 s where nothing must expire during the test."""

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    CRLF, Gateway, RecordingBackend, RedisServer, dot_stuff, gateway_bin,
    make_message, show_log_tail, to_yaml, wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
HOST = "gate.example.test"   # the harness's hostname, named in 421s

_prefixes = itertools.count(1)


def limit(name, key="client_ip", count="messages", n=3, window="60s", **more):
    """One rate_limits entry."""
    d = {"name": name, "key": key, "count": count, "limit": n, "window": window}
    d.update(more)
    return d


def over_limit(rule):
    """The text of the 450/451 4.7.1 reply naming rule."""
    return "4.7.1 Error: rate limit exceeded (%s), try again later" % rule


def sized_message(size):
    """A message of exactly `size` bytes on the wire (before the final
    dot): the usual headers, then lines of 'x'."""
    msg = make_message(body_lines=[])
    assert len(msg) + 3 <= size, "size %d is below the headers" % size
    left = size - len(msg)
    assert left == 0 or left >= 3, "no line of %d bytes" % left
    lines = []
    while left > 0:
        n = min(78, left)
        if left - n in (1, 2):      # keep the last line at 3 bytes or more
            n = left - 3
        lines.append(b"x" * (n - 2) + CRLF)
        left -= n
    out = msg + b"".join(lines)
    assert len(out) == size, (len(out), size)
    return out


class RateLimitCase(unittest.TestCase):
    """Base: a RecordingBackend per class, and for STORE == "redis" a
    redis-server per class; gateways per test (self.gateway())."""

    STORE = "mem"
    TIMEOUT = 5.0   # every reply is awaited this long at most

    @classmethod
    def setUpClass(cls):
        cls.backend = RecordingBackend()
        cls.addClassCleanup(cls.backend.stop)
        cls.redis = None
        if cls.STORE == "redis":
            cls.redis = RedisServer()
            cls.addClassCleanup(cls.redis.cleanup)
            cls.redis.start()

    def setUp(self):
        self.gws = []
        self.backend.rcpt_replies = {}
        self.backend.mail_replies = {}
        self.backend.data_reply = None
        self.backend.fault = None
        self._failed_before = _failures(self)

    def tearDown(self):
        failed = _failures(self) != self._failed_before
        for gw in self.gws:
            if failed or not gw.running():
                show_log_tail(gw, self.id())
            self.assertIsNone(gw.sanitizer_report(), "sanitizer report in the gateway log")
            if gw.proc is not None:
                self.assertTrue(gw.running() or gw.terminating,
                                "gateway died during the test (status %s)" % gw.proc.returncode)

    # -- gateways ----------------------------------------------------------

    def redis_block(self, server, **more):
        """The redis: block for server with a key prefix of this gateway's
        own."""
        d = {"address": server.addr, "key_prefix": "t%d-%d:" % (os.getpid(), next(_prefixes)),
             "timeout": "50ms", "on_error": "allow"}
        d.update(more)
        return d

    def gateway(self, rate_limits=(), policy=None, overrides=None, redis=None,
                redis_opts=None, start=True):
        """Starts a gateway in front of the class backend with a policy of
        rate_limits (plus `policy`), and returns it once its store is
        ready.  The store is Redis (redis, else the class's server) for
        STORE == "redis", else the in-process one."""
        pol = dict(policy or {})
        if rate_limits:
            pol["rate_limits"] = list(rate_limits)
        over = dict(overrides or {})
        server = redis or self.redis
        if server is not None:
            over["redis"] = self.redis_block(server, **(redis_opts or {}))
        gw = Gateway([self.backend.addr], over, name="rl", policy=pol)
        self.gws.append(gw)
        self.addCleanup(gw.stop_and_check)
        if start:
            gw.start()
            if server is not None:
                wait_redis_ready(gw, server)
        return gw

    def client(self, gw, source="127.0.0.2", ehlo=True, greet=True, timeout=None):
        c = gw.client(source_addr=source, greet=greet,
                      timeout=self.TIMEOUT if timeout is None else timeout)
        self.addCleanup(c.close)
        if ehlo:
            c.ehlo()
        return c

    def send(self, c, sender=SENDER, rcpts=(RCPT,), message=None):
        """A whole transaction whose MAIL, RCPTs and DATA must pass; returns
        the final reply (not checked)."""
        c.expect(250, line="MAIL FROM:<%s>" % sender)
        for r in rcpts:
            c.expect(250, line="RCPT TO:<%s>" % r)
        c.expect(354, line="DATA")
        c.send(dot_stuff(message if message is not None else make_message()))
        return c.read_reply()

    def mail_until(self, c, code, timeout, sender=SENDER):
        """Sends MAIL until the reply has `code` (250 or 450), with RSET
        after each 250; the replies before it must be the other of the two.
        Returns (reply, number of replies before it).  Fails after
        `timeout` seconds."""
        other = 450 if code == 250 else 250
        deadline = time.monotonic() + timeout
        before = 0
        while True:
            r = c.cmd("MAIL FROM:<%s>" % sender)
            if r.code == code:
                return r, before
            self.assertEqual(r.code, other, str(r))
            before += 1
            if r.code == 250:
                c.expect(250, line="RSET")
            if time.monotonic() > deadline:
                self.fail("no %d to MAIL within %.1fs (%d x %d before)"
                          % (code, timeout, before, other))
            time.sleep(0.05)  # the state changes with time; nothing to await

    def assert_exact_limit(self, c, n, rule):
        """n MAILs pass (RSET after each) and the next gets 450 naming rule."""
        for i in range(n):
            r = c.cmd("MAIL FROM:<%s>" % SENDER)
            self.assertEqual(r.code, 250, "MAIL %d of %d: %s" % (i + 1, n, r))
            c.expect(250, line="RSET")
        c.expect(450, "4.7.1", over_limit(rule), line="MAIL FROM:<%s>" % SENDER)


def _failures(tc):
    res = getattr(getattr(tc, "_outcome", None), "result", None)
    if res is None:
        return 0
    return len(res.failures) + len(res.errors)


def wait_redis_ready(gw, server, since=0, timeout=10.0):
    """Waits until every worker of gw logged its Redis connection ready
    (connected, or available again) after log offset since."""
    rx = re.compile(r"ratelimit store=.* redis=127\.0\.0\.1:%d (connected|available again)"
                    % server.port)
    want = gw.config.get("workers", 1) or 1

    def ready():
        return len(rx.findall(gw.log_since(since))) >= want
    wait_until(ready, timeout, "the gateway's Redis connection (log)")


# ---------------------------------------------------------------------------
# The policy's rate_limits, on both stores
# ---------------------------------------------------------------------------


class _Limits:
    """Tests run against each store (mixed into a RateLimitCase)."""

    def test_messages_burst_then_refused(self):
        gw = self.gateway([limit("msgs-per-ip", n=3, window="60s")])
        c = self.client(gw)
        before = len(self.backend.messages)
        for i in range(3):
            final = self.send(c)
            self.assertEqual(final.code, 250, "message %d: %s" % (i + 1, final))
        c.expect(450, "4.7.1", over_limit("msgs-per-ip"), line="MAIL FROM:<%s>" % SENDER)
        # Refused at MAIL: no transaction is open.
        c.expect(503, line="RCPT TO:<%s>" % RCPT)
        self.assertEqual(len(self.backend.messages) - before, 3)

    def test_messages_pass_again_after_interval(self):
        window, n = 2.0, 3
        interval = window / n
        gw = self.gateway([limit("msgs-per-ip", n=n, window="2s")])
        c = self.client(gw)
        t_first = time.monotonic()
        for i in range(n):
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
            c.expect(250, line="RSET")
        c.expect(450, "4.7.1", over_limit("msgs-per-ip"), line="MAIL FROM:<%s>" % SENDER)
        t_refused = time.monotonic()
        self.mail_until(c, 250, window + 2.0)
        t_pass = time.monotonic()
        # GCRA: the next passes once T = W / N has gone by since the first.
        self.assertGreaterEqual(t_pass, t_first + interval - 0.05,
                                "passed %.3fs after the first message, T is %.3fs"
                                % (t_pass - t_first, interval))
        self.assertLessEqual(t_pass, t_refused + window + 1.0)
        c.expect(250, line="RSET")
        # ... and only that one: the next is refused again.
        c.expect(450, "4.7.1", over_limit("msgs-per-ip"), line="MAIL FROM:<%s>" % SENDER)

    def test_full_burst_again_after_idle_window(self):
        window = 1.0
        gw = self.gateway([limit("msgs-per-ip", n=3, window="1s")])
        c = self.client(gw)
        self.assert_exact_limit(c, 3, "msgs-per-ip")
        # Waiting for time itself to pass is the behaviour under test.
        time.sleep(window + 0.1)
        self.assert_exact_limit(c, 3, "msgs-per-ip")

    def test_recipients_over_limit(self):
        gw = self.gateway([limit("rcpts-per-ip", count="recipients", n=3)])
        c = self.client(gw)
        before = len(self.backend.messages)
        rcpts = ["r%d@example.test" % i for i in range(4)]
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        for r in rcpts[:3]:
            c.expect(250, line="RCPT TO:<%s>" % r)
        c.expect(450, "4.7.1", over_limit("rcpts-per-ip"), line="RCPT TO:<%s>" % rcpts[3])
        # The transaction goes on with the three accepted.
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        c.expect(250)
        msgs = self.backend.messages[before:]
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0].rcpts, rcpts[:3])

    def test_pipelined_envelope_forwarded_as_sent(self):
        # Limits at MAIL and at each RCPT: every command waits for its
        # check (Redis: an answer later) with the rest of the pipeline in
        # the input buffer behind it, then goes on with what it parsed.
        gw = self.gateway([limit("msgs-per-sender", key="sender", n=100),
                           limit("rcpts-per-rcpt", key="recipient",
                                 count="recipients", n=100)])
        c = self.client(gw)
        before = len(self.backend.messages)
        rcpts = ["r%d@example.test" % i for i in range(6)]
        lines = ["MAIL FROM:<%s> SIZE=1000 BODY=8BITMIME" % SENDER]
        lines += ["RCPT TO:<%s> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;%s" % (r, r)
                  for r in rcpts]
        lines.append("DATA")
        c.send(b"".join(l.encode() + b"\r\n" for l in lines))
        for l in lines[:-1]:
            r = c.read_reply()
            self.assertEqual(r.code, 250, "%s: %s" % (l, r))
        c.expect(354)
        c.send(dot_stuff(make_message()))
        c.expect(250)
        msgs = self.backend.messages[before:]
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0].mail_from, SENDER.lower())
        self.assertIn(b"SIZE=1000", msgs[0].mail_line)
        self.assertEqual(msgs[0].rcpts, rcpts)
        for r, line in zip(rcpts, msgs[0].rcpt_lines):
            self.assertIn(("ORCPT=rfc822;%s" % r).encode(), line)

    def test_connections_over_limit(self):
        gw = self.gateway([limit("conn-per-ip", count="connections", n=2,
                                 match={"client": "127.0.0.2"})])
        self.client(gw, ehlo=False)
        self.client(gw, ehlo=False)
        c = self.client(gw, greet=False, ehlo=False)
        c.expect(421, "4.7.0", "4.7.0 %s Error: too many connections from 127.0.0.2 "
                 "(conn-per-ip), try again later" % HOST)
        self.assertEqual(c.wait_closed(), b"")

    def test_bytes_over_remaining_budget(self):
        gw = self.gateway([limit("bytes-per-ip", count="bytes", n=4000)])
        c = self.client(gw)
        before = len(self.backend.messages)
        nconn = len(self.backend.connections)
        self.assertEqual(self.send(c, message=sized_message(1000)).code, 250)
        # 3000 bytes left: 3500 are refused at the final dot ...
        big = sized_message(3500)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(big))
        c.expect(451, "4.7.1", over_limit("bytes-per-ip"))
        # ... and the backend never got their final dot.
        conns = self.backend.connections[nconn:]
        self.backend.wait_closed(conns)
        self.assertEqual(len(self.backend.messages) - before, 1)
        aborted = [d for conn in conns for d in conn.data_aborted]
        self.assertEqual(len(aborted), 1, aborted)
        self.assertFalse(aborted[0].endswith(b"\r\n.\r\n"))
        self.assertTrue(big.startswith(aborted[0]), "the backend got other bytes")
        # The refused message was not counted: 2500 bytes still pass.
        self.assertEqual(self.send(c, message=sized_message(2500)).code, 250)

    def test_sender_domain_counters_are_separate(self):
        gw = self.gateway([limit("per-sender-domain", key="sender_domain", n=2)])
        c = self.client(gw)
        for s in ("a@one.example", "b@one.example"):
            c.expect(250, line="MAIL FROM:<%s>" % s)
            c.expect(250, line="RSET")
        # The domain is compared without case.
        c.expect(450, "4.7.1", over_limit("per-sender-domain"),
                 line="MAIL FROM:<c@ONE.example>")
        c.expect(250, line="MAIL FROM:<a@two.example>")

    def test_recipient_domain_counters_are_separate(self):
        gw = self.gateway([limit("per-rcpt-domain", key="recipient_domain", n=2)])
        c = self.client(gw)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<a@r1.example>")
        c.expect(250, line="RCPT TO:<b@r1.example>")
        c.expect(450, "4.7.1", over_limit("per-rcpt-domain"), line="RCPT TO:<c@R1.example>")
        c.expect(250, line="RCPT TO:<a@r2.example>")

    def test_client_net_counts_the_whole_slash_24(self):
        gw = self.gateway([limit("per-net", key="client_net", n=2)])
        c2 = self.client(gw, source="127.0.0.2")
        c3 = self.client(gw, source="127.0.0.3")
        c2.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c3.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c4 = self.client(gw, source="127.0.0.4")
        c4.expect(450, "4.7.1", over_limit("per-net"), line="MAIL FROM:<%s>" % SENDER)

    def test_helo_key(self):
        gw = self.gateway([limit("per-helo", key="helo", n=1)])
        a = self.client(gw, ehlo=False)
        a.expect(250, line="EHLO one.client.example")
        a.expect(250, line="MAIL FROM:<%s>" % SENDER)
        b = self.client(gw, ehlo=False)
        b.expect(250, line="EHLO ONE.client.example")
        b.expect(450, "4.7.1", over_limit("per-helo"), line="MAIL FROM:<%s>" % SENDER)
        c = self.client(gw, ehlo=False)
        c.expect(250, line="EHLO two.client.example")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)

    def test_match_limits_only_matching_clients(self):
        gw = self.gateway([limit("only-dot-2", n=1, match={"client": "127.0.0.2"})])
        c2 = self.client(gw, source="127.0.0.2")
        self.assert_exact_limit(c2, 1, "only-dot-2")
        c3 = self.client(gw, source="127.0.0.3")
        for _ in range(3):
            c3.expect(250, line="MAIL FROM:<%s>" % SENDER)
            c3.expect(250, line="RSET")

    def test_action_reject(self):
        gw = self.gateway([limit("hard-limit", n=1, action="reject")])
        c = self.client(gw)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RSET")
        c.expect(550, "5.7.1", "5.7.1 Error: rate limit exceeded (hard-limit)",
                 line="MAIL FROM:<%s>" % SENDER)

    def test_max_failures_per_client(self):
        gw = self.gateway(policy={"relay": {"local_domains": ["example.test"]}},
                          overrides={"limits": {"max_failures_per_client": 3,
                                                "failure_window": "60s"}})
        # Three refused commands over two sessions: two unknown commands,
        # one recipient refused by the relay check.
        c = self.client(gw)
        c.expect(500, "5.5.2", line="FOO")
        c.expect(500, "5.5.2", line="BAR")
        c.expect(221, line="QUIT")
        c.wait_closed()
        c = self.client(gw)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<someone@elsewhere.example>")
        self.assertEqual(r.code // 100, 5, str(r))
        c.expect(221, line="QUIT")
        c.wait_closed()
        c = self.client(gw, greet=False, ehlo=False)
        r = c.expect(421, "4.7.0")
        self.assertIn("(failures)", r.text)
        self.assertIn("127.0.0.2", r.text)
        self.assertEqual(c.wait_closed(), b"")
        self.client(gw, source="127.0.0.3")


class LimitsInProcess(_Limits, RateLimitCase):
    STORE = "mem"


class LimitsRedis(_Limits, RateLimitCase):
    STORE = "redis"


# ---------------------------------------------------------------------------
# Redis only
# ---------------------------------------------------------------------------


class RedisStore(RateLimitCase):
    STORE = "redis"

    def test_keys_carry_prefix_and_expire(self):
        gw = self.gateway([limit("msgs-per-ip", n=3, window="60s")])
        prefix = gw.config["redis"]["key_prefix"]
        c = self.client(gw)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        keys = self.redis.command("KEYS", prefix + "*")
        self.assertEqual(len(keys), 1, keys)
        self.assertIn(b"msgs-per-ip", keys[0])
        self.assertIn(b"127.0.0.2", keys[0])
        ttl = self.redis.command("PTTL", keys[0])
        self.assertGreater(ttl, 0)
        self.assertLessEqual(ttl, 60000)

    def test_password_and_db(self):
        server = RedisServer(password="s3cret-pw")
        self.addCleanup(server.cleanup)
        server.start()
        gw = self.gateway([limit("msgs-per-ip", n=2)], redis=server,
                          redis_opts={"password": "s3cret-pw", "db": 3})
        c = self.client(gw)
        self.assert_exact_limit(c, 2, "msgs-per-ip")
        self.assertEqual(server.command("DBSIZE"), 0)
        self.assertEqual(server.command("DBSIZE", db=3), 1)

    def test_two_gateways_share_one_limit(self):
        rule = "per-sender"
        limits = [limit(rule, key="sender", n=10, window="60s")]
        gw1 = self.gateway(limits, start=False)
        prefix = gw1.config["redis"]["key_prefix"]
        gw2 = self.gateway(limits, start=False)
        gw2.config["redis"]["key_prefix"] = prefix
        for gw in (gw1, gw2):
            gw.start()
            wait_redis_ready(gw, self.redis)
        gws = [gw1, gw2]
        before = len(self.backend.messages)
        results = []
        errors = []
        lock = threading.Lock()

        def worker(t):
            try:
                for k in range(5):
                    gw = gws[(t + k) % 2]
                    c = gw.client(source_addr="127.0.0.%d" % (2 + t), timeout=self.TIMEOUT)
                    try:
                        c.ehlo()
                        r = c.cmd("MAIL FROM:<%s>" % SENDER)
                        if r.code == 250:
                            c.expect(250, line="RCPT TO:<%s>" % RCPT)
                            c.expect(354, line="DATA")
                            c.send(dot_stuff(make_message()))
                            r = c.read_reply()
                        with lock:
                            results.append((gw, r))
                        c.expect(221, line="QUIT")
                    finally:
                        c.close()
            except Exception as e:  # reported by the main thread
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 30)
        replies = [r for _, r in results]
        ok = [r for r in replies if r.code == 250]
        refused = [r for r in replies if r.code == 450]
        self.assertEqual(len(ok), 10, [str(r) for r in replies])
        self.assertEqual(len(refused), 20, [str(r) for r in replies])
        for r in refused:
            self.assertEqual(r.text, over_limit(rule))
        self.assertEqual(len(self.backend.messages) - before, 10)
        # Each gateway answered its half, refusals included.
        for gw in gws:
            mine = [r.code for g, r in results if g is gw]
            self.assertEqual(len(mine), 15)
            self.assertIn(450, mine)


class RedisFailures(RateLimitCase):
    """Redis killed, restarted, paused: a redis-server per test."""

    STORE = "redis"
    TIMEOUT = 3.0   # "no session hangs": every reply within this

    @classmethod
    def setUpClass(cls):
        cls.backend = RecordingBackend()
        cls.addClassCleanup(cls.backend.stop)
        cls.redis = None

    def own_redis(self):
        server = RedisServer()
        self.addCleanup(server.cleanup)
        return server.start()

    OUTAGE_RX = re.compile(r"(?m)^\S+ (\w+) ratelimit store=.* unavailable: ")

    def outage_lines(self, gw, since=0):
        return [m.group(0) for m in self.OUTAGE_RX.finditer(gw.log_since(since))
                if " still unavailable" not in m.group(0)]

    def recovers(self, gw, server, since, rule, n):
        """After a restart of server: the limit applies again within a
        bounded time (no gateway restart), then exactly as before."""
        wait_redis_ready(gw, server, since=since, timeout=15)
        c = self.client(gw)
        self.mail_until(c, 450, 5.0)
        server.command("FLUSHALL")
        self.assert_exact_limit(c, n, rule)

    def test_killed_on_error_allow(self):
        server = self.own_redis()
        gw = self.gateway([limit("msgs-per-ip", n=3)], redis=server,
                          redis_opts={"on_error": "allow"})
        before = len(self.backend.messages)
        off = gw.log_size()
        server.kill()
        # Mail flows (more than the limit would let through) and every
        # command is answered in time (self.TIMEOUT).
        for i in range(6):
            c = self.client(gw)
            final = self.send(c)
            self.assertEqual(final.code, 250, "message %d: %s" % (i + 1, final))
            c.expect(221, line="QUIT")
        self.assertEqual(len(self.backend.messages) - before, 6)
        wait_until(lambda: self.outage_lines(gw, off), 5, "the outage in the log")
        # Down long enough for a reconnection or two to fail as well.
        wait_until(lambda: "still unavailable" in gw.log_since(off), 5,
                   "a failed reconnection in the log")
        server.restart()
        self.recovers(gw, server, off, "msgs-per-ip", 3)
        # One warning for the whole outage, not one per message.
        self.assertEqual(len(self.outage_lines(gw, off)), 1, gw.log_since(off)[-3000:])

    def test_killed_on_error_tempfail(self):
        server = self.own_redis()
        gw = self.gateway([limit("msgs-per-ip", n=3, match={"client": "127.0.0.2"}),
                           limit("conn-dot-3", count="connections", n=100,
                                 match={"client": "127.0.0.3"})],
                          redis=server, redis_opts={"on_error": "tempfail"})
        before = len(self.backend.messages)
        off = gw.log_size()
        server.kill()
        c = self.client(gw)
        c.expect(451, "4.3.0", "4.3.0 Error: rate limit service unavailable, try again later",
                 line="MAIL FROM:<%s>" % SENDER)
        # A connection limit fails at connect.
        c3 = self.client(gw, source="127.0.0.3", greet=False, ehlo=False)
        r = c3.expect(421, "4.3.0")
        self.assertEqual(r.text, "4.3.0 %s Error: rate limit service unavailable, "
                         "try again later" % HOST)
        c3.wait_closed()
        self.assertEqual(len(self.backend.messages), before)
        server.restart()
        self.recovers(gw, server, off, "msgs-per-ip", 3)
        self.client(gw, source="127.0.0.3")
        self.assertEqual(len(self.outage_lines(gw, off)), 1, gw.log_since(off)[-3000:])

    def test_paused_answers_within_timeout(self):
        server = self.own_redis()
        gw = self.gateway([limit("msgs-per-ip", n=3)], redis=server,
                          redis_opts={"on_error": "allow", "timeout": "50ms"})
        c = self.client(gw)
        off = gw.log_size()
        server.pause()
        try:
            # Long enough for the gateway to give up on the connection and
            # to time out a reconnection to the stopped server.
            deadline = time.monotonic() + 6.0
            n = 0
            while n < 6 or "connect timeout" not in gw.log_since(off):
                self.assertLess(time.monotonic(), deadline, "no reconnection timed out")
                t0 = time.monotonic()
                r = c.cmd("MAIL FROM:<%s>" % SENDER, timeout=2.0)
                took = time.monotonic() - t0
                n += 1
                self.assertEqual(r.code, 250, "MAIL %d: %s" % (n, r))
                self.assertLess(took, 1.0, "MAIL %d answered after %.2fs" % (n, took))
                c.expect(250, line="RSET")
                time.sleep(0.05)  # spreads the MAILs over the pause
        finally:
            server.resume()
        # Back to normal once it answers again (what the paused requests
        # counted when Redis woke up is cleared first).
        wait_redis_ready(gw, server, since=off, timeout=15)
        server.command("FLUSHALL")
        self.assert_exact_limit(c, 3, "msgs-per-ip")

    def test_session_closed_while_check_pending(self):
        server = self.own_redis()
        gw = self.gateway([limit("msgs-per-ip", n=3)], redis=server,
                          redis_opts={"on_error": "allow", "timeout": "300ms"})
        server.pause()
        try:
            # Each MAIL waits for Redis; its client is gone before the
            # answer (a timeout) comes.
            for _ in range(2):
                c = self.client(gw)
                c.sendline("MAIL FROM:<%s>" % SENDER)
                c.close()
            c = self.client(gw)
            c.expect(250, line="MAIL FROM:<%s>" % SENDER, timeout=2.0)
        finally:
            server.resume()
        self.assertTrue(gw.running())
        c.expect(250, line="RSET")
        c.expect(221, line="QUIT")


# ---------------------------------------------------------------------------
# limits: max_connections_per_client (no store involved)
# ---------------------------------------------------------------------------


class ConnectionsPerClient(RateLimitCase):
    STORE = "mem"

    def test_third_concurrent_connection_refused(self):
        gw = self.gateway(overrides={"limits": {"max_connections_per_client": 2}})
        a = self.client(gw, ehlo=False)
        b = self.client(gw, ehlo=False)
        c = self.client(gw, greet=False, ehlo=False)
        r = c.expect(421, "4.7.0")
        self.assertIn("too many connections from 127.0.0.2", r.text)
        self.assertEqual(c.wait_closed(), b"")
        # Another address is not counted with it.
        self.client(gw, source="127.0.0.3", ehlo=False)
        # Once one of the two has gone, 127.0.0.2 gets in again (the
        # gateway frees its slot after the close: retry until then).
        a.expect(221, line="QUIT")
        a.wait_closed()
        deadline = time.monotonic() + 5
        while True:
            d = self.client(gw, greet=False, ehlo=False)
            r = d.read_reply()
            if r.code == 220:
                break
            self.assertEqual(r.code, 421, str(r))
            d.close()
            self.assertLess(time.monotonic(), deadline, "still refused after a close")
            time.sleep(0.02)  # the close is noticed asynchronously
        d.ehlo()
        b.ehlo()


# ---------------------------------------------------------------------------
# smtpgate -t
# ---------------------------------------------------------------------------

BAD_POLICY = """\
rate_limits:
  - name: fine
    key: client_ip
    count: messages
    limit: 3
    window: 2s
  - name: broken
    key: client_port
    count: messages
    limit: 0
    window: soon
"""
# Each error at its value (1-based line:column).
BAD_POLICY_POSITIONS = [(8, 10), (10, 12), (11, 13)]


class ConfigTest(unittest.TestCase):

    def test_bad_rate_limit_reported_with_position(self):
        d = tempfile.mkdtemp(prefix="smtpgate-rl-cli-")
        self.addCleanup(shutil.rmtree, d, True)
        pol = os.path.join(d, "policy.yaml")
        with open(pol, "w") as f:
            f.write(BAD_POLICY)
        cfg = os.path.join(d, "gateway.yaml")
        with open(cfg, "w") as f:
            f.write(to_yaml({"hostname": HOST, "listen": [{"address": "127.0.0.1:2525"}],
                             "backend": {"servers": ["127.0.0.1:10025"]},
                             "policy": pol}) + "\n")
        p = subprocess.run([gateway_bin(), "-t", "-c", cfg], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=20)
        out = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, out)
        for line, col in BAD_POLICY_POSITIONS:
            self.assertRegex(out, r"(?m)^%s:%d:%d: \S" % (re.escape(pol), line, col),
                             "no error at %d:%d in:\n%s" % (line, col, out))
        self.assertNotRegex(out, r"(?m)^%s:[2-6]:" % re.escape(pol), out)


if __name__ == "__main__":
    unittest.main()
