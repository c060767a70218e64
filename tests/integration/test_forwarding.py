#!/usr/bin/env python3
"""Relaying: what reaches the backend, and what comes back to the client."""

import hashlib
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    CRLF, ClosedPort, Gateway, GatewayTestCase, RecordingBackend, SmtpSink, check_reply,
    dot_stuff, has_bare_cr_lf, make_big_message, make_message, show_log_tail,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"


def _new_conns(backend, n):
    return backend.connections[n:]


class MessageBytes(GatewayTestCase):
    """The message reaches the backend byte for byte."""

    def _send_and_get(self, message):
        c = self.client(ehlo=True)
        final = c.transaction(SENDER, [RCPT], message)
        msgs = [m for m in self.backend.messages if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(len(msgs), 1, "no backend message for %s" % (final,))
        return msgs[0]

    def test_bytes_identical(self):
        msg = make_message(body_lines=[
            b"plain line", b"", b".leading dot", b"..two dots", b".",
            b"trailing spaces   ", b"\ttab", b"x" * 998, b"8bit: \xc3\xa4\xc3\xb6\xff\x80",
            b"end"])
        wire = dot_stuff(msg)
        got = self._send_and_get(msg)
        self.assertEqual(got.data, wire)

    def test_empty_body(self):
        msg = b"Subject: empty\r\n\r\n"
        got = self._send_and_get(msg)
        self.assertEqual(got.data, dot_stuff(msg))

    def test_message_in_tiny_writes(self):
        msg = make_message(body_lines=[b"line %d" % i for i in range(50)])
        wire = dot_stuff(msg)
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        # One byte at a time through the end: CR, LF, "." and the final
        # CRLF each arrive in a read of their own.
        c.send(wire[:-40])
        for i in range(len(wire) - 40, len(wire)):
            c.send(wire[i:i + 1])
        final = c.expect(250)
        got = [m for m in self.backend.messages if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(got[0].data, wire)

    def test_envelope_forwarded(self):
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT, "second@example.test"], make_message())
        m = self.backend.messages[-1]
        self.assertEqual(m.mail_from, SENDER)
        self.assertEqual(m.rcpts, [RCPT, "second@example.test"])

    def test_mail_parameters_forwarded(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s> BODY=8BITMIME ENVID=abc123" % SENDER)
        c.expect(250, line="RCPT TO:<%s> NOTIFY=FAILURE" % RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        c.expect(250)
        m = self.backend.messages[-1]
        self.assertIn(b"BODY=8BITMIME", m.mail_line)
        self.assertIn(b"ENVID=abc123", m.mail_line)
        self.assertIn(b"NOTIFY=FAILURE", m.rcpt_lines[0])

    def test_50mb_message_identical(self):
        msg = make_big_message(50 * 1000 * 1000)
        wire = dot_stuff(msg)
        want = hashlib.sha256(wire).hexdigest()
        c = self.client(ehlo=True, timeout=120)
        c.expect(250, line="MAIL FROM:<%s> SIZE=%d" % (SENDER, len(msg)))
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(wire)
        del msg
        final = c.expect(250, timeout=120)
        got = [m for m in self.backend.messages if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(len(got), 1)
        self.assertEqual(len(got[0].data), len(wire))
        self.assertEqual(got[0].sha256, want)
        got[0].data = b""  # free memory
        for conn in self.backend.connections:
            conn.raw = bytearray()


class Replies(GatewayTestCase):
    RCPT_REPLIES = {
        "bad@example.test": "550 5.1.1 <bad@example.test>: Recipient address rejected",
        "multi@example.test": ["550-5.1.1 <multi@example.test>: line one",
                               "550-5.1.1 line two",
                               "550 5.1.1 line three"],
    }

    def test_multiline_reply_verbatim(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<multi@example.test>")
        self.assertEqual(r.raw, b"550-5.1.1 <multi@example.test>: line one\r\n"
                                b"550-5.1.1 line two\r\n550 5.1.1 line three\r\n")

    def test_queued_as_verbatim(self):
        c = self.client(ehlo=True)
        final = c.transaction(SENDER, [RCPT], make_message())
        m = self.backend.messages[-1]
        self.assertEqual(final.raw, b"250 2.0.0 Ok: queued as " + m.queue_id.encode() + CRLF)

    def test_pipelined_replies_in_order(self):
        c = self.client(ehlo=True)
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<bad@example.test>\r\nDATA\r\n"
               % (SENDER, RCPT))
        got = [c.read_reply() for _ in range(4)]
        self.assertEqual([r.raw for r in got], [
            b"250 2.1.0 Ok\r\n",
            b"250 2.1.5 Ok\r\n",
            b"550 5.1.1 <bad@example.test>: Recipient address rejected\r\n",
            got[3].raw,
        ])
        self.assertEqual(got[3].code, 354)
        c.send(dot_stuff(make_message()))
        final = c.expect(250)
        m = self.backend.messages[-1]
        self.assertEqual(final.text, "2.0.0 Ok: queued as " + m.queue_id)
        self.assertEqual(m.rcpts, [RCPT])

    def test_pipelined_two_transactions(self):
        c = self.client(ehlo=True)
        msg = make_message()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (SENDER, RCPT))
        codes = [c.read_reply().code for _ in range(3)]
        self.assertEqual(codes, [250, 250, 354])
        # End of data, then the next transaction, then QUIT, in one write.
        c.send(dot_stuff(msg) + ("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                                 % (SENDER, RCPT)).encode())
        codes = [c.read_reply().code for _ in range(4)]
        self.assertEqual(codes, [250, 250, 250, 354])
        c.send(dot_stuff(msg) + b"QUIT\r\n")
        c.expect(250)
        c.expect(221)
        c.wait_closed()

    def test_pipelined_rset_noop_in_order(self):
        c = self.client(ehlo=True)
        c.send("MAIL FROM:<%s>\r\nRSET\r\nNOOP\r\nRCPT TO:<%s>\r\n" % (SENDER, RCPT))
        got = [c.read_reply() for _ in range(4)]
        self.assertEqual([r.code for r in got], [250, 250, 250, 503], [str(r) for r in got])


def _xclient_session(tc):
    """One session from 127.0.0.2 with a transaction; checks the XCLIENT
    attributes its backend connection got and returns that connection."""
    n = len(tc.backend.connections)
    c = tc.client(source_addr="127.0.0.2", greet=True)
    c.expect(250, line="EHLO helo.client.example.test")
    c.transaction(SENDER, [RCPT], make_message())
    conns = _new_conns(tc.backend, n)
    tc.assertEqual(len(conns), 1)
    x = conns[0].xclient
    tc.assertEqual(x.get("ADDR"), "127.0.0.2", x)
    tc.assertEqual(x.get("PORT"), str(c.local_port), x)
    tc.assertEqual(x.get("HELO"), "helo.client.example.test", x)
    tc.assertEqual(x.get("PROTO"), "ESMTP", x)
    return conns[0]


class Xclient(GatewayTestCase):

    def test_xclient_attributes(self):
        _xclient_session(self)

    def test_xclient_proto_smtp_after_helo(self):
        n = len(self.backend.connections)
        c = self.client()
        c.expect(250, line="HELO old.client.example.test")
        c.transaction(SENDER, [RCPT], make_message())
        x = _new_conns(self.backend, n)[0].xclient
        self.assertEqual(x.get("PROTO"), "SMTP", x)
        self.assertEqual(x.get("HELO"), "old.client.example.test", x)

    def test_xclient_before_mail_then_ehlo_again(self):
        n = len(self.backend.connections)
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], make_message())
        verbs = _new_conns(self.backend, n)[0].verbs()
        self.assertIn("XCLIENT", verbs)
        i = verbs.index("XCLIENT")
        last_x = len(verbs) - 1 - verbs[::-1].index("XCLIENT")
        self.assertEqual(verbs[0], "EHLO", verbs)
        self.assertLess(i, verbs.index("MAIL"), verbs)
        self.assertEqual(verbs[last_x + 1], "EHLO", "no EHLO after XCLIENT: %s" % verbs)

    def test_ehlo_after_xclient_uses_client_helo(self):
        # Postfix takes the name of the EHLO that follows XCLIENT as the
        # client's HELO name (it overrides XCLIENT HELO=), as in the
        # XCLIENT_README example; it must be the client's, not ours.
        n = len(self.backend.connections)
        c = self.client()
        c.expect(250, line="EHLO helo.client.example.test")
        c.transaction(SENDER, [RCPT], make_message())
        conn = _new_conns(self.backend, n)[0]
        verbs = conn.verbs()
        last_x = len(verbs) - 1 - verbs[::-1].index("XCLIENT")
        self.assertEqual(conn.commands[last_x + 1], b"EHLO helo.client.example.test",
                         conn.commands)

    def test_no_xclient_when_backend_does_not_offer_it(self):
        saved = self.backend.ehlo_keywords
        self.backend.ehlo_keywords = [k for k in saved if not k.startswith("XCLIENT")]
        self.addCleanup(setattr, self.backend, "ehlo_keywords", saved)
        n = len(self.backend.connections)
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], make_message())
        self.assertNotIn("XCLIENT", _new_conns(self.backend, n)[0].verbs())


