"""
test_limits.py: resource exhaustion.

  OutOfFileDescriptors  the gateway runs with a small RLIMIT_NOFILE: clients
                        past it get 421 4.7.0 (never a silent close), the
                        loop does not spin while they keep coming, and once
                        connections are released new clients are served.
                        (Running out of descriptors at accept(2) itself is
                        left to the reserve-descriptor path, which a test
                        cannot reach reliably: the gateway refuses
                        connections while a few descriptors are still free.)
  SlowClients           a client trickling a command line one byte at a
                        time is cut by the command timeout (it counts per
                        whole line, not per byte), with 421 4.4.2, while a
                        normal session completes a message meanwhile; one
                        trickling message data below limits.min_data_rate
                        is cut after about timeouts.data.
  FragmentedInput       a command line arriving in pieces (kept in a small
                        buffer between reads, then a full one) is one
                        command.

max_connections and max_connections_per_client (421 4.7.0) are covered by
test_smtp_protocol.MaxConnections and test_ratelimit.ConnectionsPerClient.
"""

import select
import time
import unittest

from harness import (Gateway, RecordingBackend, SmtpClient, check_reply, dot_stuff,
                     make_message, wait_until)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"


class OutOfFileDescriptors(unittest.TestCase):
    NOFILE = 64
    WORKERS = 2

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], {"workers": self.WORKERS}, name="nofile",
                          nofile=self.NOFILE)
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()
        self.clients = []
        self.addCleanup(self._close_all)

    def _close_all(self):
        for c in self.clients:
            c.close()

    def _connect(self):
        c = SmtpClient(self.gw.port, timeout=10).connect()
        self.clients.append(c)
        return c

    def test_excess_clients_get_421_without_spinning(self):
        served, refused = [], []
        # Fill the descriptor table: each client waits for its first reply,
        # 220 while there is room, then 421 4.7.0.
        while len(refused) < 3:
            self.assertLess(len(served), self.NOFILE, "never ran out of descriptors")
            c = self._connect()
            r = c.read_reply()
            if r.code == 220:
                # A session that holds a backend connection too, while
                # there is a descriptor for it (else 451 4.4.1 at MAIL).
                c.ehlo()
                r = c.cmd("MAIL FROM:<%s>" % SENDER)
                if r.code != 250:
                    check_reply(r, 451, "4.4.1")
                served.append((c, r.code == 250))
            else:
                check_reply(r, 421, "4.7.0")
                self.assertEqual(c.wait_closed(), b"")
                refused.append(c)
        self.assertGreater(len(served), 5)
        self.assertIn("out of file descriptors", self.gw.log)

        # While the table stays full, more clients keep coming: each is
        # answered at once (421 4.7.0; 220 when a descriptor came free,
        # one of a failed backend connection say), and the loop sleeps
        # between them.
        wall0, cpu0 = time.monotonic(), self.gw.cpu_seconds()
        for _ in range(10):
            c = self._connect()
            r = c.read_reply()
            if r.code != 220:
                check_reply(r, 421, "4.7.0")
            c.close()
        time.sleep(1.0)  # a window with clients waiting: measures CPU, no sync
        wall, cpu = time.monotonic() - wall0, self.gw.cpu_seconds() - cpu0
        # A spin detector, not a performance bound: a spinning accept loop
        # uses a whole core.
        self.assertLess(cpu, 0.5 * wall, "CPU %.2fs in %.2fs: accept loop spinning"
                        % (cpu, wall))

        # The held sessions still work.
        c = next(c for c, ok in served if ok)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(250, line="RSET")

        # Released: new clients are served again.
        for c, _ in served:
            c.close()

        def greeted():
            c = self._connect()
            r = c.read_reply()
            if r.code == 220:
                return c
            c.close()
            return None
        c = wait_until(greeted, 10, "a 220 after the connections were released")
        c.ehlo()
        c.transaction(SENDER, [RCPT], make_message("after exhaustion"))
        c.expect(221, line="QUIT")


class SlowClients(unittest.TestCase):
    TIMEOUT = 2.0  # timeouts.command and timeouts.data, seconds

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], {"timeouts": {
            "command": "%ds" % self.TIMEOUT, "data": "%ds" % self.TIMEOUT}}, name="slow")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def client(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        return c

    def trickle(self, c, data, halfway=None):
        """Sends data one byte every TIMEOUT/4 (less when a reply comes,
        which ends it) until a send fails; halfway() runs after the second
        byte.  Returns the count of bytes sent."""
        sent = 0
        for b in data:
            try:
                c.send(bytes([b]))
                sent += 1
            except OSError:
                break
            # Waits a quarter of the timeout, or less when a reply comes.
            if select.select([c.sock], [], [], self.TIMEOUT / 4)[0]:
                break
            if sent == 2 and halfway:
                halfway()
        return sent

    def test_trickled_command_line_cut_while_others_served(self):
        slow = self.client()
        slow.ehlo()
        line = b"MAIL FROM:<" + b"a" * 60 + b"@client.example.test>"
        # One byte every TIMEOUT/4: each well within the timeout, the line
        # never ended.  The gateway must cut it after about TIMEOUT.
        normal = self.client()
        normal.ehlo()
        normal.expect(250, line="MAIL FROM:<%s>" % SENDER)
        normal.expect(250, line="RCPT TO:<%s>" % RCPT)

        def halfway():
            # Halfway through the trickle, the other session finishes its
            # message.
            normal.expect(354, line="DATA")
            normal.send(dot_stuff(make_message("while a client trickles")))
            normal.expect(250)
        sent = self.trickle(slow, line, halfway)
        reply = slow.read_reply()
        check_reply(reply, 421, "4.4.2")
        self.assertEqual(slow.wait_closed(), b"")
        self.assertLess(sent, len(line), "the whole line went through")
        self.assertEqual(len(self.backend.messages), 1)
        normal.expect(221, line="QUIT")
        self.assertRegex(self.gw.log, r"timeout in state \w+")

    def test_trickled_message_data_cut(self):
        """Message data below limits.min_data_rate (500 bytes/s by default)
        is cut after about timeouts.data, though each byte comes well
        within it."""
        c = self.client()
        c.ehlo()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % RCPT)
        c.expect(354, line="DATA")
        data = dot_stuff(make_message("trickled"))
        sent = self.trickle(c, data)
        check_reply(c.read_reply(), 421, "4.4.2")
        self.assertEqual(c.wait_closed(), b"")
        self.assertLess(sent, len(data), "the whole message went through")
        self.assertEqual(self.backend.messages, [])
        self.assertIn("timeout in state DATA", self.gw.log)


class FragmentedInput(unittest.TestCase):
    """A command line that arrives in pieces: the gateway keeps a short
    partial line in a small buffer between reads and moves it to a full
    one when more comes (here, a line longer than that small buffer)."""

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], {"limits": {"max_line_length": 4096}},
                          name="fragments")
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def test_pieces_make_one_command(self):
        c = self.gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        line = b"NOOP " + b"x" * 3000 + b"\r\n"
        for piece in (line[:3], line[3:10], line[10:2500], line[2500:-1]):
            c.send(piece)
            # Separate reads, most likely; the reply is the same either way.
            self.assertEqual(c.pending(0.05), b"")
        c.send(line[-1:])
        c.expect(250, "2.0.0")
        c.transaction(SENDER, [RCPT], make_message("after pieces"))
        self.assertEqual(len(self.backend.messages), 1)


if __name__ == "__main__":
    unittest.main()
