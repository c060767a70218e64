#!/usr/bin/env python3
"""The metrics endpoint (metrics: address:): GET /metrics in Prometheus's
text format, scraped with urllib while mail goes through the gateway.

Each test scrapes before and after what it does and checks how the
counters moved.  The tests of a class share one gateway and run one after
the other, so nothing else moves the counters in between.  A counter that
moves when a reply is queued has moved by the time the client reads that
reply; only the gauge of open connections follows the close of a socket,
and is polled for.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    DEFAULT_CONFIG, Gateway, GatewayTestCase, RedisServer, deep_merge, gateway_bin,
    make_message, to_yaml, wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
BLOCKED = "blocked@example.test"

POLICY = r"""relay:
  trusted_networks: [127.0.0.0/8]
  local_domains: [example.test]
rules:
  - name: block-rcpt
    match: { recipient: '/^blocked@/' }
    action: reject
    reply: "550 5.7.1 Recipient blocked"
  - name: watch-helo
    match: { helo: '/^watched\./' }
    action: warn
"""

SAMPLE_RX = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RX = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset of (label, value)): float} of a text exposition;
    checks every line is a comment or a well-formed sample, and that each
    metric family has HELP and TYPE before its samples."""
    out = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_RX.match(line)
        if not m:
            raise AssertionError("malformed sample line: %r" % line)
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in typed and family not in typed:
            raise AssertionError("sample before its # TYPE: %r" % line)
        lab = frozenset(LABEL_RX.findall(labels or ""))
        key = (name, lab)
        if key in out:
            raise AssertionError("duplicate series: %r" % line)
        out[key] = float(value)
    return out


