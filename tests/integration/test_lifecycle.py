#!/usr/bin/env python3
"""Signals: SIGTERM (drain and exit), SIGHUP (reload)."""

import os
import re
import signal
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ConnectionClosed, Gateway, RecordingBackend, SmtpClient, dot_stuff, make_message,
    show_log_tail, wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
OLD = "old.example.test"
NEW = "new.example.test"


class LifecycleCase(unittest.TestCase):
    """A fresh backend and gateway per test (the tests end the process)."""

    OVERRIDES = {"hostname": OLD}

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], self.OVERRIDES, name="life")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def tearDown(self):
        # Show the log when the test failed.
        res = getattr(getattr(self, "_outcome", None), "result", None)
        if res is not None and any(t is self for t, _ in res.failures + res.errors):
            show_log_tail(self.gw, self.id())

    def client(self, ehlo=True):
        c = self.gw.client()
        self.addCleanup(c.close)
        if ehlo:
            c.expect(250, line="EHLO client.example.test")
        return c

    def start_data(self, c):
        """MAIL, RCPT, DATA; returns once the 354 is in."""
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")


class Sigterm(LifecycleCase):

    def test_idle_session_gets_421_and_is_closed(self):
        c = self.client()
        self.gw.signal(signal.SIGTERM)
        c.expect(421, "4.3.2", timeout=10)
        self.assertEqual(c.wait_closed(10), b"")

    def test_exits_0(self):
        self.client()
        self.gw.signal(signal.SIGTERM)
        self.assertEqual(self.gw.wait_exit(15), 0, self.gw.log[-2000:])

    def test_exits_0_without_sessions(self):
        self.gw.signal(signal.SIGTERM)
        self.assertEqual(self.gw.wait_exit(15), 0, self.gw.log[-2000:])

    def test_transaction_in_flight_completes(self):
        busy = self.client()
        idle = self.client()
        self.start_data(busy)
        msg = make_message(body_lines=[b"line %d" % i for i in range(100)])
        wire = dot_stuff(msg)
        busy.send(wire[:len(wire) // 2])
        self.gw.signal(signal.SIGTERM)
        # The idle session's 421 shows that the signal was handled.
        idle.expect(421, "4.3.2", timeout=10)
        busy.send(wire[len(wire) // 2:])
        final = busy.expect(250, timeout=20)
        m = self.backend.wait_messages(1)[0]
        self.assertEqual(final.raw, b"250 2.0.0 Ok: queued as " + m.queue_id.encode() + b"\r\n")
        self.assertEqual(m.data, wire)

    def test_exits_0_after_transaction_in_flight(self):
        busy = self.client()
        idle = self.client()
        self.start_data(busy)
        busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
        self.gw.signal(signal.SIGTERM)
        idle.expect(421, "4.3.2", timeout=10)
        self.assertTrue(self.gw.running(), "gateway exited with a transaction in flight")
        busy.send(b"second half\r\n.\r\n")
        busy.expect(250, timeout=20)
        self.assertEqual(self.gw.wait_exit(15), 0, self.gw.log[-2000:])

    def test_no_new_sessions_while_draining(self):
        busy = self.client()
        idle = self.client()
        self.start_data(busy)
        self.gw.signal(signal.SIGTERM)
        idle.expect(421, "4.3.2", timeout=10)
        # A new connection is refused, or told 421 right away.
        try:
            c = SmtpClient(self.gw.port, timeout=5).connect()
        except ConnectionRefusedError:
            return
        self.addCleanup(c.close)
        try:
            r = c.read_reply(5)
        except ConnectionClosed:
            return
        self.assertEqual(r.code, 421, str(r))


class Sighup(LifecycleCase):

    def reload_hostname(self, name):
        self.gw.reconfigure({"hostname": name})
        self.gw.signal(signal.SIGHUP)

    def wait_greeting(self, name, timeout=10):
        """Opens sessions until one greets with `name`; returns that reply."""
        def probe():
            c = self.gw.client(greet=False)
            try:
                r = c.read_reply(5)
                c.sendline("QUIT")
                return r if r.text.split(" ")[0] == name else None
            finally:
                c.close()
        return wait_until(probe, timeout, "a greeting from %s" % name, 0.05)

    def wait_config_error(self, offset):
        """Waits for the log to report an error in the config file
        (FILE:LINE:COL, as -t prints it)."""
        rx = re.compile(re.escape(self.gw.config_path) + r":\d+:\d+: ")
        wait_until(lambda: rx.search(self.gw.log_since(offset)), 10,
                   "a log line about the broken config")

    def test_new_session_sees_new_hostname(self):
        self.reload_hostname(NEW)
        r = self.wait_greeting(NEW)
        self.assertEqual(r.raw, ("220 %s ESMTP smtpgate\r\n" % NEW).encode())

    def test_old_session_keeps_old_hostname(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        self.reload_hostname(NEW)
        self.wait_greeting(NEW)
        r = c.expect(250, line="EHLO client.example.test")
        self.assertEqual(r.lines[0], "250-" + OLD)

    def test_transaction_across_reload(self):
        c = self.client()
        self.start_data(c)
        self.reload_hostname(NEW)
        self.wait_greeting(NEW)
        msg = make_message()
        c.send(dot_stuff(msg))
        c.expect(250)
        self.assertEqual(self.backend.wait_messages(1)[0].data, dot_stuff(msg))

    def test_reload_changes_backend(self):
        other = RecordingBackend()
        self.addCleanup(other.stop)
        self.gw.reconfigure({"hostname": NEW, "backend": {"servers": [other.addr]}})
        self.gw.signal(signal.SIGHUP)
        self.wait_greeting(NEW)
        c = self.client()
        c.transaction(SENDER, [RCPT], make_message())
        self.assertEqual(len(other.wait_messages(1)), 1)
        self.assertEqual(self.backend.messages, [])

    def test_broken_config_keeps_old(self):
        offset = self.gw.log_size()
        self.gw.write_config(text="hostname: %s\nlisten: [\n" % NEW)
        self.gw.signal(signal.SIGHUP)
        self.wait_config_error(offset)
        self.assertTrue(self.gw.running())
        c = self.gw.client(greet=False)
        self.addCleanup(c.close)
        r = c.read_reply()
        self.assertEqual(r.raw, ("220 %s ESMTP smtpgate\r\n" % OLD).encode())

    def test_broken_config_still_serving(self):
        offset = self.gw.log_size()
        self.gw.write_config(text="hostname: %s\nlimits:\n  max_recipients: many\n" % NEW)
        self.gw.signal(signal.SIGHUP)
        self.wait_config_error(offset)
        c = self.client()
        c.transaction(SENDER, [RCPT], make_message())
        self.assertTrue(self.gw.running())

    def test_broken_config_error_logged_with_position(self):
        offset = self.gw.log_size()
        self.gw.write_config(text="hostname: %s\nlimits:\n  max_recipients: many\n" % NEW)
        self.gw.signal(signal.SIGHUP)
        wait_until(lambda: re.search(re.escape(self.gw.config_path) + r":3:\d+:",
                                     self.gw.log_since(offset)), 10,
                   "FILE:3:COL in the log")


if __name__ == "__main__":
    unittest.main()