class BackendConnections(GatewayTestCase):

    def test_no_backend_connection_without_mail(self):
        n = len(self.backend.connections)
        c = self.client()
        c.expect(250, line="EHLO client.example.test")
        c.expect(250, line="NOOP")
        c.expect(250, line="HELO client.example.test")
        c.expect(221, line="QUIT")
        c.wait_closed()
        # A second session with a transaction: the only new backend
        # connection must be its own (XCLIENT PORT tells whose it is).
        c2 = self.client(ehlo=True)
        c2.transaction(SENDER, [RCPT], make_message())
        conns = _new_conns(self.backend, n)
        self.assertEqual([x.xclient.get("PORT") for x in conns], [str(c2.local_port)])

    def test_connection_reused_for_two_transactions(self):
        n = len(self.backend.connections)
        c = self.client(ehlo=True)
        f1 = c.transaction(SENDER, [RCPT], make_message(subject="one"))
        f2 = c.transaction(SENDER, [RCPT], make_message(subject="two"))
        conns = _new_conns(self.backend, n)
        self.assertEqual(len(conns), 1, "backend connections: %d" % len(conns))
        ids = [m.queue_id for m in self.backend.messages if m.conn is conns[0]]
        self.assertEqual(len(ids), 2)
        self.assertEqual([f1.text, f2.text], ["2.0.0 Ok: queued as " + i for i in ids])

    def test_quit_closes_backend_connection(self):
        n = len(self.backend.connections)
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], make_message())
        c.expect(221, line="QUIT")
        conns = _new_conns(self.backend, n)
        self.backend.wait_closed(conns, 10)
        self.assertEqual(conns[0].verbs()[-1], "QUIT",
                         "backend connection closed without QUIT; commands: %r"
                         % conns[0].commands)