def get(samples, name, **labels):
    """The value of series name{labels}, 0 when it is not there."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class Scrape:
    """One scrape: the response's status, headers and parsed samples."""

    def __init__(self, gw, path="/metrics", method="GET", data=None):
        req = urllib.request.Request(gw.metrics_url(path), method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                self.status = r.status
                self.headers = r.headers
                self.text = r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            self.status = e.code
            self.headers = e.headers
            self.text = e.read().decode("utf-8", "replace")
        self.samples = parse(self.text) if self.status == 200 and method == "GET" else {}

    def __call__(self, name, **labels):
        return get(self.samples, name, **labels)

    def histograms(self):
        """{(name, labels without le): [(le, count), ...] in file order}."""
        out = {}
        for (name, lab), v in self.samples.items():
            if not name.endswith("_bucket"):
                continue
            d = dict(lab)
            le = d.pop("le")
            key = (name[:-len("_bucket")], frozenset(d.items()))
            out.setdefault(key, []).append((float(le), v))
        for v in out.values():
            v.sort()
        return out


class MetricsCase(GatewayTestCase):
    """Two workers (so the scrape sums shards), the policy above, and the
    endpoint on a free port."""

    OVERRIDES = {"workers": 2, "metrics": {"address": "127.0.0.1:0"}}
    POLICY = POLICY

    def setUp(self):
        super().setUp()
        # The sessions of the tests before are gone (their clients closed).
        self.wait_current(0)

    def scrape(self):
        s = Scrape(self.gw)
        self.assertEqual(s.status, 200, s.text)
        return s

    def listener(self):
        return {"listener": self.gw.addr}

    def wait_current(self, want):
        """Polls until no connection of the gateway's is open but `want`:
        the gauge moves when the gateway has closed the socket, after the
        client saw it close."""
        wait_until(lambda: self.scrape()("smtpgate_connections_current",
                                          **self.listener()) == want,
                   10, "smtpgate_connections_current == %d" % want)

    def test_transaction_counters(self):
        msg = make_message(subject="metrics")
        before = self.scrape()
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], msg)
        c.expect(221, line="QUIT")
        c.wait_closed()
        after = self.scrape()
        d = lambda name, **l: after(name, **l) - before(name, **l)  # noqa: E731

        self.assertEqual(d("smtpgate_connections_total", **self.listener()), 1)
        self.assertEqual(d("smtpgate_transactions_total", outcome="accepted"), 1)
        for outcome in ("rejected", "tempfailed", "aborted"):
            self.assertEqual(d("smtpgate_transactions_total", outcome=outcome), 0, outcome)
        # The message as sent, its final CRLF included, ".\r\n" not: what
        # the backend got before the end-of-data line.
        self.assertEqual(d("smtpgate_backend_data_bytes_total"), len(msg))
        self.assertEqual(len(self.backend.messages[-1].data) - 3, len(msg))
        # 220 greeting, EHLO, MAIL, RCPT, end of data, QUIT: 2xx; DATA: 354.
        self.assertEqual(d("smtpgate_replies_total", **{"class": "2xx"}), 6)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "3xx"}), 1)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "4xx"}), 0)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "5xx"}), 0)
        for cmd in ("mail", "rcpt", "data", "dot"):
            self.assertEqual(d("smtpgate_backend_reply_seconds_count", command=cmd), 1, cmd)
        self.assertEqual(d("smtpgate_backend_connect_seconds_count"), 1)
        self.assertEqual(d("smtpgate_backend_ready_seconds_count"), 1)
        self.wait_current(0)

    def test_rejected_rcpt_by_rule(self):
        before = self.scrape()
        c = self.client()
        c.expect(250, line="EHLO watched.example.test")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:<%s>" % BLOCKED)
        c.expect(250, line="RSET")
        after = self.scrape()
        d = lambda name, **l: after(name, **l) - before(name, **l)  # noqa: E731
        self.assertEqual(d("smtpgate_filter_verdicts_total", filter="rules",
                           rule="block-rcpt", verdict="reject"), 1)
        self.assertEqual(d("smtpgate_filter_verdicts_total", filter="rules",
                           rule="watch-helo", verdict="warn"), 1)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "5xx"}), 1)
        # MAIL reached the backend, RSET ended it without a message.
        self.assertEqual(d("smtpgate_transactions_total", outcome="aborted"), 1)
        self.assertEqual(d("smtpgate_transactions_total", outcome="accepted"), 0)
        # One connection open: this client's.
        self.assertEqual(after("smtpgate_connections_current", **self.listener()), 1)
        c.close()
        self.wait_current(0)

    def test_backend_refusals(self):
        before = self.scrape()
        c = self.client(ehlo=True)
        self.backend.data_reply = "554 5.7.1 Refused by the backend"
        c.transaction(SENDER, [RCPT], make_message(), expect_final=554)
        self.backend.data_reply = "451 4.3.0 Try again later"
        c.transaction(SENDER, [RCPT], make_message(), expect_final=451)
        self.backend.data_reply = None
        # Leaves mid-transaction: aborted.
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.close()
        self.wait_current(0)
        after = self.scrape()
        d = lambda name, **l: after(name, **l) - before(name, **l)  # noqa: E731
        self.assertEqual(d("smtpgate_transactions_total", outcome="rejected"), 1)
        self.assertEqual(d("smtpgate_transactions_total", outcome="tempfailed"), 1)
        self.assertEqual(d("smtpgate_transactions_total", outcome="aborted"), 1)
        self.assertEqual(d("smtpgate_transactions_total", outcome="accepted"), 0)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "4xx"}), 1)
        self.assertEqual(d("smtpgate_replies_total", **{"class": "5xx"}), 1)

    def test_format_and_histograms(self):
        c = self.client(ehlo=True)
        c.transaction(SENDER, [RCPT], make_message())
        s = self.scrape()
        self.assertEqual(s.headers["Content-Type"],
                         "text/plain; version=0.0.4; charset=utf-8")
        self.assertTrue(s.text.endswith("\n"))
        self.assertEqual(s("smtpgate_workers"), 2)
        self.assertEqual(len([k for k in s.samples if k[0] == "smtpgate_build_info"]), 1)
        hists = s.histograms()
        names = {n for n, _ in hists}
        self.assertEqual(names, {"smtpgate_backend_connect_seconds",
                                 "smtpgate_backend_ready_seconds",
                                 "smtpgate_backend_reply_seconds"})
        for (name, lab), buckets in hists.items():
            les = [le for le, _ in buckets]
            counts = [v for _, v in buckets]
            self.assertEqual(les[-1], float("inf"), name)
            self.assertEqual(counts, sorted(counts), "%s%s not monotonic" % (name, dict(lab)))
            count = s(name + "_count", **dict(lab))
            self.assertEqual(counts[-1], count, "%s%s: +Inf bucket != _count" % (name, dict(lab)))
            total = s(name + "_sum", **dict(lab))
            self.assertGreaterEqual(total, 0)
            if count == 0:
                self.assertEqual(total, 0)
        self.assertGreaterEqual(s("smtpgate_backend_reply_seconds_count", command="dot"), 1)
        self.assertGreater(s("smtpgate_backend_reply_seconds_sum", command="dot"), 0)

    def test_not_found_and_method_not_allowed(self):
        for path in ("/", "/metrics/", "/nope", "/metrics?x=1/"):
            s = Scrape(self.gw, path=path)
            if path == "/metrics?x=1/":
                # The query is not part of the path.
                self.assertEqual(s.status, 200, path)
                continue
            self.assertEqual(s.status, 404, path)
        s = Scrape(self.gw, method="POST", data=b"x=1")
        self.assertEqual(s.status, 405)
        self.assertEqual(s.headers["Allow"], "GET, HEAD")
        s = Scrape(self.gw, method="DELETE")
        self.assertEqual(s.status, 405)
        s = Scrape(self.gw, method="HEAD")
        self.assertEqual(s.status, 200)
        self.assertEqual(s.text, "")
        self.assertTrue(self.gw.running())

    def test_reload_counters(self):
        before = self.scrape()
        port = self.gw.metrics_port
        off = self.gw.log_size()
        # A new metrics address is not taken up before a restart; the rest
        # of the configuration is.
        self.gw.metrics_port = port + 1 if port < 65535 else port - 1
        self.gw.write_config()
        self.gw.metrics_port = port
        self.gw.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in self.gw.log_since(off), 10,
                   "the reload (log)")
        self.assertIn("reload: the metrics address takes effect at the next restart "
                      "(metrics stay at 127.0.0.1:%d)" % port, self.gw.log_since(off))
        mid = self.scrape()
        self.assertEqual(mid("smtpgate_config_reloads_total", result="success")
                         - before("smtpgate_config_reloads_total", result="success"), 1)
        # A broken file: refused, counted as a failure.
        off = self.gw.log_size()
        self.gw.write_config(text="listen: [\n")
        self.gw.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in self.gw.log_since(off), 10,
                   "the failed reload (log)")
        after = self.scrape()
        self.gw.write_config()
        self.assertEqual(after("smtpgate_config_reloads_total", result="failure")
                         - before("smtpgate_config_reloads_total", result="failure"), 1)
        self.assertEqual(after("smtpgate_config_reloads_total", result="success")
                         - before("smtpgate_config_reloads_total", result="success"), 1)


