#!/usr/bin/env python3
"""The policy engine end to end: relay permission, source routes,
refuse_clients, rules (at HELO, MAIL and on headers), reloads, -t and
--explain.

Clients play trusted and untrusted hosts by their loopback source address:
127.0.0.1 is in trusted_networks, 127.0.0.2 and 127.0.0.3 are not, and
127.0.0.5 is in refuse_clients (Linux answers on all of 127.0.0.0/8).

What reached the backend is read from the RecordingBackend.  A backend
connection is told apart by the XCLIENT PORT the gateway sends for its
client.  "Never reached the backend" is shown without waiting on a clock:
either the session then completes a message on the same backend connection
(commands arrive in order, so a forwarded command would be there before
it), or a later session's MAIL is seen at the backend (connections are
accepted in order, so one opened earlier would be there first).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    DEFAULT_CONFIG, Gateway, GatewayTestCase, RecordingBackend, deep_merge, dot_stuff,
    gateway_bin, make_message, show_log_tail, to_yaml, wait_until,
)

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"
UNTRUSTED2 = "127.0.0.3"
REFUSED = "127.0.0.5"
TEMPFAILED = "127.0.0.6"  # rule busy-client: tempfail at connect
SENDER = "sender@client.example.test"

RELAY_DENIED = "550 5.7.1 <u@other.example>: Relay access denied\r\n"
SPAM_REPLY = "550 5.7.1 Sender rejected\r\n"
CONTENT_REPLY = "550 5.7.1 Message content rejected\r\n"

# Like deploy/policy.yaml, with 127.0.0.1 alone trusted, a refusing HELO
# rule, header rules and a tempfail at connect.
POLICY = r"""# test policy (test_policy.py)
relay:
  trusted_networks: [127.0.0.1/32]
  local_domains: [example.test, .example.test]
source_routes: %(source_routes)s
refuse_clients: [192.0.2.0/24, 127.0.0.5/32]
rules:
  - name: block-spam-sender
    match: { sender: '/@spam\.example$/' }
    action: reject
    reply: "550 5.7.1 Sender rejected"
  - name: watch-helo
    match: { helo: '/^localhost$/i' }
    action: warn
  - name: refuse-evil-helo
    match: { helo: '/^evil\./' }
    action: refuse
  - name: block-viagra
    match: { header: '/^Subject: .*viagra/i' }
    action: reject
    reply: "550 5.7.1 Message content rejected"
  - name: refuse-evil-header
    match: { header: '/^X-Evil: yes$/' }
    action: refuse
  - name: busy-client
    match: { client: 127.0.0.6/32 }
    action: tempfail
  - name: combo-rcpt
    match: { sender: '/@combo\.example$/', recipient: '/^victim@/' }
    action: reject
    reply: "550 5.7.1 Combo rejected"
  - name: combo-header
    match: { sender: Combo@Combo.Example, header: 'X-Combo: 1' }
    action: reject
    reply: "550 5.7.1 Combo header rejected"
"""


def policy(source_routes="strip"):
    return POLICY % {"source_routes": source_routes}


# The same policy with 127.0.0.2 trusted too: the reload's new policy.
POLICY_TRUST_2 = policy().replace("trusted_networks: [127.0.0.1/32]",
                                  "trusted_networks: [127.0.0.1/32, 127.0.0.2/32]")

# A broken policy: the regex on line 5 does not compile; the error points
# at the value (line 5, column 22: the opening quote).
POLICY_BAD = """\
relay:
  trusted_networks: [127.0.0.1/32, 127.0.0.2/32]
rules:
  - name: broken
    match: { sender: '/(unclosed/' }
    action: reject