class BackendLost(GatewayTestCase):
    """The backend fails in the middle of a transaction."""

    def test_backend_dies_after_354(self):
        self.backend.fault = "close_after_354"
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        r = c.cmd("DATA")
        if r.code == 354:
            c.send(dot_stuff(make_message()))
            r = c.read_reply(30)
        check_reply(r, 4)
        self.assertIn(r.enhanced, ("4.4.2", "4.4.1"), str(r))

    def test_backend_dies_mid_data(self):
        self.backend.fault = "close_mid_data"
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        try:
            c.send(dot_stuff(make_message(body_lines=[b"z" * 500] * 200)))
        except OSError:
            pass
        r = c.read_reply(30)
        check_reply(r, 4, ("4.4.2", "4.4.1"))

    def test_backend_dies_after_rcpt(self):
        self.backend.fault = "close_after_rcpt"
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        r = c.cmd("DATA")
        if r.code == 354:
            c.send(dot_stuff(make_message()))
            r = c.read_reply(30)
        check_reply(r, 4, ("4.4.2", "4.4.1"))

    def test_backend_dies_at_mail(self):
        self.backend.fault = "close_at_mail"
        c = self.client(ehlo=True)
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        check_reply(r, 4, ("4.4.1", "4.4.2"))

    def test_session_recovers_after_backend_loss(self):
        self.backend.fault = "close_after_354"
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        r = c.cmd("DATA")
        if r.code == 354:
            c.send(dot_stuff(make_message()))
            r = c.read_reply(30)
        check_reply(r, 4)
        if r.code == 421:
            self.skipTest("gateway ended the session with 421 (allowed)")
        self.backend.fault = None
        c.cmd("RSET")
        c.transaction(SENDER, [RCPT], make_message())


