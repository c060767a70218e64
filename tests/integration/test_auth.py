#!/usr/bin/env python3
"""SMTP AUTH (RFC 4954) on a submission listener: PLAIN and LOGIN, offered
only under TLS, checked against a file of crypt(3) hashes; an
authenticated session may relay, the backend learns the login from
XCLIENT LOGIN=, failures are counted and logged."""

import base64
import os
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Gateway, GatewayTestCase, RecordingBackend, gateway_bin, make_message, tls_listener,
    wait_until,
)

SENDER = "alice@example.test"
LOCAL_RCPT = "user@example.test"
REMOTE_RCPT = "friend@elsewhere.test"


def sha512_crypt(password):
    """A SHA-512-crypt hash made by the openssl command."""
    return subprocess.run(["openssl", "passwd", "-6", password], check=True,
                          capture_output=True, text=True).stdout.strip()


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


USERS = None


def users_text():
    global USERS
    if USERS is None:
        USERS = ("# test users\n\nalice:%s\nbob@example.test:%s\n"
                 % (sha512_crypt("alice-secret"), sha512_crypt("bob secret")))
    return USERS


POLICY = """
relay:
  local_domains: [example.test]
"""


class Auth(GatewayTestCase):
    """listen[0]: STARTTLS with AUTH; listen[1]: STARTTLS without AUTH."""

    OVERRIDES = {"listen": [tls_listener("starttls", auth=True), tls_listener("starttls")],
                 "auth": {"users_file": "users"}}
    POLICY = POLICY

    @classmethod
    def setUpClass(cls):
        cls.backend = RecordingBackend()
        cls.addClassCleanup(cls.backend.stop)
        cls.gw = Gateway([cls.backend.addr], cls.OVERRIDES, name=cls.__name__,
                         policy=cls.POLICY)
        cls.addClassCleanup(cls.gw.stop_and_check)
        with open(os.path.join(cls.gw.dir, "users"), "w") as f:
            f.write(users_text())
        os.chmod(os.path.join(cls.gw.dir, "users"), 0o600)
        cls.gw.start()

    def tls_client(self, listener=0):
        c = self.client(listener=listener, ehlo=True)
        c.starttls()
        return c

    def test_auth_offered_only_under_tls(self):
        c = self.client(ehlo=False)
        r = c.ehlo()
        self.assertFalse(any(line[4:].startswith("AUTH") for line in r.lines))
        c.expect(538, "5.7.11", line="AUTH PLAIN " + b64("\0alice\0alice-secret"))
        c.starttls()
        r = c.ehlo()
        self.assertIn("250-AUTH PLAIN LOGIN", r.lines)

    def test_plain_success_then_relay(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:<%s>" % REMOTE_RCPT)
        c.expect(250, line="RSET")
        c.expect(235, "2.7.0", line="AUTH PLAIN " + b64("\0alice\0alice-secret"))
        final = c.transaction(SENDER, [REMOTE_RCPT], make_message())
        msgs = [m for m in self.backend.wait_messages(1) if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0].conn.xclient.get("LOGIN"), "alice")
        c.expect(503, "5.5.1", line="AUTH PLAIN " + b64("\0alice\0alice-secret"))
        wait_until(lambda: "authenticated user=alice mechanism=PLAIN" in self.gw.log, 5,
                   "the log line")

    def test_plain_with_challenge(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(334, line="AUTH PLAIN")
        c.expect(235, "2.7.0", line=b64("bob@example.test\0bob@example.test\0bob secret"))

    def test_login(self):
        c = self.tls_client()
        c.ehlo()
        r = c.expect(334, line="AUTH LOGIN")
        self.assertEqual(r.lines[0], "334 VXNlcm5hbWU6")
        r = c.expect(334, line=b64("alice"))
        self.assertEqual(r.lines[0], "334 UGFzc3dvcmQ6")
        c.expect(235, "2.7.0", line=b64("alice-secret"))
        c.expect(250, line="MAIL FROM:<%s> AUTH=<>" % SENDER)
        c.expect(250, line="RCPT TO:<%s>" % REMOTE_RCPT)

    def test_login_with_initial_response(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(334, line="AUTH LOGIN " + b64("alice"))
        c.expect(235, line=b64("alice-secret"))

    def test_wrong_password_and_unknown_user(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(535, "5.7.8", line="AUTH PLAIN " + b64("\0alice\0wrong"))
        c.expect(535, "5.7.8", line="AUTH PLAIN " + b64("\0mallory\0alice-secret"))
        c.expect(535, "5.7.8", line="AUTH PLAIN " + b64("\0Alice\0alice-secret"))
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:<%s>" % REMOTE_RCPT)
        wait_until(lambda: "authentication failed user=mallory" in self.gw.log, 5,
                   "the log line")
        self.assertNotIn("alice-secret", self.gw.log)

    def test_bad_responses(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(501, "5.5.2", line="AUTH PLAIN not*base64")
        c.expect(334, line="AUTH PLAIN")
        c.expect(501, "5.7.0", line="*")
        c.expect(504, "5.5.4", line="AUTH CRAM-MD5")
        c.expect(535, "5.7.8", line="AUTH PLAIN " + b64("zed\0alice\0alice-secret"))
        c.expect(501, line="AUTH PLAIN =")
        c.expect(250, "2.0.0", line="NOOP")

    def test_overlong_response_ends_the_exchange(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(334, line="AUTH PLAIN")
        c.expect(500, "5.5.2", line="A" * 13000)
        c.expect(250, "2.0.0", line="NOOP")

    def test_auth_in_transaction(self):
        c = self.tls_client()
        c.ehlo()
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(503, "5.5.1", line="AUTH PLAIN " + b64("\0alice\0alice-secret"))

    def test_pipelined_after_auth(self):
        # The password check runs off the loop; commands pipelined behind
        # AUTH wait for its answer and keep their order.
        c = self.tls_client()
        c.ehlo()
        c.send("AUTH PLAIN %s\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n"
               % (b64("\0alice\0alice-secret"), SENDER, REMOTE_RCPT))
        c.expect(235)
        c.expect(250)
        c.expect(250)

    def test_listener_without_auth(self):
        c = self.tls_client(listener=1)
        r = c.ehlo()
        self.assertFalse(any(line[4:].startswith("AUTH") for line in r.lines))
        c.expect(502, "5.5.1", line="AUTH PLAIN " + b64("\0alice\0alice-secret"))

    def test_reload_rereads_users(self):
        path = os.path.join(self.gw.dir, "users")
        with open(path, "a") as f:
            f.write("carol:%s\n" % sha512_crypt("carol-pw"))
        self.gw.signal(signal.SIGHUP)

        def carol_ok():
            c = self.tls_client()
            try:
                c.ehlo()
                c.sendline("AUTH PLAIN " + b64("\0carol\0carol-pw"))
                return c.read_reply().code == 235
            finally:
                c.close()
        wait_until(carol_ok, 10, "carol's login after the reload", 0.1)


class AuthFailuresCounted(GatewayTestCase):
    """Failed logins count toward max_failures_per_client."""

    OVERRIDES = {"listen": [tls_listener("starttls", auth=True)],
                 "auth": {"users_file": "users"},
                 "limits": {"max_failures_per_client": 3, "failure_window": "10m"}}

    @classmethod
    def setUpClass(cls):
        Auth.setUpClass.__func__(cls)

    def test_failures_lead_to_421(self):
        c = self.client(ehlo=True)
        c.starttls()
        c.ehlo()
        for _ in range(3):
            c.expect(535, line="AUTH PLAIN " + b64("\0alice\0guess"))
        c2 = self.client(greet=False)
        c2.expect(421, "4.7.0")


class AuthConfig(unittest.TestCase):
    def run_t(self, listen, users=None):
        d = __import__("tempfile").mkdtemp(prefix="smtpgate-authcfg-")
        self.addCleanup(__import__("shutil").rmtree, d, True)
        text = "listen:\n" + listen + "backend: { servers: [127.0.0.1:25] }\n"
        if users is not None:
            with open(os.path.join(d, "users"), "w") as f:
                f.write(users)
            text += "auth: { users_file: users }\n"
        with open(os.path.join(d, "c.yaml"), "w") as f:
            f.write(text)
        return subprocess.run([gateway_bin(), "-t", "-c", os.path.join(d, "c.yaml")],
                              capture_output=True, text=True)

    def test_auth_needs_tls(self):
        p = self.run_t("  - address: 127.0.0.1:2525\n    auth: true\n", users="")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("auth needs tls", p.stderr + p.stdout)

    def test_auth_needs_users_file(self):
        t = tls_listener("starttls")
        p = self.run_t("  - address: 127.0.0.1:2525\n    tls: starttls\n    auth: true\n"
                       "    cert_file: %s\n    key_file: %s\n" % (t["cert_file"], t["key_file"]))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("auth needs auth: users_file", p.stderr + p.stdout)

    def test_bad_users_file(self):
        t = tls_listener("starttls")
        p = self.run_t("  - address: 127.0.0.1:2525\n    tls: starttls\n    auth: true\n"
                       "    cert_file: %s\n    key_file: %s\n" % (t["cert_file"], t["key_file"]),
                       users="alice:plaintext\n")
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr + p.stdout, r"users:1:\d+: ")


if __name__ == "__main__":
    unittest.main()