"""
POLICY_BAD_POS = (5, 22)


def conns_of(backend, client):
    """The backend connections opened for client (by XCLIENT ADDR/PORT)."""
    port = str(client.local_port)
    addr = client.local_addr
    return [c for c in list(backend.connections)
            if c.xclient.get("PORT") == port and c.xclient.get("ADDR") == addr]


def lines_mentioning(conn, needle):
    """The command lines of a backend connection containing needle (bytes)."""
    return [l for l in list(conn.commands) if needle.lower() in l.lower()]


class PolicyCase(GatewayTestCase):
    """One gateway with policy() in front of a RecordingBackend."""

    POLICY = policy()

    def message_for(self, final):
        """The backend's message that a final 250 reply names."""
        m = re.match(r"2\.0\.0 Ok: queued as (\S+)$", final.text)
        self.assertIsNotNone(m, str(final))
        found = [x for x in list(self.backend.messages) if x.queue_id == m.group(1)]
        self.assertEqual(len(found), 1, "no backend message for %s" % (final,))
        return found[0]

    def send_message(self, c, mail_from, rcpts, message=None):
        """A whole transaction that must succeed; returns the backend's copy."""
        if message is None:
            message = make_message()
        final = c.transaction(mail_from, rcpts, message)
        m = self.message_for(final)
        self.assertEqual(m.data, dot_stuff(message))
        return m

    def finish_clean(self, c):
        """Completes one message to a local recipient on c and returns its
        backend copy: every command c sent before is then at the backend,
        on m.conn, if it was forwarded at all."""
        return self.send_message(c, SENDER, ["user@example.test"])


# ---------------------------------------------------------------------------
# Relay permission
# ---------------------------------------------------------------------------


