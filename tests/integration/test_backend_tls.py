#!/usr/bin/env python3
"""TLS toward the backend: STARTTLS (RFC 3207) after the first EHLO, with
backend: tls: opportunistic or required, certificate verification against
ca_file and tls_name, and the plaintext a server (or anyone on the path)
sends after its 220 to STARTTLS, which must never be taken as replies."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Gateway, PrivatePostfix, RecordingBackend, dot_stuff, make_big_message, make_message,
    show_log_tail, tls_files,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
NO_STARTTLS = ["PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES",
               "XCLIENT NAME ADDR PORT PROTO HELO LOGIN"]


def required(name="gate.example.test", **kw):
    """backend: settings for required TLS, verified against the test CA."""
    return dict({"tls": "required", "ca_file": tls_files().ca_cert, "verify": True,
                 "tls_name": name}, **kw)


def _msgid(msg):
    return re.search(rb"^Message-ID: <([^>]+)>", msg, re.M).group(1)


class GatewayCase(unittest.TestCase):
    """Helpers: a gateway per test, its log shown when the test failed."""

    def gateway(self, backends, backend_cfg):
        gw = Gateway([str(b) for b in backends], {"backend": backend_cfg},
                     name=self.id().rsplit(".", 1)[-1])
        self.addCleanup(gw.stop_and_check)
        gw.start()
        self.addCleanup(self._show_log, gw)
        return gw

    def _show_log(self, gw):
        outcome = getattr(self, "_outcome", None)
        res = getattr(outcome, "result", None)
        if res is not None and any(t is self for t, _ in res.failures + res.errors):
            show_log_tail(gw, self.id())

    def backend(self, **kw):
        b = RecordingBackend(**kw)
        self.addCleanup(b.stop)
        return b

    def client(self, gw, source_addr=None):
        c = gw.client(source_addr=source_addr)
        self.addCleanup(c.close)
        c.ehlo("helo.client.example.test")
        return c

    def send_ok(self, gw, msg, rcpts=(RCPT,), source_addr=None):
        """One transaction that must succeed; returns the final reply."""
        c = self.client(gw, source_addr)
        final = c.transaction(SENDER, list(rcpts), msg)
        c.expect(221, line="QUIT")
        return final

    def expect_unavailable(self, gw):
        """MAIL is answered 451 4.4.1: no backend could be set up."""
        c = self.client(gw)
        r = c.expect(451, "4.4.1", line="MAIL FROM:<%s>" % SENDER)
        c.expect(221, line="QUIT")
        return r


class ToRecordingBackend(GatewayCase):

    def test_required_without_starttls_fails_the_server(self):
        b = self.backend(ehlo_keywords=NO_STARTTLS)
        gw = self.gateway([b], required())
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])
        for conn in b.connections:
            self.assertNotIn("MAIL", conn.verbs())
            self.assertNotIn("STARTTLS", conn.verbs())
        self.assertIn("does not offer STARTTLS and TLS is required", gw.log)

    def test_opportunistic_without_starttls_is_plaintext(self):
        b = self.backend(ehlo_keywords=NO_STARTTLS)
        gw = self.gateway([b], {"tls": "opportunistic"})
        msg = make_message(subject="plain")
        self.send_ok(gw, msg)
        got = b.wait_messages(1)
        self.assertEqual(got[0].data, dot_stuff(msg))
        self.assertIsNone(got[0].conn.tls_version)
        self.assertEqual(got[0].conn.verbs()[:3], ["EHLO", "XCLIENT", "EHLO"])
        self.assertIn("does not offer STARTTLS: going on without TLS", gw.log)
        self.assertNotIn("TLS established", gw.log)

    def test_no_starttls_without_tls_setting(self):
        b = self.backend(tls=True)
        gw = self.gateway([b], {})
        self.send_ok(gw, make_message(subject="tls none"))
        conn = b.wait_messages(1)[0].conn
        self.assertNotIn("STARTTLS", conn.verbs())
        self.assertIsNone(conn.tls_version)

    def test_required_with_verify(self):
        b = self.backend(tls=True)
        gw = self.gateway([b], required())
        msg = make_message(subject="required")
        self.send_ok(gw, msg)
        got = b.wait_messages(1)[0]
        self.assertEqual(got.data, dot_stuff(msg))
        conn = got.conn
        self.assertEqual(conn.tls_version, "TLSv1.3")
        # Only EHLO and STARTTLS in plaintext; XCLIENT and its EHLO under TLS.
        self.assertEqual(conn.verbs()[:conn.tls_at], ["EHLO", "STARTTLS"])
        self.assertEqual(conn.verbs()[conn.tls_at:conn.tls_at + 4],
                         ["EHLO", "XCLIENT", "EHLO", "MAIL"])
        self.assertEqual(conn.xclient.get("HELO"), "helo.client.example.test")
        self.assertEqual(conn.after_starttls, b"")
        self.assertRegex(gw.log, r"backend=%s TLS established: TLSv1\.3 TLS_\w+" %
                         re.escape(b.addr))

    def test_wrong_tls_name_fails_verification(self):
        b = self.backend(tls=True)
        gw = self.gateway([b], required("wrong.example.test"))
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])
        for conn in b.connections:
            self.assertNotIn("MAIL", conn.verbs())
        self.assertRegex(gw.log, r"backend=%s TLS handshake failed: .*certificate verify "
                         r"failed.*\(certificate: [Hh]ostname mismatch\)" % re.escape(b.addr))

    def test_untrusted_certificate_fails_verification(self):
        # verify with the system's CAs, which do not know the test CA.
        b = self.backend(tls=True)
        gw = self.gateway([b], {"tls": "required", "tls_name": "gate.example.test"})
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])
        self.assertRegex(gw.log, r"TLS handshake failed: .*certificate verify failed")

    def test_opportunistic_does_not_verify(self):
        # verify defaults to false with opportunistic: an unknown CA is fine.
        b = self.backend(tls=True)
        gw = self.gateway([b], {"tls": "opportunistic", "tls_name": "wrong.example.test"})
        self.send_ok(gw, make_message(subject="opportunistic no verify"))
        self.assertEqual(b.wait_messages(1)[0].conn.tls_version, "TLSv1.3")

    def test_opportunistic_handshake_failure_fails_the_server(self):
        # After the 220 there is no way back to plaintext on that connection.
        b = self.backend(tls=True)
        gw = self.gateway([b], {"tls": "opportunistic", "verify": True,
                                "ca_file": tls_files().ca_cert,
                                "tls_name": "wrong.example.test"})
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])

    def test_required_fails_over_to_a_server_with_tls(self):
        plain = self.backend(ehlo_keywords=NO_STARTTLS)
        tls = self.backend(tls=True)
        gw = self.gateway([plain, tls], required())
        self.send_ok(gw, make_message(subject="failover"))
        self.assertEqual(tls.wait_messages(1)[0].conn.tls_version, "TLSv1.3")
        self.assertEqual(plain.messages, [])

    def test_starttls_refused_opportunistic_goes_on_in_plaintext(self):
        b = self.backend(ehlo_keywords=NO_STARTTLS + ["STARTTLS"])
        b.starttls_reply = "454 4.7.0 TLS not available due to local problem"
        gw = self.gateway([b], {"tls": "opportunistic"})
        msg = make_message(subject="refused starttls")
        self.send_ok(gw, msg)
        got = b.wait_messages(1)[0]
        self.assertEqual(got.data, dot_stuff(msg))
        self.assertEqual(got.conn.verbs()[:4], ["EHLO", "STARTTLS", "XCLIENT", "EHLO"])
        self.assertIn("refused STARTTLS, going on without TLS: 454 4.7.0", gw.log)

    def test_starttls_refused_required_fails_the_server(self):
        b = self.backend(ehlo_keywords=NO_STARTTLS + ["STARTTLS"])
        b.starttls_reply = "454 4.7.0 TLS not available due to local problem"
        gw = self.gateway([b], required())
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])
        self.assertIn("refused in state STARTTLS: 454 4.7.0", gw.log)

    def test_starttls_odd_reply_fails_the_server(self):
        # A 250 to STARTTLS is no refusal: the server is confused.
        b = self.backend(ehlo_keywords=NO_STARTTLS + ["STARTTLS"])
        b.starttls_reply = "250 2.0.0 Ok"
        gw = self.gateway([b], {"tls": "opportunistic"})
        self.expect_unavailable(gw)
        self.assertEqual(b.messages, [])

    def test_injected_plaintext_after_220_is_discarded(self):
        # A man in the middle (or a broken server) appends replies to the
        # 220: they must be dropped, never matched to later commands.
        b = self.backend(tls=True)
        b.starttls_inject = b"250 injected\r\n550 5.7.1 injected too\r\n"
        gw = self.gateway([b], required())
        c = self.client(gw)
        msg = make_message(subject="injection")
        r = c.expect(250, "2.1.0", line="MAIL FROM:<%s>" % SENDER)
        self.assertNotIn("injected", str(r))
        r = c.expect(250, "2.1.5", line="RCPT TO:<%s>" % RCPT)
        self.assertNotIn("injected", str(r))
        c.expect(354, line="DATA")
        c.send(dot_stuff(msg))
        final = c.expect(250, "2.0.0")
        c.expect(221, line="QUIT")
        got = b.wait_messages(1)[0]
        self.assertTrue(final.text.endswith(got.queue_id), str(final))
        self.assertEqual(got.conn.tls_version, "TLSv1.3")
        self.assertIn("discarded %d bytes sent after the 220 to STARTTLS"
                      % len(b.starttls_inject), gw.log)

    def test_injected_plaintext_without_tls_fails_the_handshake(self):
        # The server says 220 with a reply appended, then stays in
        # plaintext: the handshake fails; no reply reaches the client.
        b = self.backend(ehlo_keywords=NO_STARTTLS + ["STARTTLS"])
        b.starttls_inject = b"250 injected\r\n"
        b.fault = "plain_after_starttls"
        gw = self.gateway([b], {"tls": "opportunistic"})
        r = self.expect_unavailable(gw)
        self.assertNotIn("injected", str(r))
        self.assertEqual(b.messages, [])
        self.assertRegex(gw.log, r"backend=%s TLS handshake failed" % re.escape(b.addr))
        self.assertIn("discarded 14 bytes", gw.log)

    def test_big_message_under_tls(self):
        # Many data chunks, each encrypted and written before the next.
        b = self.backend(tls=True)
        gw = self.gateway([b], required())
        msg = make_big_message(6 * 1024 * 1024)
        self.send_ok(gw, msg)
        got = b.wait_messages(1)[0]
        self.assertEqual(len(got.data), len(dot_stuff(msg)))
        self.assertEqual(got.data, dot_stuff(msg))

    def test_replies_split_across_records(self):
        # One byte per TLS record: every reply arrives in many pieces.
        b = self.backend(tls=True)
        b.reply_chunking = "bytewise"
        gw = self.gateway([b], required())
        msg = make_message(subject="bytewise")
        self.send_ok(gw, msg, rcpts=[RCPT, "other@example.test"])
        got = b.wait_messages(1)[0]
        self.assertEqual(got.rcpts, [RCPT, "other@example.test"])

    def test_several_replies_in_one_record(self):
        # Pipelined commands answered in one write: one record, several
        # replies (a rejected RCPT among them).
        b = self.backend(tls=True)
        b.reply_chunking = "coalesce"
        b.rcpt_replies = {"bad@example.test": "550 5.1.1 <bad@example.test>: unknown"}
        gw = self.gateway([b], required())
        c = self.client(gw)
        c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nRCPT TO:<bad@example.test>\r\n"
               b"RCPT TO:<third@example.test>\r\nDATA\r\n" % (SENDER.encode(), RCPT.encode()))
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(550, "5.1.1")
        c.expect(250, "2.1.5")
        c.expect(354)
        msg = make_message(subject="coalesced")
        c.send(dot_stuff(msg))
        c.expect(250, "2.0.0")
        c.expect(221, line="QUIT")
        got = b.wait_messages(1)[0]
        self.assertEqual(got.rcpts, [RCPT, "third@example.test"])
        self.assertEqual(got.data, dot_stuff(msg))

    def test_connection_reused_under_tls(self):
        b = self.backend(tls=True)
        gw = self.gateway([b], required())
        c = self.client(gw)
        for i in range(3):
            c.transaction(SENDER, [RCPT], make_message(subject="reuse %d" % i))
        c.expect(221, line="QUIT")
        got = b.wait_messages(3)
        self.assertEqual(len({id(m.conn) for m in got}), 1)
        conn = got[0].conn
        b.wait_closed([conn])
        self.assertEqual(conn.verbs()[-1], "QUIT")


class ToPostfix(GatewayCase):
    """A private Postfix offering STARTTLS with the test certificate."""

    @classmethod
    def setUpClass(cls):
        cls.postfix = PrivatePostfix(tls=True)
        cls.addClassCleanup(cls.postfix.cleanup)
        cls.postfix.start()

    def check_delivered_with_tls(self, gw, subject):
        msg = make_message(subject=subject)
        final = self.send_ok(gw, msg, source_addr="127.0.0.2")
        got = self.postfix.find_delivered(_msgid(msg))
        text = got.decode("utf-8", "replace")
        # Received: from the client's HELO and address (XCLIENT, sent under
        # TLS) and "using TLSv1.3 with cipher" (smtpd_tls_received_header).
        self.assertRegex(text, r"Received: from helo\.client\.example\.test "
                         r"\([^)]*\[127\.0\.0\.2\]\)\s+\(using TLSv1\.[23] with cipher ")
        self.assertTrue(got.endswith(msg.replace(b"\r\n", b"\n")))
        self.postfix.wait_log(r"(Anonymous|Untrusted|Trusted) TLS connection established "
                              r"from \S+\[127\.0\.0\.1\]")
        self.assertRegex(gw.log, r"backend=%s TLS established: TLSv1\.[23] \S+"
                         % re.escape(self.postfix.addr))
        return final

    def test_opportunistic(self):
        gw = self.gateway([self.postfix], {"tls": "opportunistic"})
        self.check_delivered_with_tls(gw, "postfix opportunistic")

    def test_required_verified(self):
        gw = self.gateway([self.postfix], required("localhost"))
        self.check_delivered_with_tls(gw, "postfix required")

    def test_required_wrong_name(self):
        gw = self.gateway([self.postfix], required("mx.other.test"))
        self.expect_unavailable(gw)
        self.assertRegex(gw.log, r"TLS handshake failed: .*certificate verify failed.*"
                         r"[Hh]ostname mismatch")


if __name__ == "__main__":
    unittest.main()