class RedisMetrics(unittest.TestCase):
    """Redis errors and timeouts: a rate limit checked in a Redis that
    stops answering (SIGSTOP)."""

    def test_timeouts_counted(self):
        from harness import RecordingBackend
        backend = RecordingBackend()
        self.addCleanup(backend.stop)
        redis = RedisServer()
        self.addCleanup(redis.cleanup)
        redis.start()
        pol = {"relay": {"trusted_networks": ["127.0.0.0/8"], "local_domains": ["example.test"]},
               "rate_limits": [{"name": "msgs", "key": "client_ip", "count": "messages",
                                "limit": 1000, "window": "60s"}]}
        gw = Gateway([backend.addr], {
            "metrics": {"address": "127.0.0.1:0"},
            "redis": {"address": redis.addr, "timeout": "50ms", "on_error": "allow",
                      "key_prefix": "metrics-%d:" % os.getpid()},
        }, name="metrics-redis", policy=pol)
        self.addCleanup(gw.stop_and_check)
        gw.start()
        rx = re.compile(r"ratelimit store=.* redis=127\.0\.0\.1:%d connected" % redis.port)
        wait_until(lambda: rx.search(gw.log), 10, "the Redis connection (log)")
        c = gw.client()
        self.addCleanup(c.close)
        c.ehlo()
        before = Scrape(gw)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RSET")
        mid = Scrape(gw)
        self.assertEqual(mid("smtpgate_redis_errors_total"), before("smtpgate_redis_errors_total"))
        redis.pause()
        try:
            # The check times out (50 ms); on_error: allow lets MAIL pass.
            c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        finally:
            redis.resume()
        after = Scrape(gw)
        self.assertEqual(after("smtpgate_redis_timeouts_total")
                         - before("smtpgate_redis_timeouts_total"), 1)
        self.assertEqual(after("smtpgate_redis_errors_total")
                         - before("smtpgate_redis_errors_total"), 1)


class EndpointStartup(unittest.TestCase):
    """The endpoint's address is checked by -t and must be free at start."""

    def run_gw(self, metrics_addr, listen_addr, args=()):
        d = tempfile.mkdtemp(prefix="smtpgate-metrics-")
        self.addCleanup(subprocess.run, ["rm", "-rf", d])
        cfg = deep_merge(DEFAULT_CONFIG, {"backend": {"servers": ["127.0.0.1:9"]},
                                          "listen": [{"address": listen_addr}],
                                          "metrics": {"address": metrics_addr}})
        path = os.path.join(d, "gateway.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        p = subprocess.run([gateway_bin()] + list(args) + ["-c", path], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        return p, path

    def test_check_rejects_bad_addresses(self):
        p, path = self.run_gw("localhost:9425", "127.0.0.1:2525", ["-t"])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stderr, r"^%s:\d+:\d+: metrics\.address: invalid address "
                         r"\"localhost:9425\"" % re.escape(path))
        p, path = self.run_gw("127.0.0.1:2525", "127.0.0.1:2525", ["-t"])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stderr, r"^%s:\d+:\d+: metrics\.address: 127\.0\.0\.1:2525 is "
                         r"also listen\[0\]'s address" % re.escape(path))

    def test_address_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            listen_port = s.getsockname()[1]
        p, _ = self.run_gw("127.0.0.1:%d" % port, "127.0.0.1:%d" % listen_port)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("cannot serve metrics on 127.0.0.1:%d: Address already in use" % port,
                      p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
