#!/usr/bin/env python3
"""The gateway in front of a private, real Postfix instance."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Gateway, PrivatePostfix, check_reply, dot_stuff, make_message, show_log_tail,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
QUEUED_RX = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)\r\n$")


def _msgid(msg):
    m = re.search(rb"^Message-ID: <([^>]+)>", msg, re.M)
    return m.group(1).decode()


class ViaPostfix(unittest.TestCase):

    OVERRIDES = {}
    EHLOS = 2   # EHLOs Postfix gets per connection: ours, then the client's

    @classmethod
    def setUpClass(cls):
        cls.postfix = PrivatePostfix()
        cls.addClassCleanup(cls.postfix.cleanup)
        cls.postfix.start()
        cls.gw = Gateway([cls.postfix.addr], cls.OVERRIDES, name="postfix")
        cls.addClassCleanup(cls.gw.stop_and_check)
        cls.gw.start()

    def setUp(self):
        self.assertTrue(self.gw.running(), "gateway is not running")

    def tearDown(self):
        if not self.gw.running():
            show_log_tail(self.gw, self.id())

    def client(self, source_addr=None):
        c = self.gw.client(source_addr=source_addr)
        self.addCleanup(c.close)
        c.expect(250, line="EHLO helo.client.example.test")
        return c

    def _send(self, msg, source_addr="127.0.0.2"):
        c = self.client(source_addr)
        final = c.transaction(SENDER, [RCPT], msg)
        c.expect(221, line="QUIT")
        return final

    def test_message_arrives_intact(self):
        msg = make_message(subject="intact", body_lines=[
            b"first line", b".leading dot", b"..", b".", b"", b"tab\tand  spaces  ",
            b"8bit \xc3\xa9\xc3\xa8", b"x" * 900, b"last"])
        self._send(msg)
        got = self.postfix.find_delivered(_msgid(msg).encode())
        # Postfix stores lines with LF and prepends its own headers
        # (Return-Path, X-Original-To, Delivered-To, Received).
        want = msg.replace(b"\r\n", b"\n")
        self.assertTrue(got.endswith(want), "delivered:\n%r\nwanted suffix:\n%r" % (got, want))
        head = got[:len(got) - len(want)]
        self.assertTrue(all(l.startswith((b"Return-Path:", b"X-Original-To:", b"Delivered-To:",
                                          b"Received:", b"\t", b" "))
                            for l in head.splitlines()), head)

    def test_received_header_shows_client_address(self):
        msg = make_message(subject="received header")
        self._send(msg)
        got = self.postfix.find_delivered(_msgid(msg).encode())
        self.assertRegex(got.decode("utf-8", "replace"),
                         r"Received: from helo\.client\.example\.test \([^)]*\[127\.0\.0\.2\]\)")

    def test_log_shows_original_client_address(self):
        msg = make_message(subject="log client")
        final = self._send(msg)
        m = QUEUED_RX.match(final.raw.decode())
        self.assertIsNotNone(m, str(final))
        qid = m.group(1)
        self.postfix.wait_log(r"%s: client=[^\s\[]*\[127\.0\.0\.2\]" % re.escape(qid))

    def test_postfix_session_commands(self):
        # Postfix's own count of the session's commands (XCLIENT's 220
        # starts its counts again, so the last line is the client's).
        self._send(make_message(subject="commands"), source_addr="127.0.0.6")
        self.postfix.wait_log(r"disconnect from [^\s\[]*\[127\.0\.0\.6\] ehlo=%d " % self.EHLOS)

    def test_queue_id_relayed_verbatim(self):
        msg = make_message(subject="queue id")
        final = self._send(msg)
        m = QUEUED_RX.match(final.raw.decode())
        self.assertIsNotNone(m, "not Postfix's reply verbatim: %r" % final.raw)
        qid = m.group(1)
        self.postfix.wait_log(r"%s: message-id=<%s>" % (re.escape(qid), re.escape(_msgid(msg))))

    def test_gateway_not_trusted_for_relaying(self):
        c = self.client("127.0.0.2")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<user@elsewhere.test>")
        self.assertEqual(r.raw, b"454 4.7.1 <user@elsewhere.test>: Relay access denied\r\n")

    def test_smuggling_blocked_before_postfix(self):
        c = self.client("127.0.0.2")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        c.send(b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@evil.test>\r\n"
               b"RCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
        check_reply(c.read_reply(30), 550, "5.5.2")
        good = make_message(subject="after smuggle")
        c.transaction(SENDER, [RCPT], good)
        self.postfix.find_delivered(_msgid(good).encode())
        for m in self.postfix.read_mailbox():
            self.assertNotIn(b"smuggled", m)
            self.assertNotIn(b"evil.test", m)

    def test_dot_stuffing_preserved(self):
        msg = make_message(subject="dots", body_lines=[b".", b"..", b"...x", b".end"])
        self.assertIn(b"\r\n..\r\n", dot_stuff(msg))
        self._send(msg, source_addr=None)
        got = self.postfix.find_delivered(_msgid(msg).encode())
        self.assertTrue(got.endswith(b"\n.\n..\n...x\n.end\n"), got[-200:])


class ViaPostfixXclientFirst(ViaPostfix):
    """backend: xclient_before_ehlo: XCLIENT right after Postfix's 220, one
    EHLO (the client's) per connection; everything else the same."""

    OVERRIDES = {"backend": {"xclient_before_ehlo": True}}
    EHLOS = 1


class XclientFirstRefused(unittest.TestCase):
    """xclient_before_ehlo against a Postfix that does not authorize the
    gateway: Postfix refuses XCLIENT, the client gets 451 4.4.1 at MAIL and
    nothing is relayed under the gateway's own address."""

    @classmethod
    def setUpClass(cls):
        cls.postfix = PrivatePostfix(extra_main={"smtpd_authorized_xclient_hosts": ""})
        cls.addClassCleanup(cls.postfix.cleanup)
        cls.postfix.start()
        cls.gw = Gateway([cls.postfix.addr], {"backend": {"xclient_before_ehlo": True}},
                         name="postfix-noxclient")
        cls.addClassCleanup(cls.gw.stop_and_check)
        cls.gw.start()

    def test_refused(self):
        c = self.gw.client(source_addr="127.0.0.2")
        self.addCleanup(c.close)
        c.expect(250, line="EHLO helo.client.example.test")
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        check_reply(r, 451, "4.4.1")
        self.postfix.wait_log(r"disconnect from [^\s\[]*\[127\.0\.0\.1\] .*xclient=0/1")
        self.assertIn("refused in state XCLIENT", self.gw.log)


if __name__ == "__main__":
    unittest.main()
