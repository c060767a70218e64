#!/usr/bin/env python3
"""TLS toward clients: STARTTLS (RFC 3207), implicit TLS, require_tls,
certificates reloaded on SIGHUP, configuration errors."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    ConnectionClosed, Gateway, GatewayTestCase, RecordingBackend, client_tls_context,
    dot_stuff, gateway_bin, make_big_message, make_message, tls_files, tls_listener,
    wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"


def keywords(reply):
    """The EHLO keywords of a 250 reply, upper case."""
    return [line[4:].split(" ")[0].upper() for line in reply.lines[1:]]


class StartTls(GatewayTestCase):
    """A STARTTLS listener (listen[0]) and an implicit TLS one (listen[1])."""

    OVERRIDES = {"listen": [tls_listener("starttls"), tls_listener("implicit")]}

    def test_starttls_advertised_only_before_tls(self):
        c = self.client()
        self.assertIn("STARTTLS", keywords(c.ehlo()))
        c.starttls()
        self.assertEqual(c.tls_version, "TLSv1.3")
        self.assertNotIn("STARTTLS", keywords(c.ehlo()))

    def test_message_through_starttls(self):
        msg = make_big_message(300 * 1024)
        c = self.client(ehlo=True)
        c.starttls()
        c.ehlo()
        final = c.transaction(SENDER, [RCPT], msg)
        got = [m for m in self.backend.wait_messages(1) if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].data, dot_stuff(msg))
        c.expect(221, line="QUIT")
        self.assertEqual(c.wait_closed(), b"")

    def test_pipelined_after_starttls_is_discarded(self):
        # CVE-2011-0411: commands sent with STARTTLS in one write are never
        # executed, neither before nor after the handshake.
        c = self.client(ehlo=True)
        c.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<x@y.test>\r\n")
        c.expect(220, "2.0.0")
        c.tls()  # asserts nothing follows the 220 in plaintext
        r = c.ehlo()  # the first reply under TLS is EHLO's
        self.assertEqual(r.lines[0], "250-gate.example.test")
        c.expect(503, "5.5.1", line="RCPT TO:<%s>" % RCPT)
        wait_until(lambda: "discarded" in self.gw.log, 5, "the discard log line")

    def test_state_reset_after_starttls(self):
        c = self.client(ehlo=True)
        c.starttls()
        c.expect(503, "5.5.1", line="MAIL FROM:<%s>" % SENDER)
        c.ehlo()
        c.transaction(SENDER, [RCPT], make_message())

    def test_starttls_refused_when_misused(self):
        c = self.client(ehlo=True)
        c.expect(501, "5.5.4", line="STARTTLS now")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(503, "5.5.1", line="STARTTLS")
        c.expect(250, line="RSET")
        c.starttls()
        c.ehlo()
        c.expect(554, "5.5.1", line="STARTTLS")

    def test_bad_handshake_closes_only_that_session(self):
        c = self.client(ehlo=True)
        c.expect(220, line="STARTTLS")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.wait_closed()
        wait_until(lambda: "TLS handshake failed" in self.gw.log, 5, "the handshake log line")
        c2 = self.client(ehlo=True)
        c2.starttls()
        c2.ehlo()

    def test_client_closes_mid_handshake(self):
        c = self.client(ehlo=True)
        c.expect(220, line="STARTTLS")
        c.close()
        c2 = self.client(ehlo=True)
        c2.starttls()
        c2.ehlo()

    def test_tls12_client(self):
        ctx = client_tls_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        c = self.client(ehlo=True)
        c.starttls(ctx)
        self.assertEqual(c.tls_version, "TLSv1.2")
        self.assertIn("ECDHE", c.sock.cipher()[0])
        c.ehlo()
        c.transaction(SENDER, [RCPT], make_message())

    def test_tls11_client_refused(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_tls_context(minimum_version=ssl.TLSVersion.TLSv1,
                                     maximum_version=ssl.TLSVersion.TLSv1_1)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        c = self.client(ehlo=True)
        c.expect(220, line="STARTTLS")
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            c.tls(ctx)

    def test_version_logged(self):
        c = self.client(ehlo=True)
        c.starttls()
        c.ehlo()
        c.expect(221, line="QUIT")
        c.wait_closed()
        wait_until(lambda: "tls=TLSv1.3" in self.gw.log, 5, "the session end line")
        self.assertRegex(self.gw.log, r"TLS established: TLSv1\.3 TLS_")

    def test_implicit_tls(self):
        c = self.client(listener=1, greet=False)
        self.assertEqual(c.tls_version, "TLSv1.3")
        c.greet()
        self.assertNotIn("STARTTLS", keywords(c.ehlo()))
        c.expect(502, "5.5.1", line="STARTTLS")
        msg = make_message()
        final = c.transaction(SENDER, [RCPT], msg)
        got = [m for m in self.backend.wait_messages(1) if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(got[0].data, dot_stuff(msg))
        c.expect(221, line="QUIT")
        self.assertEqual(c.wait_closed(), b"")

    def test_implicit_tls_plaintext_client(self):
        # A plaintext client on the implicit port gets no greeting; the
        # gateway ends the session on the failed handshake.
        from harness import SmtpClient
        c = SmtpClient(self.gw.ports[1]).connect()
        self.addCleanup(c.close)
        c.send(b"EHLO x\r\n")
        c.wait_closed()


class RequireTls(GatewayTestCase):
    OVERRIDES = {"listen": [tls_listener("starttls", require_tls=True)]}

    def test_mail_before_starttls(self):
        c = self.client(ehlo=True)
        c.expect(530, "5.7.0", line="MAIL FROM:<%s>" % SENDER)
        c.starttls()
        c.ehlo()
        c.transaction(SENDER, [RCPT], make_message())
        self.assertEqual(len(self.backend.wait_messages(1)), 1)


class Tls13Only(GatewayTestCase):
    OVERRIDES = {"listen": [tls_listener("starttls", min_protocol="TLSv1.3")]}

    def test_tls12_refused(self):
        ctx = client_tls_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        c = self.client(ehlo=True)
        c.expect(220, line="STARTTLS")
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            c.tls(ctx)
        c2 = self.client(ehlo=True)
        c2.starttls()
        self.assertEqual(c2.tls_version, "TLSv1.3")


class HandshakeDeadline(GatewayTestCase):
    """A handshake has a fixed deadline: bytes trickling in do not extend
    it (timeouts.handshake)."""

    OVERRIDES = {"listen": [tls_listener("starttls")],
                 "timeouts": {"handshake": "1s", "command": "5m"}}

    def test_trickled_client_hello(self):
        c = self.client(ehlo=True)
        c.expect(220, line="STARTTLS")
        start = time.monotonic()
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
        closed = False
        for b in hello:
            try:
                c.send(bytes([b]))
            except OSError:
                closed = True
                break
            if c.pending(0.25) == b"" and c.eof:
                closed = True
                break
        if not closed:
            c.wait_closed(5)
        self.assertLess(time.monotonic() - start, 8)
        wait_until(lambda: "timeout" in self.gw.log, 5, "the timeout log line")


class CertificateReload(unittest.TestCase):
    def test_sighup_loads_new_certificate(self):
        backend = RecordingBackend()
        self.addCleanup(backend.stop)
        f = tls_files()
        gw = Gateway([backend.addr], name="tlsreload")
        self.addCleanup(gw.cleanup)
        cert = os.path.join(gw.dir, "cert.pem")
        key = os.path.join(gw.dir, "key.pem")
        for src, dst in ((f.chain, cert), (f.key, key)):
            with open(src) as a, open(dst, "w") as b:
                b.write(a.read())
        gw.config["listen"] = [{"address": "127.0.0.1:0", "tls": "starttls",
                                "cert_file": "cert.pem", "key_file": "key.pem"}]
        gw.start()

        def peer_cn():
            c = gw.client()
            try:
                c.ehlo()
                c.starttls(client_tls_context(verify=False))
                der = c.sock.getpeercert(binary_form=True)
                c.sendline("QUIT")
                return der
            finally:
                c.close()

        first = peer_cn()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=new.example.test",
                        "-days", "2", "-keyout", key + ".new", "-out", cert + ".new"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.rename(key + ".new", key)
        os.rename(cert + ".new", cert)
        gw.signal(signal.SIGHUP)
        second = wait_until(lambda: (lambda d: d if d != first else None)(peer_cn()), 10,
                            "the new certificate")
        self.assertIn(b"new.example.test", second)
        self.assertNotEqual(gw.stop(), None)


class ConfigErrors(unittest.TestCase):
    def check(self, listen_yaml, want):
        d = self.tmp = __import__("tempfile").mkdtemp(prefix="smtpgate-tlscfg-")
        self.addCleanup(__import__("shutil").rmtree, d, True)
        path = os.path.join(d, "c.yaml")
        with open(path, "w") as fh:
            fh.write("listen:\n" + listen_yaml + "backend: { servers: [127.0.0.1:25] }\n")
        p = subprocess.run([gateway_bin(), "-t", "-c", path], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(want, p.stderr + p.stdout)

    def test_missing_cert(self):
        self.check("  - address: 127.0.0.1:2525\n    tls: starttls\n",
                   "c.yaml:2:5: listen[0]: tls: starttls needs cert_file and key_file")

    def test_unreadable_cert(self):
        self.check("  - address: 127.0.0.1:2525\n    tls: implicit\n"
                   "    cert_file: /nonexistent/cert.pem\n    key_file: %s\n" % tls_files().key,
                   "listen[0]: cannot use cert_file /nonexistent/cert.pem")

    def test_key_mismatch(self):
        f = tls_files()
        self.check("  - address: 127.0.0.1:2525\n    tls: starttls\n"
                   "    cert_file: %s\n    key_file: %s\n" % (f.ca_cert, f.key),
                   "listen[0]: cannot use cert_file")

    def test_bad_mode(self):
        self.check("  - address: 127.0.0.1:2525\n    tls: sometimes\n",
                   "c.yaml:3:10: listen[0].tls: expected one of none, starttls, implicit")

    def test_require_tls_without_starttls(self):
        self.check("  - address: 127.0.0.1:2525\n    require_tls: true\n",
                   "listen[0]: require_tls needs tls: starttls")


if __name__ == "__main__":
    unittest.main()