class Relay(PolicyCase):

    def test_trusted_client_relays_to_other_domain(self):
        c = self.client(TRUSTED, ehlo=True)
        m = self.send_message(c, SENDER, ["u@other.example"])
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<u@other.example>"])

    def test_untrusted_client_to_local_domain(self):
        c = self.client(UNTRUSTED, ehlo=True)
        m = self.send_message(c, SENDER, ["u@example.test"])
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<u@example.test>"])

    def test_untrusted_client_to_local_subdomain(self):
        c = self.client(UNTRUSTED, ehlo=True)
        m = self.send_message(c, SENDER, ["u@sub.example.test"])
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<u@sub.example.test>"])

    def test_untrusted_client_to_other_domain_denied(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<u@other.example>")
        self.assertEqual(r.raw, RELAY_DENIED.encode())

    def test_denied_rcpt_never_reaches_backend(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:<u@other.example>")
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        msg = make_message()
        c.send(dot_stuff(msg))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<user@example.test>"])
        self.assertEqual(lines_mentioning(m.conn, b"other.example"), [])
        self.assertEqual(m.data, dot_stuff(msg))

    def test_source_route_does_not_hide_destination(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<@example.test:u@other.example>")
        self.assertEqual(r.raw, RELAY_DENIED.encode())

    def test_pipelined_replies_in_order(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.send("MAIL FROM:<%s>\r\n" % SENDER +
               "RCPT TO:<u@other.example>\r\n"
               "RCPT TO:<user@example.test>\r\n"
               "RCPT TO:<v@other.example>\r\n"
               "RCPT TO:<Postmaster>\r\n"
               "DATA\r\n")
        got = [str(c.read_reply()) for _ in range(6)]
        self.assertEqual(got, [
            "250 2.1.0 Ok",
            "550 5.7.1 <u@other.example>: Relay access denied",
            "250 2.1.5 Ok",
            "550 5.7.1 <v@other.example>: Relay access denied",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"])
        msg = make_message()
        c.send(dot_stuff(msg))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<user@example.test>", b"RCPT TO:<Postmaster>"])

    def test_denial_logged_with_filter(self):
        c = self.client(UNTRUSTED2, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:<u@other.example>")
        self.assertRegex(self.gw.log, r"client=127\.0\.0\.3 stage=rcpt filter=relay rule=- "
                         r"verdict=reject reply=\"550 5\.7\.1 <u@other\.example>: "
                         r"Relay access denied\"")


class RelayTricks(PolicyCase):
    """Local-domain addresses that route elsewhere in their local part."""

    TRICKS = {
        "percent": '<u%ext.example@example.test>',
        "bang": '<ext.example!u@example.test>',
        "quoted": '<"u@ext.example"@example.test>',
    }

    def refused_from_untrusted(self, trick):
        path = self.TRICKS[trick]
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:" + path)
        self.assertEqual(r.code // 100, 5, str(r))
        c.expect(250, "2.0.0", line="RSET")
        m = self.finish_clean(c)
        self.assertEqual(lines_mentioning(m.conn, b"ext.example"), [])

    def passes_from_trusted(self, trick):
        path = self.TRICKS[trick]
        c = self.client(TRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:" + path)
        c.expect(354, line="DATA")
        msg = make_message()
        c.send(dot_stuff(msg))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.rcpt_lines, [("RCPT TO:" + path).encode()])

    def test_percent_hack_refused_from_untrusted(self):
        self.refused_from_untrusted("percent")

    def test_bang_path_refused_from_untrusted(self):
        self.refused_from_untrusted("bang")

    def test_quoted_at_refused_from_untrusted(self):
        self.refused_from_untrusted("quoted")

    def test_percent_hack_passes_from_trusted(self):
        self.passes_from_trusted("percent")

    def test_bang_path_passes_from_trusted(self):
        self.passes_from_trusted("bang")

    def test_quoted_at_passes_from_trusted(self):
        self.passes_from_trusted("quoted")


# ---------------------------------------------------------------------------
# Source routes
# ---------------------------------------------------------------------------

ROUTED_FROM = "<@a.example,@b.example:u@c.example>"
ROUTED_RCPT = "<@a.example:u@example.test>"


class SourceRoutesStrip(PolicyCase):
    POLICY = policy("strip")

    def test_mail_route_stripped(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:" + ROUTED_FROM)
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.mail_line, b"MAIL FROM:<u@c.example>")

    def test_rcpt_route_stripped(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:" + ROUTED_RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<u@example.test>"])


class SourceRoutesDefault(SourceRoutesStrip):
    """strip is the default: the same tests without source_routes: set."""
    POLICY = policy("strip").replace("source_routes: strip\n", "")


class SourceRoutesReject(PolicyCase):
    POLICY = policy("reject")

    def test_mail_route_refused_501(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(501, "5.1.0", line="MAIL FROM:" + ROUTED_FROM)

    def test_rcpt_route_refused_550(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:" + ROUTED_RCPT)

    def test_refused_routes_never_reach_backend(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(501, "5.1.0", line="MAIL FROM:" + ROUTED_FROM)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(550, "5.7.1", line="RCPT TO:" + ROUTED_RCPT)
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        m = self.message_for(c.expect(250))
        self.assertEqual(lines_mentioning(m.conn, b"a.example"), [])
        self.assertEqual(m.mail_line, ("MAIL FROM:<%s>" % SENDER).encode())


class SourceRoutesKeep(PolicyCase):
    POLICY = policy("keep")

    def test_routes_forwarded_as_received(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:" + ROUTED_FROM)
        c.expect(250, line="RCPT TO:" + ROUTED_RCPT)
        c.expect(354, line="DATA")
        c.send(dot_stuff(make_message()))
        m = self.message_for(c.expect(250))
        self.assertEqual(m.mail_line, ("MAIL FROM:" + ROUTED_FROM).encode())
        self.assertEqual(m.rcpt_lines, [("RCPT TO:" + ROUTED_RCPT).encode()])


# ---------------------------------------------------------------------------
# Refused sessions
# ---------------------------------------------------------------------------


class RefusedClient(PolicyCase):
    """A client in refuse_clients (127.0.0.5).  No session of this class
    but the sentinel one ever needs the backend."""

    def refused(self):
        c = self.client(REFUSED, greet=False)
        r = c.read_reply()
        self.assertTrue(r.raw.startswith(b"554 5.7.1"), str(r))
        return c

    def test_greeting_is_554(self):
        self.refused()

    def test_every_command_but_quit_gets_503(self):
        c = self.refused()
        for line in ("EHLO client.example.test", "HELO client.example.test",
                     "MAIL FROM:<%s>" % SENDER, "RCPT TO:<user@example.test>", "NOOP",
                     "RSET", "DATA", "VRFY user", "HELP", "STARTTLS", "FROB x"):
            with self.subTest(line=line):
                c.expect(503, "5.5.1", line=line)

    def test_quit_gets_221_and_server_closes(self):
        c = self.refused()
        c.expect(221, "2.0.0", line="QUIT")
        self.assertEqual(c.wait_closed(5), b"")

    def test_server_does_not_close_first(self):
        c = self.refused()
        n = 2 * self.gw.config["limits"]["max_errors"]
        # Pipelined: every reply is a 503, none a 421, and the session then
        # still answers.
        c.send(b"".join(b"NOOP %d\r\n" % i for i in range(n)))
        for i in range(n):
            r = c.read_reply()
            self.assertEqual((i, r.code, r.enhanced), (i, 503, "5.5.1"), str(r))
        c.expect(503, "5.5.1", line="MAIL FROM:<%s>" % SENDER)
        c.expect(221, line="QUIT")
        self.assertEqual(c.wait_closed(5), b"")

    def test_malformed_lines_do_not_close_refused_session(self):
        """Lines with a bare LF (or too long) are answered 500 but never
        count toward max_errors: a refused session waits for QUIT."""
        c = self.refused()
        n = 2 * self.gw.config["limits"]["max_errors"]
        c.send(b"NOOP\n" * n)
        for i in range(n):
            r = c.read_reply()
            self.assertEqual((i, r.code // 100), (i, 5), str(r))
            self.assertNotEqual(r.code, 421, str(r))
        c.expect(503, "5.5.1", line="NOOP")
        c.expect(221, line="QUIT")

    def test_backend_never_contacted(self):
        c = self.refused()
        for line in ("EHLO client.example.test", "MAIL FROM:<%s>" % SENDER,
                     "RCPT TO:<user@example.test>", "DATA"):
            c.expect(503, "5.5.1", line=line)
        refused_port = c.local_port
        c.expect(221, line="QUIT")
        c.wait_closed(5)
        # A sentinel session's MAIL reaches the backend: a connection opened
        # for the refused session would have been accepted before it.
        s = self.client(TRUSTED, ehlo=True)
        s.expect(250, line="MAIL FROM:<%s>" % SENDER)
        self.assertEqual(len(conns_of(self.backend, s)), 1)
        others = [x for x in list(self.backend.connections) if x not in conns_of(self.backend, s)]
        self.assertEqual([(x.xclient, x.commands) for x in others if
                          x.xclient.get("ADDR") == REFUSED or
                          x.xclient.get("PORT") == str(refused_port)], [])
        self.assertEqual(others, [], "backend connections besides the sentinel's")


class TempfailAtConnect(PolicyCase):

    def test_greeting_421_then_close(self):
        c = self.client(TEMPFAILED, greet=False)
        r = c.read_reply()
        self.assertEqual(r.raw, b"421 4.7.1 Try again later\r\n")
        self.assertEqual(c.wait_closed(5), b"")


class RefuseRuleAtHelo(PolicyCase):

    def test_helo_refuse_rule_refuses_session(self):
        c = self.client(UNTRUSTED)
        r = c.cmd("EHLO evil.example")
        self.assertEqual(r.raw, b"554 5.7.1 Access denied\r\n")
        for line in ("EHLO good.example", "MAIL FROM:<%s>" % SENDER, "NOOP", "RSET"):
            c.expect(503, "5.5.1", line=line)
        c.expect(221, line="QUIT")
        self.assertEqual(c.wait_closed(5), b"")

    def test_helo_refuse_rule_logged(self):
        c = self.client(UNTRUSTED2)
        c.expect(554, "5.7.1", line="HELO evil.example")
        self.assertRegex(self.gw.log, r"client=127\.0\.0\.3 stage=helo filter=rules "
                         r"rule=refuse-evil-helo verdict=refuse")

    def test_refusal_aborts_backend_transaction(self):
        c = self.client(TRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<user@example.test>")
        conns = conns_of(self.backend, c)
        self.assertEqual(len(conns), 1)
        c.expect(554, "5.7.1", line="EHLO evil.example")
        self.backend.wait_closed(conns)
        self.assertNotIn("DATA", conns[0].verbs())
        c.expect(503, "5.5.1", line="DATA")
        self.assertEqual([m for m in list(self.backend.messages) if m.conn is conns[0]], [])

    def test_other_helo_not_refused(self):
        c = self.client(UNTRUSTED)
        c.expect(250, line="EHLO notevil.example")
        c.expect(250, line="NOOP")


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


class Rules(PolicyCase):

    def test_reject_rule_custom_reply(self):
        c = self.client(TRUSTED, ehlo=True)
        r = c.cmd("MAIL FROM:<x@spam.example>")
        self.assertEqual(r.raw, SPAM_REPLY.encode())

    def test_rejected_mail_never_reaches_backend(self):
        c = self.client(TRUSTED, ehlo=True)
        c.expect(550, "5.7.1", line="MAIL FROM:<x@spam.example>")
        m = self.finish_clean(c)
        self.assertEqual(lines_mentioning(m.conn, b"spam.example"), [])
        self.assertEqual([x for x in conns_of(self.backend, c) if x is not m.conn], [])

    def test_rejected_mail_logged_with_rule(self):
        c = self.client(UNTRUSTED2, ehlo=True)
        c.expect(550, "5.7.1", line="MAIL FROM:<x@spam.example>")
        self.assertRegex(self.gw.log, r"client=127\.0\.0\.3 stage=mail filter=rules "
                         r"rule=block-spam-sender verdict=reject "
                         r"reply=\"550 5\.7\.1 Sender rejected\"")

    def test_warn_rule_session_proceeds(self):
        c = self.client(UNTRUSTED)
        c.expect(250, line="EHLO localhost")
        m = self.send_message(c, SENDER, ["user@example.test"])
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<user@example.test>"])

    def test_warn_rule_logged(self):
        c = self.client(UNTRUSTED2)
        c.expect(250, line="EHLO LocalHost")
        # Logged before the reply was written.
        self.assertRegex(self.gw.log, r"client=127\.0\.0\.3 rule=watch-helo action=warn "
                         r"stage=helo")


class HeaderRule(PolicyCase):

    def start_data(self, c):
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")

    def test_matching_subject_rejected_after_final_dot(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        offset = self.gw.log_size()
        wire = dot_stuff(make_message(subject="cheap VIAGRA here"))
        c.send(wire[:-3])
        # The verdict is logged once the next header field starts; no reply
        # may have come before the final dot.
        wait_until(lambda: "rule=block-viagra verdict=reject" in self.gw.log_since(offset), 10,
                   "the header verdict in the log")
        self.assertEqual(c.pending(0), b"")
        c.send(wire[-3:])
        r = c.read_reply()
        self.assertEqual(r.raw, CONTENT_REPLY.encode())

    def test_backend_transaction_aborted(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        c.send(dot_stuff(make_message(subject="cheap viagra")))
        c.expect(550, "5.7.1")
        conns = conns_of(self.backend, c)
        self.assertEqual(len(conns), 1)
        self.backend.wait_closed(conns)
        conn = conns[0]
        self.assertEqual([m for m in list(self.backend.messages) if m.conn is conn], [])
        self.assertEqual(len(conn.data_aborted), 1)
        self.assertFalse(bytes(conn.raw).endswith(b"\r\n.\r\n"), bytes(conn.raw)[-200:])
        self.assertNotIn(b"\r\n.\r\n", bytes(conn.raw).split(b"DATA\r\n", 1)[1])

    def test_session_goes_on_after_rejected_message(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        c.send(dot_stuff(make_message(subject="viagra")))
        c.expect(550, "5.7.1")
        msg = make_message(subject="a clean one", body_lines=[b"..dots", b".", b"end"])
        m = self.send_message(c, SENDER, ["user@example.test"], msg)
        self.assertEqual(m.data, dot_stuff(msg))

    def test_folded_subject_matched(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        msg = (b"From: <sender@client.example.test>\r\n"
               b"Subject: a very cheap\r\n"
               b"\tViagra offer\r\n"
               b"To: <user@example.test>\r\n"
               b"\r\n"
               b"body\r\n")
        c.send(dot_stuff(msg))
        r = c.read_reply()
        self.assertEqual(r.raw, CONTENT_REPLY.encode())

    def test_subject_as_last_header_matched(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        c.send(dot_stuff(b"From: <a@b.example>\r\nSubject: viagra\r\n\r\nbody\r\n"))
        r = c.read_reply()
        self.assertEqual(r.raw, CONTENT_REPLY.encode())

    def test_subject_without_body_matched(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        c.send(b"Subject: viagra\r\n.\r\n")
        r = c.read_reply()
        self.assertEqual(r.raw, CONTENT_REPLY.encode())

    def test_header_split_across_writes_matched(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        wire = dot_stuff(make_message(subject="cheap viagra"))
        i = wire.index(b"viagra")
        for part in (wire[:i - 3], wire[i - 3:i + 2], wire[i + 2:i + 9], wire[i + 9:]):
            c.send(part)
        r = c.read_reply()
        self.assertEqual(r.raw, CONTENT_REPLY.encode())

    def test_refuse_rule_on_header_refuses_session(self):
        c = self.client(UNTRUSTED, ehlo=True)
        self.start_data(c)
        c.send(dot_stuff(make_message(extra_headers=["X-Evil: yes"])))
        r = c.read_reply()
        self.assertEqual(r.raw, b"554 5.7.1 Access denied\r\n")
        conns = conns_of(self.backend, c)
        self.backend.wait_closed(conns)
        self.assertEqual([m for m in list(self.backend.messages) if m.conn in conns], [])
        c.expect(503, "5.5.1", line="MAIL FROM:<%s>" % SENDER)
        c.expect(221, line="QUIT")

    def test_viagra_in_body_passes(self):
        c = self.client(UNTRUSTED, ehlo=True)
        msg = make_message(subject="hello", body_lines=[b"Subject: viagra", b"x"])
        m = self.send_message(c, SENDER, ["user@example.test"], msg)
        self.assertEqual(m.data, dot_stuff(msg))


class SenderAtLaterStages(PolicyCase):
    """Rules at RCPT and on header lines see the transaction's sender."""

    def test_rcpt_rule_sees_sender(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<x@combo.example>")
        r = c.cmd("RCPT TO:<victim@example.test>")
        self.assertEqual(r.raw, b"550 5.7.1 Combo rejected\r\n")
        c.expect(250, line="RCPT TO:<user@example.test>")

    def test_rcpt_rule_sees_stripped_route_sender(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<@relay.example:x@combo.example>")
        c.expect(550, "5.7.1", line="RCPT TO:<victim@example.test>")

    def test_next_transaction_has_its_own_sender(self):
        c = self.client(UNTRUSTED, ehlo=True)
        c.expect(250, line="MAIL FROM:<x@combo.example>")
        c.expect(550, "5.7.1", line="RCPT TO:<victim@example.test>")
        c.expect(250, line="RSET")
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<victim@example.test>")

    def test_header_rule_sees_sender(self):
        c = self.client(UNTRUSTED, ehlo=True)
        msg = make_message(extra_headers=["X-Combo: 1"])
        final = c.transaction("combo@combo.example", ["user@example.test"],
                              msg, expect_final=550)
        self.assertEqual(final.raw, b"550 5.7.1 Combo header rejected\r\n")
        m = self.send_message(c, SENDER, ["user@example.test"], msg)
        self.assertEqual(m.data, dot_stuff(msg))


class PassThrough(PolicyCase):

    def test_message_byte_for_byte(self):
        c = self.client(UNTRUSTED, ehlo=True)
        msg = make_message(subject="ordinary", extra_headers=[
            "X-Long: " + "x" * 900, "X-Folded: one", "\ttwo", " three"],
            body_lines=[b".leading dot", b"..two dots", b".", b"", b"\xc3\xa9t\xc3\xa9",
                        b"last line"])
        wire = dot_stuff(msg)
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        c.expect(250, line="RCPT TO:<user@example.test>")
        c.expect(354, line="DATA")
        c.send(wire)
        m = self.message_for(c.expect(250))
        self.assertEqual(m.data, wire)
        self.assertTrue(m.data.endswith(b"\r\n.\r\n"))


# ---------------------------------------------------------------------------
# Reload
# ---------------------------------------------------------------------------


class Reload(unittest.TestCase):
    """A fresh gateway per test: the tests change its policy."""

    def setUp(self):
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.stop)
        self.gw = Gateway([self.backend.addr], name="policy-reload", policy=policy())
        self.addCleanup(self.gw.stop_and_check)
        self.gw.start()

    def tearDown(self):
        res = getattr(getattr(self, "_outcome", None), "result", None)
        if res is not None and any(t is self for t, _ in res.failures + res.errors):
            show_log_tail(self.gw, self.id())

    def client(self, source_addr):
        c = self.gw.client(source_addr=source_addr)
        self.addCleanup(c.close)
        c.ehlo()
        return c

    def relay_reply(self, c):
        """MAIL and RCPT TO:<u@other.example> on c; returns the RCPT reply
        and resets the transaction."""
        c.expect(250, line="MAIL FROM:<%s>" % SENDER)
        r = c.cmd("RCPT TO:<u@other.example>")
        c.expect(250, line="RSET")
        return r

    def wait_new_policy(self):
        """Opens sessions from 127.0.0.2 until one may relay; returns it."""
        def probe():
            c = self.gw.client(source_addr=UNTRUSTED)
            try:
                c.ehlo()
                c.expect(250, line="MAIL FROM:<%s>" % SENDER)
                r = c.cmd("RCPT TO:<u@other.example>")
                if r.code == 250:
                    self.addCleanup(c.close)
                    c.expect(250, line="RSET")
                    return c
                c.close()
                return None
            except BaseException:
                c.close()
                raise
        return wait_until(probe, 10, "a session under the new policy", 0.05)

    def test_session_before_reload_keeps_old_policy(self):
        a = self.client(UNTRUSTED)
        self.gw.write_policy(POLICY_TRUST_2)
        self.gw.signal(signal.SIGHUP)
        self.wait_new_policy()
        self.assertEqual(self.relay_reply(a).raw, RELAY_DENIED.encode())

    def test_session_after_reload_gets_new_policy(self):
        self.assertEqual(self.relay_reply(self.client(UNTRUSTED)).raw, RELAY_DENIED.encode())
        self.gw.write_policy(POLICY_TRUST_2)
        self.gw.signal(signal.SIGHUP)
        b = self.wait_new_policy()
        msg = make_message()
        b.transaction(SENDER, ["u@other.example"], msg)
        m = self.backend.wait_messages(1)[0]
        self.assertEqual(m.rcpt_lines, [b"RCPT TO:<u@other.example>"])
        self.assertEqual(m.data, dot_stuff(msg))

    def test_broken_policy_logged_with_position(self):
        offset = self.gw.log_size()
        self.gw.write_policy(POLICY_BAD)
        self.gw.signal(signal.SIGHUP)
        line, col = POLICY_BAD_POS
        rx = re.compile(re.escape(self.gw.policy_path) + r":%d:%d: " % (line, col))
        wait_until(lambda: rx.search(self.gw.log_since(offset)), 10,
                   "%s:%d:%d in the log" % (self.gw.policy_path, line, col))

    def test_broken_policy_keeps_old(self):
        offset = self.gw.log_size()
        self.gw.write_policy(POLICY_BAD)
        self.gw.signal(signal.SIGHUP)
        rx = re.compile(re.escape(self.gw.policy_path) + r":\d+:\d+: ")
        wait_until(lambda: rx.search(self.gw.log_since(offset)), 10, "the reload error")
        self.assertTrue(self.gw.running())
        c = self.client(UNTRUSTED)
        # Old policy: relay denied (the broken one trusts 127.0.0.2) and the
        # old rules still apply.
        self.assertEqual(self.relay_reply(c).raw, RELAY_DENIED.encode())
        self.assertEqual(c.cmd("MAIL FROM:<x@spam.example>").raw, SPAM_REPLY.encode())


# ---------------------------------------------------------------------------
# Command line: -t and --explain
# ---------------------------------------------------------------------------


def run(*args, timeout=20):
    """Runs the gateway binary from "/": the policy file is found relative
    to the config file, not the working directory."""
    return subprocess.run([gateway_bin()] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd="/")


class Cli(unittest.TestCase):
    """A config naming policy.yaml beside it, checked or explained."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="smtpgate-policy-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config_path = os.path.join(self.dir, "gateway.yaml")
        self.policy_path = os.path.join(self.dir, "policy.yaml")
        cfg = deep_merge(DEFAULT_CONFIG, {"listen": [{"address": "127.0.0.1:2525"}],
                                          "backend": {"servers": ["127.0.0.1:10025"]},
                                          "policy": "policy.yaml"})
        with open(self.config_path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        self.write_policy(policy())

    def write_policy(self, text):
        with open(self.policy_path, "w") as f:
            f.write(text)

    def explain(self, *args):
        p = run("-c", self.config_path, "--explain", *args)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return p.stdout

    def test_check_good_policy(self):
        p = run("-t", "-c", self.config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_policy_error_position(self):
        self.write_policy(POLICY_BAD)
        p = run("-t", "-c", self.config_path)
        out = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, out)
        self.assertRegex(out, r"(?m)^%s:%d:%d: \S" % ((re.escape(self.policy_path),) +
                                                      POLICY_BAD_POS))

    def test_check_policy_error_names_the_problem(self):
        self.write_policy(POLICY_BAD)
        p = run("-t", "-c", self.config_path)
        self.assertRegex(p.stderr, r"rules\[0\]\.match\.sender: .*\(unclosed")

    def test_check_missing_policy_file(self):
        os.unlink(self.policy_path)
        p = run("-t", "-c", self.config_path)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(self.policy_path, p.stdout + p.stderr)

    def test_explain_refused_client(self):
        out = self.explain("client=192.0.2.7")
        self.assertRegex(out, r'refuse\s+refuse: "554 5\.7\.1 ')
        self.assertIn("session refused", out)

    def test_explain_rule_rejects_sender(self):
        out = self.explain("client=198.51.100.1", "helo=x", "from=a@spam.example")
        self.assertRegex(out, r'rules\s+reject \(rule block-spam-sender\): '
                              r'"550 5\.7\.1 Sender rejected"')

    def test_explain_relay_rejects(self):
        out = self.explain("client=198.51.100.1", "from=a@b.example", "rcpt=u@other.example")
        self.assertRegex(out, r'relay\s+reject: "550 5\.7\.1 <u@other\.example>: '
                              r'Relay access denied"')

    def test_explain_source_route_stripped(self):
        out = self.explain("client=198.51.100.1", "from=a@b.example",
                           "rcpt=<@a.example:u@example.test>")
        self.assertIn("forwarded as <u@example.test>", out)

    def test_explain_warn_rule(self):
        out = self.explain("client=198.51.100.1", "helo=localhost")
        self.assertIn("rule watch-helo matched: warn", out)

    def test_explain_header_rule(self):
        out = self.explain("client=198.51.100.1", "from=a@b.example", "rcpt=u@example.test",
                           "header=Subject: buy viagra")
        self.assertRegex(out, r'rules\s+reject \(rule block-viagra\): '
                              r'"550 5\.7\.1 Message content rejected"')


if __name__ == "__main__":
    unittest.main()
