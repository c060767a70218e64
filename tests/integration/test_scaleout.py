#!/usr/bin/env python3
"""deploy/scale-out.sh: haproxy (deploy/haproxy.cfg) in front of two smtpgate
instances with PROXY protocol listeners, one Redis, one private Postfix, all
on 127.0.0.1.  Clients connect from 127.0.0.7 and 127.0.0.9 (any 127/8
address is local); haproxy connects to the gateways from 127.0.10.1, their
only proxy_from.  Runs as root (Postfix's master starts as root), as CI
does; haproxy is installed by deploy/install-deps.sh and is required."""

import os
import re
import shutil
import signal
import sys
import tempfile
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    REPO_ROOT, DeployScript, SmtpClient, dot_stuff, gateway_bin, make_message,
    wait_until,
)

SCALE_OUT = os.path.join(REPO_ROOT, "deploy", "scale-out.sh")
PIDS_RX = re.compile(r"^pids\s+haproxy=(\d+) gate1=(\d+) gate2=(\d+) "
                     r"postfix=(\d+) redis=(\d+)$", re.M)
HAPROXY_SOURCE = "127.0.10.1"
CLIENT = "127.0.0.7"        # a client the policy lets through
REFUSED = "127.0.0.9"       # a client a policy rule refuses
LIMIT = 10                  # messages per sender domain, over both gateways
RCPT = "user@example.test"  # a mailbox of deploy/postfix/vmailbox

# The policy of both gateways: mail for example.test, one rule on the
# client address, one rate limit counted in the shared Redis.  A window of
# a day: after the burst of LIMIT, the next message would pass 2.4 hours
# later, long after the test.
POLICY = """
relay:
  local_domains: [example.test]
rules:
  - name: refuse-test-client
    match: { client: %(refused)s }
    action: reject
    reply: "550 5.7.1 Client refused by the scale-out test policy"
rate_limits:
  - name: msgs-per-sender-domain
    key: sender_domain
    count: messages
    limit: %(limit)d
    window: 24h
""" % {"refused": REFUSED, "limit": LIMIT}


def _domain():
    """A sender domain of its own for each test: its own rate-limit key."""
    return "s%s.client.example.test" % uuid.uuid4().hex[:10]


