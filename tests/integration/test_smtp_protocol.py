#!/usr/bin/env python3
"""Inbound SMTP behaviour of the gateway (in front of a RecordingBackend)."""

import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    CRLF, Gateway, GatewayTestCase, RecordingBackend, check_reply, dot_stuff, make_message, wait_until,
)

HOST = "gate.example.test"
MAX_SIZE = 52428800


class Greeting(GatewayTestCase):
    OVERRIDES = {"limits": {"max_recipients": 3}}

    def test_greeting_names_host_and_smtpgate(self):
        c = self.client(greet=False)
        r = c.read_reply()
        self.assertEqual(r.raw, ("220 %s ESMTP smtpgate\r\n" % HOST).encode())

    def test_ehlo_first_line_is_hostname(self):
        c = self.client()
        r = c.expect(250, line="EHLO client.example.test")
        self.assertEqual(r.lines[0], "250-" + HOST)

    def test_ehlo_advertises_keywords(self):
        c = self.client()
        r = c.expect(250, line="EHLO client.example.test")
        kws = [t.upper() for t in r.texts[1:]]
        for kw in ("PIPELINING", "SIZE %d" % MAX_SIZE, "8BITMIME", "ENHANCEDSTATUSCODES",
                   "SMTPUTF8", "DSN"):
            self.assertIn(kw, kws, "EHLO reply: %s" % (r,))
        self.assertTrue(r.lines[-1].startswith("250 "), r.lines)
        self.assertTrue(all(l.startswith("250-") for l in r.lines[:-1]), r.lines)

    def test_ehlo_does_not_advertise_xclient_or_xforward(self):
        c = self.client()
        r = c.expect(250, line="EHLO client.example.test")
        kws = [t.split()[0].upper() for t in r.texts[1:] if t.strip()]
        self.assertNotIn("XCLIENT", kws)
        self.assertNotIn("XFORWARD", kws)

    def test_helo_single_line(self):
        c = self.client()
        r = c.expect(250, line="HELO client.example.test")
        self.assertEqual(r.raw, ("250 %s\r\n" % HOST).encode())


