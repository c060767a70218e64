#!/usr/bin/env python3
"""The compose deployment's files, run natively by deploy/run-local.sh:
redis-server, a private Postfix with deploy/postfix/'s config, and smtpgate
with deploy/smtpgate/smtpgate.yaml and deploy/policy/, all on 127.0.0.1.
Runs as root (Postfix's master starts as root), as CI does."""

import base64
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    REPO_ROOT, DeployScript, SmtpClient, _pid_alive, gateway_bin, kill_pids,
    make_message, redis_command, script_argv, wait_until,
)

RUN_LOCAL = os.path.join(REPO_ROOT, "deploy", "run-local.sh")
PIDS_RX = re.compile(r"^pids\s+smtpgate=(\d+) postfix=(\d+) redis=(\d+)$", re.M)
PASSWORD = "local-test-password"


def _msgid(msg):
    return re.search(rb"^Message-ID: <([^>]+)>", msg, re.M).group(1)


def _env():
    env = dict(os.environ, SMTPGATE_BIN=gateway_bin(), RUN_LOCAL_PASSWORD=PASSWORD)
    env.pop("SMTPGATE_KEEP_TMP", None)
    return env


def _work_dir(out):
    m = re.search(r"^logs\s+(/tmp/smtpgate-local\.[^/\s]+)/", out, re.M)
    return m.group(1) if m else None


class RunLocalOnce(unittest.TestCase):
    """deploy/run-local.sh --once: two messages from swaks (port 25 with
    STARTTLS, port 587 with AUTH) arrive in Postfix's Maildir, then every
    process it started is gone and so is its directory."""

    def test_once_delivers_and_cleans_up(self):
        with tempfile.TemporaryFile() as out:
            p = subprocess.Popen(script_argv(RUN_LOCAL, ["--once"]),
                                 stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=_env(),
                                 start_new_session=True)
            try:
                rc = p.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
                rc = None
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        m = PIDS_RX.search(text)
        pids = [int(x) for x in m.groups()] if m else []
        self.addCleanup(kill_pids, pids)
        self.assertEqual(rc, 0, text)
        self.assertTrue(pids, text)
        delivered = re.findall(r"^delivered\s+<([^>]+)> in (\S+)$", text, re.M)
        self.assertEqual([d[0].split("@")[0].rsplit(".", 1)[1] for d in delivered],
                         ["25", "587"], text)
        self.assertTrue(all("/example.test/user/new/" in d[1] for d in delivered), text)
        self.assertTrue(text.rstrip().endswith("run-local.sh: stopped"), text)
        for pid in pids:
            self.assertFalse(_pid_alive(pid), "pid %d still runs:\n%s" % (pid, text))
        work = _work_dir(text)
        self.assertIsNotNone(work, text)
        self.assertFalse(os.path.exists(work), "%s left behind" % work)