class ScaleOut(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if shutil.which("haproxy") is None and not os.path.exists("/usr/sbin/haproxy"):
            raise RuntimeError("haproxy is missing; deploy/install-deps.sh installs it")
        cls.policy_dir = tempfile.mkdtemp(prefix="smtpgate-scaleout-policy.")
        cls.addClassCleanup(shutil.rmtree, cls.policy_dir, True)
        os.chmod(cls.policy_dir, 0o755)
        with open(os.path.join(cls.policy_dir, "policy.yaml"), "w") as f:
            f.write(POLICY)
        # Redis answers slower than the deployment's 50 ms (a busy machine,
        # a sanitizer build) would let messages through uncounted.
        env = dict(os.environ, SMTPGATE_BIN=gateway_bin(), POLICY_DIR=cls.policy_dir,
                   HAPROXY_SOURCE=HAPROXY_SOURCE, REDIS_TIMEOUT="5s")
        env.pop("SMTPGATE_KEEP_TMP", None)
        cls.script = DeployScript(SCALE_OUT, ["run"], env, PIDS_RX)
        cls.addClassCleanup(cls.script.stop, 120)
        text = cls.script.start(120)
        cls.pids = cls.script.pids
        cls.smtp_port = cls.script.port("smtp")
        cls.postfix_port = cls.script.port("postfix")
        cls.gate_ports = [int(p) for p in re.search(
            r"^gate1\s+127\.0\.0\.1:(\d+) 127\.0\.0\.1:(\d+) .*check 127\.0\.0\.1:(\d+)$",
            text, re.M).groups()]
        logs = re.search(r"^logs\s+(.*)$", text, re.M).group(1).split()
        cls.gate_logs = logs[0:2]
        cls.maillog = logs[3]
        cls.work = cls.script.work = os.path.dirname(logs[0])
        cls.maildir = os.path.join(cls.work, "postfix", "mail", "example.test", "user")

    def setUp(self):
        self.assertTrue(self.script.running(), "scale-out.sh ended:\n" + self.script.text())

    # -- helpers -----------------------------------------------------------

    def connect(self, source=CLIENT, port=None):
        c = SmtpClient(port or self.smtp_port, source_addr=source).connect()
        self.addCleanup(c.close)
        return c

    def gate_log(self, n):
        with open(self.gate_logs[n], "rb") as f:
            return f.read().decode("utf-8", "replace")

    def read_maillog(self):
        with open(self.maillog, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def served_by(self, c):
        """The gateway (0 or 1) that logged the PROXY header of connection
        c: the client address and source port haproxy passed on."""
        needle = "client=%s port=%d via proxy %s (PROXY v2)" % (
            c.local_addr, c.local_port, HAPROXY_SOURCE)

        def look():
            hits = [n for n in (0, 1) if needle in self.gate_log(n)]
            return hits or None
        hits = wait_until(look, 10, needle)
        self.assertEqual(len(hits), 1, needle)
        return hits[0]

    def delivered(self, needle):
        """The Maildir files holding needle (bytes)."""
        d = os.path.join(self.maildir, "new")
        found = []
        for name in os.listdir(d) if os.path.isdir(d) else []:
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if needle in data:
                found.append(data)
        return found

    # -- tests -------------------------------------------------------------

    def test_client_address_reaches_gateway_and_postfix(self):
        c = self.connect()
        c.greet()
        c.ehlo("client.example.test")
        domain = _domain()
        msg = make_message(subject="scale-out " + domain)
        final = c.transaction("sender@" + domain, [RCPT], msg)
        self.assertRegex(str(final), r"^250 2\.0\.0 Ok: queued as [0-9A-F]+")
        queue_id = final.text.rsplit(" ", 1)[1]
        c.expect(221, line="QUIT")
        n = self.served_by(c)
        # The gateway's transaction line names the client haproxy passed on.
        self.assertRegex(self.gate_log(n), r"tx session=\S+ client=%s helo=client\.example\.test "
                         r"from=<sender@%s>.*queued as %s" % (re.escape(CLIENT), re.escape(domain),
                                                              queue_id))
        # XCLIENT: Postfix logs and stamps the real client, not haproxy and
        # not the gateway.
        got = wait_until(lambda: self.delivered(domain.encode()), 20, "delivery")
        self.assertEqual(len(got), 1)
        self.assertRegex(got[0].decode(), r"Received: from client\.example\.test "
                         r"\([^)]*\[%s\]\)" % re.escape(CLIENT))
        self.assertRegex(self.read_maillog(), r"%s: client=[^\s\[]*\[%s\]" % (
            queue_id, re.escape(CLIENT)))

    def test_policy_rule_on_client_address(self):
        c = self.connect(source=REFUSED)
        # At connect the reply to a rule is the greeting: 554 (RFC 5321 3.1).
        c.expect(554, "5.7.1", "5.7.1 Client refused by the scale-out test policy")
        c.expect(503, line="EHLO client.example.test")
        c.expect(221, line="QUIT")
        n = self.served_by(c)
        self.assertRegex(self.gate_log(n), r"client=%s stage=connect filter=rules "
                         r"rule=refuse-test-client verdict=\w+ reply=\"554 5\.7\.1 " %
                         re.escape(REFUSED))

    def test_gateway_takes_proxy_header_from_haproxy_only(self):
        # Straight to a gateway's PROXY listener, from an address not in
        # proxy_from, with a header naming the client: closed unanswered.
        c = self.connect(port=self.gate_ports[0])
        c.send(b"PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % CLIENT.encode())
        self.assertEqual(c.wait_closed(), b"")
        wait_until(lambda: "PROXY header from 127.0.0.7 refused: not in proxy_from"
                   in self.gate_log(0), 10, "the refusal in gate1's log")

    def test_each_gateway_serves_its_metrics(self):
        import urllib.request
        urls = re.search(r"^metrics\s+(\S+) \(gate1\) (\S+) \(gate2\)$", self.script.text(),
                         re.M).groups()
        self.assertNotEqual(urls[0], urls[1])
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            # haproxy's health checks reach each gateway on its check port.
            m = re.search(r'^smtpgate_connections_total\{listener="127\.0\.0\.1:\d+"\} '
                          r'([1-9]\d*)$', text, re.M)
            self.assertIsNotNone(m, "%s:\n%s" % (url, text[:1500]))

    def test_global_rate_limit_over_both_gateways(self):
        # 2 x LIMIT connections open at once: haproxy (leastconn) spreads
        # them over the gateways.  Each says MAIL once; the limit counts in
        # the shared Redis, so exactly LIMIT pass in total, whichever
        # gateway each came through.
        domain = _domain()
        conns = []
        for _ in range(2 * LIMIT):
            c = self.connect()
            c.greet()
            conns.append(c)
        served = [self.served_by(c) for c in conns]
        self.assertEqual(sorted(set(served)), [0, 1], served)
        accepted = []
        for i, c in enumerate(conns):
            c.ehlo("client.example.test")
            r = c.cmd("MAIL FROM:<rl%d@%s>" % (i, domain))
            if r.code == 250:
                c.expect(250, line="RCPT TO:<%s>" % RCPT)
                c.expect(354, line="DATA")
                c.send(dot_stuff(make_message(subject="rate limit %s %d" % (domain, i))))
                c.expect(250, "2.0.0")
                accepted.append(served[i])
            else:
                self.assertEqual((r.code, r.enhanced), (450, "4.7.1"), str(r))
            c.expect(221, line="QUIT")
        # Counted by each process alone, a gateway with k of the 2 x LIMIT
        # connections would accept min(k, LIMIT): more than LIMIT in total
        # whenever both served some.
        self.assertEqual(len(accepted), LIMIT, "gateway of each connection %s, of each "
                         "accepted message %s" % (served, accepted))
        # Postfix received exactly those LIMIT messages.
        wait_until(lambda: len(self.delivered(domain.encode())) >= LIMIT, 30,
                   "%d deliveries" % LIMIT)
        self.assertEqual(len(self.delivered(domain.encode())), LIMIT)
        logged = sum(len(re.findall(r"tx session=\S+ client=%s .*from=<rl\d+@%s>.*status=250 "
                                    % (re.escape(CLIENT), re.escape(domain)), self.gate_log(n)))
                     for n in (0, 1))
        self.assertEqual(logged, LIMIT)
        for n in (0, 1):
            self.assertNotIn("unavailable", self.gate_log(n))

    def test_health_check_takes_a_stopped_gateway_out(self):
        # Both gateways are checked on their check port, from haproxy's
        # address, with an SMTP exchange (scale-out.sh waited for each
        # one's check_status L7OK); the check listener is quiet, so no
        # check shows at info in the gateways' logs.
        for n in (0, 1):
            self.assertNotRegex(self.gate_log(n), r"info session end session=\S+ client=%s "
                                % re.escape(HAPROXY_SOURCE))
        gate1 = self.pids[1]
        os.kill(gate1, signal.SIGSTOP)
        self.addCleanup(os.kill, gate1, signal.SIGCONT)
        # Down after two failed checks (5 s timeout each) ...
        wait_until(lambda: "Server smtp_gates/gate1 is DOWN" in self.haproxy_log(), 60,
                   "haproxy marking gate1 down")
        # ... and every new connection goes to gate2.
        for _ in range(4):
            c = self.connect()
            c.greet()
            c.expect(221, line="QUIT")
            self.assertEqual(self.served_by(c), 1)
        os.kill(gate1, signal.SIGCONT)
        wait_until(lambda: "Server smtp_gates/gate1 is UP" in self.haproxy_log(), 60,
                   "haproxy marking gate1 up again")

    def haproxy_log(self):
        with open(os.path.join(self.work, "haproxy.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")


if __name__ == "__main__":
    unittest.main(verbosity=2)