class Commands(GatewayTestCase):
    OVERRIDES = {"limits": {"max_recipients": 3}}

    def test_noop(self):
        c = self.client()
        c.expect(250, "2.0.0", "2.0.0 Ok", line="NOOP")

    def test_rset(self):
        c = self.client(ehlo=True)
        c.expect(250, "2.0.0", "2.0.0 Ok", line="RSET")

    def test_rset_ends_transaction(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(250, "2.0.0", "2.0.0 Ok", line="RSET")
        # A new MAIL is not "nested" after RSET.
        c.expect(250, line="MAIL FROM:<a@client.example.test>")

    def test_vrfy(self):
        c = self.client(ehlo=True)
        c.expect(252, "2.0.0", line="VRFY user")

    def test_expn_disabled(self):
        c = self.client(ehlo=True)
        c.expect(502, "5.5.1", line="EXPN staff")

    def test_help(self):
        c = self.client()
        c.expect(214, "2.0.0", line="HELP")

    def test_quit_replies_and_closes(self):
        c = self.client()
        c.expect(221, "2.0.0", "2.0.0 Bye", line="QUIT")
        self.assertEqual(c.wait_closed(5), b"")

    def test_lowercase_verbs_accepted(self):
        c = self.client()
        c.expect(250, line="ehlo client.example.test")
        c.expect(250, "2.0.0", "2.0.0 Ok", line="noop")

    def test_unknown_command(self):
        c = self.client()
        c.expect(500, "5.5.2", "5.5.2 Error: command not recognized", line="FROB x")

    def test_unknown_command_keeps_session(self):
        c = self.client()
        c.expect(500, "5.5.2", line="FROB x")
        c.expect(250, "2.0.0", "2.0.0 Ok", line="NOOP")

    def test_starttls_not_offered(self):
        c = self.client(ehlo=True)
        r = c.cmd("STARTTLS")
        self.assertGreaterEqual(r.code, 500, str(r))

    def test_auth_not_offered(self):
        c = self.client(ehlo=True)
        r = c.cmd("AUTH PLAIN AGZvbwBiYXI=")
        self.assertGreaterEqual(r.code, 500, str(r))


class Sequence(GatewayTestCase):
    OVERRIDES = {"limits": {"max_recipients": 3}}

    def test_mail_before_helo(self):
        c = self.client()
        c.expect(503, "5.5.1", line="MAIL FROM:<a@client.example.test>")

    def test_rcpt_before_mail(self):
        c = self.client(ehlo=True)
        c.expect(503, "5.5.1", line="RCPT TO:<user@example.test>")

    def test_nested_mail(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(503, "5.5.1", line="MAIL FROM:<b@client.example.test>")

    def test_data_before_mail(self):
        c = self.client(ehlo=True)
        c.expect(503, "5.5.1", line="DATA")

    def test_data_before_rcpt(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(503, "5.5.1", line="DATA")

    def test_data_when_every_rcpt_rejected(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(550, "5.1.1", line="RCPT TO:<bad@example.test>")
        c.expect(554, "5.5.1", line="DATA")

    def test_session_usable_after_554(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(550, line="RCPT TO:<bad@example.test>")
        c.expect(554, "5.5.1", line="DATA")
        c.expect(250, line="RSET")
        c.transaction("a@client.example.test", ["user@example.test"], make_message())


class Arguments(GatewayTestCase):
    OVERRIDES = {"limits": {"max_recipients": 3}}

    def test_mail_without_brackets(self):
        c = self.client(ehlo=True)
        c.expect(501, ("5.5.4", "5.1.7"), line="MAIL FROM:bad")

    def test_mail_without_argument(self):
        c = self.client(ehlo=True)
        c.expect(501, ("5.5.4", "5.1.7"), line="MAIL")

    def test_bad_sender_path(self):
        c = self.client(ehlo=True)
        c.expect(501, ("5.1.7", "5.5.4"), line="MAIL FROM:<a@@client.example.test>")

    def test_bad_recipient_path(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(501, "5.1.3", line="RCPT TO:<user@@example.test>")

    def test_recipient_without_brackets(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(501, ("5.1.3", "5.5.4"), line="RCPT TO:user@example.test")

    def test_null_sender_accepted(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<>")

    def test_unknown_mail_parameter(self):
        c = self.client(ehlo=True)
        c.expect(555, "5.5.4", line="MAIL FROM:<a@client.example.test> FOO=1")

    def test_mail_size_over_limit(self):
        c = self.client(ehlo=True)
        c.expect(552, "5.3.4", line="MAIL FROM:<a@client.example.test> SIZE=%d" % (MAX_SIZE + 1))

    def test_mail_size_at_limit_accepted(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test> SIZE=%d" % MAX_SIZE)

    def test_known_parameters_accepted(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test> BODY=8BITMIME RET=HDRS ENVID=x1")
        c.expect(250, line="RCPT TO:<user@example.test> NOTIFY=SUCCESS,FAILURE "
                           "ORCPT=rfc822;user@example.test")

    def test_utf8_sender_without_smtputf8(self):
        c = self.client(ehlo=True)
        c.expect(553, "5.6.7", line="MAIL FROM:<j\u00f6rg@client.example.test>")

    def test_utf8_sender_with_smtputf8_forwarded(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<j\u00f6rg@client.example.test> SMTPUTF8")
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        c.expect(250)
        msg = self.backend.messages[-1]
        self.assertIn("j\u00f6rg@client.example.test".encode(), msg.mail_line)
        self.assertIn(b"SMTPUTF8", msg.mail_line.upper())

    def test_too_many_recipients(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        for i in range(3):
            c.expect(250, line="RCPT TO:<user%d@example.test>" % i)
        for i in range(3, 5):
            c.expect(452, "4.5.3", line="RCPT TO:<user%d@example.test>" % i)

    def test_too_many_recipients_keeps_first_ones(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        for i in range(5):
            c.cmd("RCPT TO:<keep%d@example.test>" % i)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        r = c.expect(250)
        msg = [m for m in self.backend.messages if r.text.endswith(m.queue_id)]
        self.assertEqual(len(msg), 1, str(r))
        self.assertEqual(msg[0].rcpts, ["keep0@example.test", "keep1@example.test",
                                        "keep2@example.test"])


class LineLimits(GatewayTestCase):
    OVERRIDES = {"limits": {"max_line_length": 512}}

    def test_line_too_long(self):
        c = self.client()
        c.expect(500, "5.5.2", line="NOOP " + "x" * 600)

    def test_line_too_long_keeps_session(self):
        c = self.client()
        c.expect(500, "5.5.2", line="NOOP " + "x" * 600)
        c.expect(250, "2.0.0", "2.0.0 Ok", line="NOOP")

    def test_long_line_in_pieces(self):
        c = self.client()
        for _ in range(4):
            c.send(b"y" * 400)
        c.send(CRLF)
        c.expect(500, "5.5.2")
        c.expect(250, "2.0.0", "2.0.0 Ok", line="NOOP")

    def test_line_at_limit_accepted(self):
        c = self.client()
        line = "NOOP " + "x" * (512 - 2 - 5)
        self.assertEqual(len(line) + 2, 512)
        c.expect(250, "2.0.0", line=line)

    def test_bare_lf_command(self):
        c = self.client()
        c.send(b"NOOP\n")
        r = c.read_reply()
        check_reply(r, 5, "5.5.2")

    def test_bare_cr_in_command(self):
        c = self.client()
        c.send(b"NOOP\rNOOP\r\n")
        r = c.read_reply()
        check_reply(r, 5, "5.5.2")


class MaxErrors(GatewayTestCase):
    OVERRIDES = {"limits": {"max_errors": 3}}

    def test_too_many_errors_421_and_close(self):
        c = self.client()
        replies = []
        for i in range(4):
            try:
                c.sendline("FROB %d" % i)
            except OSError:
                pass
            r = c.read_reply()
            replies.append(r)
            if r.code == 421:
                break
        codes = [r.code for r in replies]
        self.assertEqual(replies[-1].code, 421, codes)
        check_reply(replies[-1], 421, "4.7.0")
        self.assertIn(len(replies), (3, 4), "421 after %d errors: %s" % (len(replies), codes))
        self.assertTrue(all(x == 500 for x in codes[:-1]), codes)
        self.assertEqual(c.wait_closed(5), b"")

    def test_errors_below_limit_keep_session(self):
        c = self.client()
        c.expect(500, line="FROB 1")
        c.expect(500, line="FROB 2")
        c.expect(250, "2.0.0", line="NOOP")


class MaxConnections(GatewayTestCase):
    """A fresh gateway per test: slots freed by the previous test's closes
    would otherwise be counted late."""
    OVERRIDES = {"limits": {"max_connections": 2}}

    @classmethod
    def setUpClass(cls):
        cls.backend = RecordingBackend()
        cls.addClassCleanup(cls.backend.stop)

    def setUp(self):
        self.gw = Gateway(self.backends(), self.OVERRIDES, name="maxconn")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()
        super().setUp()

    def test_connection_over_limit_gets_421(self):
        self.client()
        self.client()
        c = self.client(greet=False)
        c.expect(421, "4.7.0")
        self.assertEqual(c.wait_closed(5), b"")

    def test_slot_freed_after_close(self):
        a = self.client()
        self.client()
        a.expect(221, line="QUIT")
        a.wait_closed()

        def greeted():
            c = self.client(greet=False)
            r = c.read_reply()
            return r if r.code == 220 else None
        # The gateway notices the close asynchronously: retry until a new
        # session is let in.
        wait_until(greeted, 10, "a 220 after a slot was freed")


class QuietListener(GatewayTestCase):
    """quiet: true (a health-check listener): a session without a
    transaction or an error logs its end at debug; anything else, and every
    session on another listener, at info."""
    OVERRIDES = {"listen": [{"quiet": True}, {}]}

    def session_end(self, helo):
        m = wait_until(lambda: re.search(r"^\S+ (\w+) session end session=\S+ client=\S+ "
                                         r"helo=%s " % re.escape(helo), self.gw.log, re.M),
                       10, "the session end line of " + helo)
        return m.group(1)

    def session_level(self, listener, helo, between=None):
        """The level at which the gateway logs the end of a session on
        listener: EHLO helo, between(c) when given, QUIT."""
        c = self.client(listener=listener)
        c.expect(250, line="EHLO " + helo)
        if between:
            between(c)
        c.expect(221, line="QUIT")
        return self.session_end(helo)

    def test_check_session_logs_at_debug(self):
        self.assertEqual(self.session_level(0, "check.quiet.test"), "debug")

    def test_session_with_transaction_logs_at_info(self):
        def transaction(c):
            c.transaction("a@client.example.test", ["user@example.test"], make_message())
        self.assertEqual(self.session_level(0, "mail.quiet.test", transaction), "info")

    def test_session_with_error_logs_at_info(self):
        def error(c):
            c.expect(500, line="FROB")
        self.assertEqual(self.session_level(0, "error.quiet.test", error), "info")

    def test_other_listener_logs_at_info(self):
        self.assertEqual(self.session_level(1, "loud.quiet.test"), "info")


class ClientTimeouts(GatewayTestCase):
    OVERRIDES = {"timeouts": {"command": "1s", "data": "1s"}}

    def test_idle_client_gets_421(self):
        c = self.client(ehlo=True)
        c.expect(421, "4.4.2", timeout=10)
        self.assertEqual(c.wait_closed(5), b"")

    def test_active_client_outlives_the_timeout(self):
        # Commands 0.3 s apart for over twice the 1 s timeout: the timeout
        # counts from the last command (the timer, started once, fires
        # early and starts again for what is left), so none gets 421.
        c = self.client(ehlo=True)
        t_end = time.monotonic() + 2.4
        while time.monotonic() < t_end:
            c.expect(250, line="NOOP")
            time.sleep(0.3)  # the client's idle time is what is under test
        c.expect(421, "4.4.2", timeout=10)
        self.assertEqual(c.wait_closed(5), b"")

    def test_stalled_data_gets_421_and_no_message(self):
        n = len(self.backend.messages)
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        c.send(b"Subject: stalled\r\n\r\nno end")
        c.expect(421, "4.4.2", timeout=10)
        c.wait_closed(5)
        self.assertEqual(self.backend.messages[n:], [])


class ClientXclient(GatewayTestCase):

    def _forwarded_tokens(self):
        raw = self.backend.all_raw()
        return raw

    def test_xclient_from_client_rejected(self):
        c = self.client(ehlo=True)
        c.expect(550, "5.7.0", line="XCLIENT ADDR=1.2.3.4")

    def test_xforward_from_client_rejected(self):
        c = self.client(ehlo=True)
        c.expect(550, "5.7.0", line="XFORWARD ADDR=1.2.3.4")

    def test_xclient_from_client_not_forwarded(self):
        n = len(self.backend.connections)
        c = self.client(ehlo=True)
        c.expect(5, line="XCLIENT ADDR=1.2.3.4 NAME=spoofed.example")
        c.expect(5, line="XFORWARD ADDR=1.2.3.4 NAME=spoofed.example")
        c.transaction("a@client.example.test", ["user@example.test"], make_message())
        conns = self.backend.connections[n:]
        self.assertEqual(len(conns), 1)
        raw = bytes(conns[0].raw)
        self.assertNotIn(b"1.2.3.4", raw)
        self.assertNotIn(b"spoofed", raw)
        self.assertNotIn(b"XFORWARD", raw)
        self.assertEqual(conns[0].xclient.get("ADDR"), "127.0.0.1")


class BackendReplies(GatewayTestCase):
    RCPT_REPLIES = {
        "bad@example.test": "550 5.1.1 <bad@example.test>: Recipient address rejected",
        "multi@example.test": ["450-4.2.0 <multi@example.test>: first line",
                               "450-4.2.0 second line",
                               "450 4.2.0 third line"],
    }
    MAIL_REPLIES = {
        "odd@client.example.test": "250 2.1.0 Sender odd@client.example.test is fine",
    }

    def test_rcpt_reject_verbatim(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        r = c.cmd("RCPT TO:<bad@example.test>")
        self.assertEqual(r.raw, b"550 5.1.1 <bad@example.test>: Recipient address rejected\r\n")

    def test_rcpt_multiline_verbatim(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        r = c.cmd("RCPT TO:<multi@example.test>")
        self.assertEqual(r.raw, b"450-4.2.0 <multi@example.test>: first line\r\n"
                                b"450-4.2.0 second line\r\n450 4.2.0 third line\r\n")

    def test_mail_reply_verbatim(self):
        c = self.client(ehlo=True)
        r = c.cmd("MAIL FROM:<odd@client.example.test>")
        self.assertEqual(r.raw, b"250 2.1.0 Sender odd@client.example.test is fine\r\n")

    def test_rcpt_ok_verbatim(self):
        c = self.client(ehlo=True)
        c.expect(250, line="MAIL FROM:<a@client.example.test>")
        r = c.cmd("RCPT TO:<user@example.test>")
        self.assertEqual(r.raw, b"250 2.1.5 Ok\r\n")

    def test_data_reply_verbatim_with_queue_id(self):
        c = self.client(ehlo=True)
        final = c.transaction("a@client.example.test", ["user@example.test"], make_message())
        msg = self.backend.wait_messages(1)[-1]
        self.assertEqual(final.raw, ("250 2.0.0 Ok: queued as %s\r\n" % msg.queue_id).encode())

    def test_data_reject_verbatim(self):
        self.backend.data_reply = ["554-5.7.1 rejected by content filter", "554 5.7.1 go away"]
        c = self.client(ehlo=True)
        final = c.transaction("a@client.example.test", ["user@example.test"], make_message(),
                              expect_final=None)
        self.assertEqual(final.raw, b"554-5.7.1 rejected by content filter\r\n"
                                    b"554 5.7.1 go away\r\n")


if __name__ == "__main__":
    unittest.main()