class RunLocalServing(unittest.TestCase):
    """deploy/run-local.sh serving until SIGTERM, driven by the tests."""

    @classmethod
    def setUpClass(cls):
        cls.script = DeployScript(RUN_LOCAL, [], _env(), PIDS_RX)
        cls.addClassCleanup(cls.script.stop, 60)
        text = cls.script.start(90)
        cls.smtp_port = cls.script.port("smtp")
        cls.submission_port = cls.script.port("submission")
        cls.postfix_port = cls.script.port("postfix")
        cls.redis_port = cls.script.port("redis")
        cls.work = cls.script.work = _work_dir(text)
        cls.maildir = os.path.join(cls.work, "postfix", "mail", "example.test", "user")
        cls.maillog = os.path.join(cls.work, "postfix", "maillog")
        # The self-signed certificate run-local.sh made is the one to trust.
        cls.tls_ctx = ssl.create_default_context(
            cafile=os.path.join(cls.work, "smtpgate", "tls", "cert.pem"))

    def setUp(self):
        self.assertTrue(self.script.running(), "run-local.sh ended:\n" + self.script.text())

    def client(self, port, helo="client.example.test"):
        c = SmtpClient(port).connect()
        self.addCleanup(c.close)
        c.greet()
        c.ehlo(helo)
        return c

    def read_maillog(self):
        with open(self.maillog, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def find_delivered(self, msgid, timeout=20):
        """Waits for the Maildir file holding Message-ID msgid; returns it."""
        def look():
            d = os.path.join(self.maildir, "new")
            for name in os.listdir(d) if os.path.isdir(d) else []:
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read()
                if msgid in data:
                    return data
            return None
        return wait_until(look, timeout, "delivery of <%s>" % msgid.decode())

    def test_starttls_message_delivered_with_client_address(self):
        c = self.client(self.smtp_port)
        c.starttls(self.tls_ctx)
        c.ehlo("client.example.test")
        msg = make_message(subject="deploy starttls")
        final = c.transaction("sender@client.example.test", ["user@example.test"], msg)
        self.assertRegex(str(final), r"^250 2\.0\.0 Ok: queued as ")
        c.expect(221, line="QUIT")
        got = self.find_delivered(_msgid(msg))
        self.assertTrue(got.endswith(msg.replace(b"\r\n", b"\n")), got)
        # XCLIENT: Postfix names the client and its HELO, not the gateway.
        self.assertRegex(got.decode(), r"Received: from client\.example\.test \([^)]*\[127\.0\.0\.1\]\)")

    def test_relay_refused_by_gateway_policy(self):
        c = self.client(self.smtp_port)
        c.expect(250, line="MAIL FROM:<sender@client.example.test>")
        c.expect(550, "5.7.1", "5.7.1 <someone@example.net>: Relay access denied",
                 line="RCPT TO:<someone@example.net>")

    def test_unknown_mailbox_refused_by_postfix(self):
        c = self.client(self.smtp_port)
        c.expect(250, line="MAIL FROM:<sender@client.example.test>")
        r = c.expect(550, "5.1.1", line="RCPT TO:<nobody@example.test>")
        self.assertIn("User unknown in virtual mailbox table", r.text)

    def test_policy_rule_refuses_our_own_name(self):
        c = SmtpClient(self.smtp_port).connect()
        self.addCleanup(c.close)
        c.greet()
        c.expect(550, "5.7.1", "5.7.1 You are not gate.example.test",
                 line="EHLO gate.example.test")

    def test_submission_wants_tls_then_auth(self):
        c = self.client(self.submission_port)
        c.expect(530, "5.7.0", line="MAIL FROM:<local@example.test>")
        c.starttls(self.tls_ctx)
        c.ehlo()
        c.expect(535, "5.7.8", line="AUTH PLAIN AGxvY2FsAHdyb25n")  # local/wrong

    def test_submission_auth_relays_through_postfix(self):
        c = self.client(self.submission_port)
        c.starttls(self.tls_ctx)
        c.ehlo()
        c.expect(235, "2.7.0", line="AUTH PLAIN " + _plain("local", PASSWORD))
        msg = make_message(subject="deploy submission")
        final = c.transaction("local@example.test", ["someone@example.net"], msg)
        self.assertRegex(str(final), r"^250 2\.0\.0 Ok: queued as ")
        c.expect(221, line="QUIT")
        # Postfix relayed for the login smtpgate passed with XCLIENT.
        wait_until(lambda: re.search(r"sasl_method=XCLIENT, sasl_username=local\b",
                                     self.read_maillog()),
                   10, "sasl_username=local in Postfix's log")

    def test_rate_limits_counted_in_redis(self):
        c = self.client(self.smtp_port)
        c.expect(250, line="MAIL FROM:<sender@client.example.test>")
        c.expect(221, line="QUIT")
        # The MAIL was counted in the deployment's Redis, under the key
        # prefix of smtpgate.yaml.
        keys = redis_command(self.redis_port, "KEYS", "smtpgate:*")
        self.assertTrue(any(b"msgs-per-ip" in k and b"127.0.0.1" in k for k in keys), keys)

    def test_metrics_endpoint(self):
        # smtpgate.yaml's metrics: address, moved to 127.0.0.1 and a free port.
        import urllib.request
        port = self.script.port("metrics")
        c = self.client(self.smtp_port)
        c.expect(221, line="QUIT")
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            self.assertEqual(r.status, 200)
            text = r.read().decode()
        m = re.search(r'^smtpgate_connections_total\{listener="127\.0\.0\.1:%d"\} (\d+)$'
                      % self.smtp_port, text, re.M)
        self.assertIsNotNone(m, text[:2000])
        self.assertGreaterEqual(int(m.group(1)), 1)


def _plain(user, password):
    """The AUTH PLAIN initial response for user and password."""
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


if __name__ == "__main__":
    unittest.main(verbosity=2)
