#!/usr/bin/env python3
"""PROXY protocol v1 and v2 on listeners with proxy_protocol: true: the
client address the header gives reaches the policy, the logs and the
backend's XCLIENT; a missing, malformed or untrusted header closes the
connection without a word."""

import os
import signal
import socket
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Gateway, GatewayTestCase, RecordingBackend, SmtpClient, free_port, make_message,
    tls_listener, wait_until,
)

SENDER = "sender@client.example.test"
RCPT = "user@example.test"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport, dst="192.0.2.1", dport=25):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def v2(src, sport, dst=None, dport=25, local=False, tlvs=b""):
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    if ":" in src:
        fam = 0x21
        addrs = socket.inet_pton(socket.AF_INET6, src) + \
            socket.inet_pton(socket.AF_INET6, dst or "2001:db8::1")
    else:
        fam = 0x11
        addrs = socket.inet_aton(src) + socket.inet_aton(dst or "192.0.2.1")
    body = addrs + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


POLICY = """
refuse_clients: [198.51.100.66]
"""


class ProxyProtocol(GatewayTestCase):
    OVERRIDES = {"listen": [{"address": "127.0.0.1:0", "proxy_protocol": True},
                            dict(tls_listener("implicit"), proxy_protocol=True)]}
    POLICY = POLICY

    def raw(self, listener=0):
        c = SmtpClient(self.gw.ports[listener]).connect()
        self.addCleanup(c.close)
        return c

    def transaction_via(self, header):
        c = self.raw()
        c.send(header)
        c.greet()
        c.ehlo()
        final = c.transaction(SENDER, [RCPT], make_message())
        msgs = [m for m in self.backend.wait_messages(1) if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(len(msgs), 1)
        c.expect(221, line="QUIT")
        return msgs[0].conn.xclient

    def test_v1_client_reaches_backend(self):
        x = self.transaction_via(v1("203.0.113.7", 40000))
        self.assertEqual(x.get("ADDR"), "203.0.113.7")
        self.assertEqual(x.get("PORT"), "40000")
        wait_until(lambda: "client=203.0.113.7 port=40000 via proxy 127.0.0.1 (PROXY v1)"
                   in self.gw.log, 5, "the PROXY log line")

    def test_v2_ipv6_with_tlvs(self):
        tlv = bytes([0x04]) + struct.pack("!H", 5) + b"hello"  # PP2_TYPE_NOOP
        x = self.transaction_via(v2("2001:db8::7", 50000, tlvs=tlv))
        self.assertEqual(x.get("ADDR"), "IPV6:2001:db8::7")
        self.assertEqual(x.get("PORT"), "50000")

    def test_header_and_commands_in_one_write(self):
        c = self.raw()
        c.send(v2("203.0.113.8", 1234) + b"EHLO client.example.test\r\nNOOP\r\n")
        c.greet()
        c.expect(250)
        c.expect(250, "2.0.0")

    def test_v2_local_uses_the_connection(self):
        x = self.transaction_via(v2("", 0, local=True))
        self.assertEqual(x.get("ADDR"), "127.0.0.1")

    def test_policy_sees_proxied_address(self):
        c = self.raw()
        c.send(v1("198.51.100.66", 2525))
        c.expect(554)
        c.expect(503, line="EHLO client.example.test")
        c.expect(221, line="QUIT")

    def test_missing_header_closes(self):
        c = self.raw()
        c.send(b"EHLO client.example.test\r\n")
        self.assertEqual(c.wait_closed(), b"")

    def test_malformed_headers_close(self):
        for bad in (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",
                    b"PROXY TCP4 203.0.113.300 192.0.2.1 1 2\r\n",
                    V2_SIG + bytes([0x21, 0x12]) + struct.pack("!H", 12) + b"\0" * 12,
                    V2_SIG + bytes([0x31, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,
                    b"PROXY " + b"x" * 200 + b"\r\n"):
            c = self.raw()
            c.send(bad)
            self.assertEqual(c.wait_closed(), b"", bad)
        wait_until(lambda: "malformed PROXY header" in self.gw.log, 5, "the log line")

    def test_slow_header(self):
        c = self.raw()
        for b in v1("203.0.113.9", 7):
            c.send(bytes([b]))
        c.greet()

    def test_implicit_tls_behind_proxy(self):
        c = self.raw(listener=1)
        c.send(v1("203.0.113.10", 4444))
        c.tls()
        c.greet()
        c.ehlo()
        final = c.transaction(SENDER, [RCPT], make_message())
        msgs = [m for m in self.backend.wait_messages(1) if final.text.endswith(" " + m.queue_id)]
        self.assertEqual(msgs[0].conn.xclient.get("ADDR"), "203.0.113.10")


class ReloadKeepsListeners(unittest.TestCase):
    def test_moved_listeners_refused(self):
        backend = RecordingBackend()
        self.addCleanup(backend.stop)
        gw = Gateway([backend.addr], name="pp-reload", overrides={"listen": [
            {"address": "127.0.0.1:0"},
            {"address": "127.0.0.1:0", "proxy_protocol": True}]})
        self.addCleanup(gw.cleanup)
        gw.start()
        # A new listener in front: the PROXY listener's index moves.
        text = open(gw.config_path).read().replace(
            "listen:\n", "listen:\n  - address: 127.0.0.1:%d\n" % free_port(), 1)
        gw.write_config(text=text)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "the listen addresses changed" in gw.log, 10, "the refusal")
        c = SmtpClient(gw.ports[1]).connect()
        self.addCleanup(c.close)
        c.send(b"EHLO client.example.test\r\n")  # no PROXY header: closed
        self.assertEqual(c.wait_closed(), b"")
        self.assertEqual(gw.stop(), 0)


class UntrustedProxy(unittest.TestCase):
    def test_header_from_untrusted_address(self):
        backend = RecordingBackend()
        self.addCleanup(backend.stop)
        gw = Gateway([backend.addr], name="pp-untrusted", overrides={"listen": [
            {"address": "127.0.0.1:0"},
            {"address": "127.0.0.1:0", "proxy_protocol": True,
             "proxy_from": ["192.0.2.0/24"]}]})
        self.addCleanup(gw.cleanup)
        gw.start()
        c = SmtpClient(gw.ports[1]).connect()
        self.addCleanup(c.close)
        c.send(v1("203.0.113.7", 40000))
        self.assertEqual(c.wait_closed(), b"")
        wait_until(lambda: "not in proxy_from" in gw.log, 5, "the log line")
        self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    unittest.main()