class BackendTimeout(GatewayTestCase):
    OVERRIDES = {"backend": {"timeouts": {"mail": "1s", "rcpt": "1s"}}}

    def test_silent_backend_times_out(self):
        # A backend that accepts MAIL but never answers RCPT.
        orig = self.backend._send

        def silent(conn, reply):
            if conn.commands and conn.commands[-1].upper().startswith(b"RCPT"):
                return
            orig(conn, reply)
        self.backend._send = silent
        self.addCleanup(setattr, self.backend, "_send", orig)
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<%s>" % RCPT, timeout=15)
        check_reply(r, 4, "4.4.2")


class BackendDown(unittest.TestCase):
    """The only backend refuses connections, then comes up."""

    def setUp(self):
        self.backend = RecordingBackend(listen=False)
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], name="down")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def tearDown(self):
        if not self.gw.running():
            show_log_tail(self.gw, self.id())

    def test_backend_down_then_up(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        c.expect(451, "4.4.1", line="MAIL FROM:<%s>" % SENDER)
        self.backend.listen()
        c.transaction(SENDER, [RCPT], make_message())
        self.assertEqual(len(self.backend.wait_messages(1)), 1)

    def test_backend_down_new_session_after_up(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        c.expect(451, "4.4.1", line="MAIL FROM:<%s>" % SENDER)
        c.expect(221, line="QUIT")
        self.backend.listen()
        c2 = self.gw.client()
        self.addCleanup(c2.close)
        c2.ehlo()
        c2.transaction(SENDER, [RCPT], make_message())


class Failover(unittest.TestCase):
    """The first server refuses; the second takes the mail."""

    def setUp(self):
        self.dead = ClosedPort()
        self.addCleanup(self.dead.close)
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.dead.addr, self.backend.addr], name="failover")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def test_failover_to_second_server(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        msg = make_message()
        final = c.transaction(SENDER, [RCPT], msg)
        m = self.backend.wait_messages(1)[0]
        self.assertEqual(m.data, dot_stuff(msg))
        self.assertEqual(final.text, "2.0.0 Ok: queued as " + m.queue_id)

    def test_all_servers_down(self):
        self.backend.stop()
        dead2 = ClosedPort()
        self.addCleanup(dead2.close)
        gw = Gateway([self.dead.addr, dead2.addr], name="alldown")
        self.addCleanup(gw.stop_and_check)
        gw.start()
        c = gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        c.expect(451, "4.4.1", line="MAIL FROM:<%s>" % SENDER)


class SizeLimit(GatewayTestCase):
    OVERRIDES = {"limits": {"max_message_size": 100000}}

    def test_oversized_message_552_after_end(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        body = make_message(body_lines=[b"o" * 998] * 300)  # ~300 KB
        c.send(dot_stuff(body))
        c.expect(552, "5.3.4", timeout=30)

    def test_oversized_message_not_completed_at_backend(self):
        n = len(self.backend.messages)
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message(subject="too big", body_lines=[b"o" * 998] * 300)))
        c.expect(552, "5.3.4", timeout=30)
        small = make_message(subject="small")
        c.transaction(SENDER, [RCPT], small)
        c.expect(221, line="QUIT")
        msgs = self.backend.messages[n:]
        self.assertEqual([m.data for m in msgs], [dot_stuff(small)])
        for m in msgs:
            self.assertNotIn(b"too big", m.data)

    def test_session_continues_after_552(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message(body_lines=[b"o" * 998] * 300)))
        c.expect(552, "5.3.4", timeout=30)
        c.expect(250, "2.0.0", line="NOOP")
        c.transaction(SENDER, [RCPT], make_message())

    def test_message_just_under_limit_passes(self):
        msg = make_message(body_lines=[b"u" * 98] * 900)
        self.assertLess(len(dot_stuff(msg)), 100000)
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], msg)
        self.assertEqual(self.backend.messages[-1].data, dot_stuff(msg))


SMUGGLE_TAIL = (b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@example.test>\r\n"
                b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")

SMUGGLING_CASES = {
    "lf_dot_lf": b"\n.\n",
    "lf_dot_crlf": b"\n.\r\n",
    "cr_dot_crlf": b"\r.\r\n",
    "crlf_dot_cr": b"\r\n.\r",
    "crlf_dot_cr_crlf": b"\r\n.\r\r\n",
    "bare_lf": b"\n",
    "bare_cr": b"\r",
}


class Smuggling(GatewayTestCase):
    """Bare CR/LF in message data: 550 5.5.2 after the real end; nothing
    with a bare CR/LF reaches the backend, nor a smuggled command."""

    def _smuggle(self, seq):
        n = len(self.backend.connections)
        nmsg = len(self.backend.messages)
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(b"Subject: smuggling\r\n\r\nhello" + seq + SMUGGLE_TAIL + b"\r\n.\r\n")
        r = c.read_reply(30)
        check_reply(r, 550, "5.5.2")
        # The session goes on: the next reply is the NOOP's, nothing else
        # (no reply to a smuggled command in between).
        c.expect(250, "2.0.0", "2.0.0 Ok", line="NOOP")
        good = make_message(subject="after smuggling")
        c.transaction(SENDER, [RCPT], good)
        c.expect(221, line="QUIT")
        c.wait_closed()
        conns = _new_conns(self.backend, n)
        try:
            self.backend.wait_closed(conns, 10)
        except TimeoutError:
            pass
        msgs = self.backend.messages[nmsg:]
        self.assertEqual([m.data for m in msgs], [dot_stuff(good)])
        for conn in conns:
            raw = bytes(conn.raw)
            self.assertFalse(has_bare_cr_lf(raw), "bare CR/LF reached the backend: %r"
                             % raw[:2000])
            self.assertNotIn(b"smuggled", raw)
            self.assertNotIn(b"evil.test", raw)


def _make_smuggling_test(seq):
    def test(self):
        self._smuggle(seq)
    return test


for _name, _seq in SMUGGLING_CASES.items():
    setattr(Smuggling, "test_smuggling_" + _name, _make_smuggling_test(_seq))


class ViaSmtpSink(unittest.TestCase):
    """The gateway in front of Postfix's smtp-sink."""

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink()
        cls.addClassCleanup(cls.sink.cleanup)
        cls.sink.start()
        cls.gw = Gateway([cls.sink.addr], {"workers": 2}, name="sink")
        cls.addClassCleanup(cls.gw.stop_and_check)
        cls.gw.start()

    def client(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        return c

    def test_message_accepted(self):
        c = self.client()
        final = c.transaction(SENDER, [RCPT], make_message())
        self.assertEqual(final.raw, b"250 2.0.0 Ok\r\n")

    def test_pipelined_transaction(self):
        c = self.client()
        c.send("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
               % (SENDER, RCPT))
        got = [c.read_reply() for _ in range(4)]
        self.assertEqual([r.code for r in got], [250, 250, 250, 354])
        c.send(dot_stuff(make_message()))
        c.expect(250)

    def test_concurrent_sessions(self):
        errors = []

        def run(i):
            try:
                c = self.gw.client(timeout=30)
                try:
                    c.ehlo()
                    for j in range(3):
                        c.transaction("s%d@client.example.test" % i, [RCPT],
                                      make_message(subject="c%d-%d" % (i, j)))
                    c.expect(221, line="QUIT")
                finally:
                    c.close()
            except Exception as e:  # collected and asserted below
                errors.append("session %d: %r" % (i, e))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "sessions hung")
        self.assertEqual(errors, [])

    def test_10mb_message(self):
        c = self.client()
        c.transaction(SENDER, [RCPT], make_big_message(10 * 1000 * 1000))


class XclientBeforeEhlo(GatewayTestCase):
    """backend: xclient_before_ehlo: XCLIENT comes right after the greeting,
    with every attribute, then the client's EHLO."""

    OVERRIDES = {"backend": {"xclient_before_ehlo": True}}

    def test_xclient_first(self):
        conn = _xclient_session(self)
        verbs = conn.verbs()
        self.assertEqual(verbs[:3], ["XCLIENT", "EHLO", "MAIL"], verbs)
        self.assertEqual(verbs.count("EHLO"), 1, verbs)
        self.assertEqual(conn.xclient.get("NAME"), "[UNAVAILABLE]", conn.xclient)
        self.assertEqual(conn.commands[1], b"EHLO helo.client.example.test")


class ReverseDnsCache(GatewayTestCase):
    """smtp: reverse_dns_cache: a worker (one here) reuses the answer for an
    address; the backend is told the same NAME either way."""

    OVERRIDES = {"smtp": {"reverse_dns": True, "reverse_dns_cache": "60s"}}

    def _names(self, addr, n):
        """n sessions from addr, one transaction each; returns the XCLIENT
        NAMEs the backend got and the gateway's name= log lines for them."""
        off = self.gw.log_size()
        k = len(self.backend.connections)
        for _ in range(n):
            c = self.client(source_addr=addr, ehlo=True)
            c.transaction(SENDER, [RCPT], make_message())
            c.cmd("QUIT")
            c.close()
        names = [x.xclient.get("NAME") for x in _new_conns(self.backend, k)]
        lines = [ln for ln in self.gw.log_since(off).splitlines()
                 if " client=%s name=" % addr in ln]
        return names, lines

    def test_name_reused(self):
        names, lines = self._names("127.0.0.1", 3)
        self.assertEqual(names, ["localhost"] * 3)
        self.assertEqual(len(lines), 3, lines)
        # The first may have been cached by an earlier test; the others are.
        for ln in lines[1:]:
            self.assertIn("name=localhost (cached)", ln)

    def test_no_name_reused(self):
        names, lines = self._names("127.0.0.3", 2)
        self.assertEqual(names, ["[UNAVAILABLE]"] * 2)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("name=[UNAVAILABLE] (cached)", lines[1])


class ReverseDnsNoCache(ReverseDnsCache):
    """reverse_dns_cache: 0: every connection is looked up."""

    OVERRIDES = {"smtp": {"reverse_dns": True, "reverse_dns_cache": "0"}}

    def test_name_reused(self):
        names, lines = self._names("127.0.0.1", 3)
        self.assertEqual(names, ["localhost"] * 3)
        self.assertEqual(len(lines), 3, lines)
        self.assertFalse([ln for ln in lines if "(cached)" in ln], lines)

    def test_no_name_reused(self):
        names, lines = self._names("127.0.0.3", 2)
        self.assertEqual(names, ["[UNAVAILABLE]"] * 2)
        self.assertFalse([ln for ln in lines if "(cached)" in ln], lines)


if __name__ == "__main__":
    unittest.main()
