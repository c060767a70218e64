#!/usr/bin/env python3
"""Generate a large, realistic smtpgate policy for the benchmark.

Usage: genpolicy.py [options] OUTPUT.yaml

Writes a policy (deploy/policy.yaml describes the schema) of --rules rules
(default 1,000), --regexes of which (default 100) are PCRE2 regexes, plus
a relay section (trusted_networks, local_domains) and refuse_clients, all
built so that the benchmark's own traffic passes every check without
matching anything:

  - the client (--client, 127.0.0.1) is in no network of trusted_networks,
    refuse_clients or a client rule: the relay check then has to find the
    recipient's domain in local_domains, which holds it among the others;
  - no exact string equals the traffic's HELO name, sender, recipient or
    header lines, and no regex matches them (checked here with Python's re,
    whose syntax the regexes keep to the subset PCRE2 shares);
  - so every message goes through every rule of every stage: the client
    rules at connect, the HELO rules, the sender rules at MAIL, the
    recipient rules at each RCPT and the header rules at each header line.

The rules mix CIDR lists on the client (some with a sender too), exact
client names, HELO names, sender and recipient addresses and header lines,
and regexes on the sender, recipient, HELO name and header lines; a few
have action warn (a dry run: a match would only be logged), some refuse,
tempfail or accept.  The very last rule is the canary: an exact sender
(--canary) that the benchmark's probe sends once to check that the running
smtpgate has this policy loaded, with its reply text (--canary-reply).

The output is the same for the same options (a fixed random seed).  A
summary line goes to standard error.  Python standard library only.
"""
import argparse
import ipaddress
import random
import re
import sys


def q(s):
    """A YAML single-quoted scalar: backslashes stay as written."""
    return "'" + s.replace("'", "''") + "'"


class Gen:
    def __init__(self, args):
        self.a = args
        self.rnd = random.Random(args.seed)
        self.client = ipaddress.ip_address(args.client)
        self.exact = {s.lower() for s in
                      [args.helo, args.sender, args.rcpt] + args.header}
        self.subjects = [args.helo, args.sender, args.rcpt] + args.header
        self.seen_nets = set()

    # ---- networks ---------------------------------------------------------

    def net4(self, lo=8, hi=32):
        """A random IPv4 network that does not hold the client."""
        while True:
            prefix = self.rnd.randint(lo, hi)
            first = self.rnd.choice([o for o in range(1, 224)
                                     if o not in (10, 127)])
            addr = first << 24 | self.rnd.getrandbits(24)
            net = ipaddress.ip_network((addr, prefix), strict=False)
            if self.client in net or net.overlaps(
                    ipaddress.ip_network("127.0.0.0/8")) or \
                    str(net) in self.seen_nets:
                continue
            self.seen_nets.add(str(net))
            return str(net)

    def net6(self):
        """A random IPv6 network in 2001:db8::/32 (documentation)."""
        while True:
            prefix = self.rnd.choice([48, 56, 64, 64, 64, 128])
            addr = 0x20010db8 << 96 | self.rnd.getrandbits(96)
            net = ipaddress.ip_network((addr, prefix), strict=False)
            if str(net) in self.seen_nets:
                continue
            self.seen_nets.add(str(net))
            return str(net)

    def nets(self, n, v6_share=0.15, lo=8, hi=32):
        return [self.net6() if self.rnd.random() < v6_share
                else self.net4(lo, hi) for _ in range(n)]

    # ---- names and addresses ---------------------------------------------

    WORDS = ["mail", "smtp", "mx", "relay", "out", "bulk", "news", "promo",
             "offers", "deals", "market", "info", "notify", "alerts",
             "secure", "account", "billing", "support", "update", "lucky"]
    TLDS = ["example", "example.com", "example.net", "example.org", "test",
            "invalid"]
    LOCALS = ["info", "sales", "noreply", "newsletter", "admin", "billing",
              "support", "winner", "offers", "postmaster", "abuse", "hr",
              "jobs", "office", "service", "promo", "john.doe", "j.smith"]

    def domain(self, i):
        w = self.rnd.choice(self.WORDS)
        return f"{w}{i}-{self.rnd.randint(0, 999)}.{self.rnd.choice(self.TLDS)}"

    def host(self, i):
        return f"{self.rnd.choice(self.WORDS)}{self.rnd.randint(1, 99)}." \
            f"{self.domain(i)}"

    def address(self, i):
        return f"{self.rnd.choice(self.LOCALS)}{self.rnd.randint(0, 9999)}" \
            f"@{self.domain(i)}"

    def unique(self, make, i):
        """make(i) until it is not one of the traffic's exact strings."""
        while True:
            s = make(i)
            if s.lower() not in self.exact:
                return s

    # ---- regexes ----------------------------------------------------------

    def sender_re(self, i):
        d = self.rnd.choice(self.WORDS)
        return self.rnd.choice([
            rf"/@(?:[a-z0-9-]+\.)*{d}{i}\.(?:example|test)$/i",
            rf"/^(?:{d}|bounce|mailer)-\d+-{i}@/",
            rf"/^[^@]+@{d}{i}-[0-9]{{2,4}}\.example\.(?:com|net)$/i",
            rf"/\.{d}{i}\.invalid$/",
            rf"/^[a-z]{{8,}}\d{{4,}}@(?:[^.@]+\.)?promo{i}\./i",
            rf"/^prvs=[0-9a-f]{{10}}={d}{i}@/",
        ])

    def rcpt_re(self, i):
        d = self.rnd.choice(self.WORDS)
        return self.rnd.choice([
            rf"/^(?:abuse|noc|security)-{i}@/i",
            rf"/@(?:[a-z0-9-]+\.)*old-{d}{i}\.example$/i",
            rf"/^[^@]*[%!][^@]*@/",
            rf"/^{d}\+{i}[a-z]*@/",
            rf"/@(?:mx|mail)\d*\.{d}{i}\.(?:com|net|org)\.example$/",
        ])

    def helo_re(self, i):
        d = self.rnd.choice(self.WORDS)
        return self.rnd.choice([
            rf"/^(?:\d{{1,3}}[.-]){{3}}\d{{1,3}}\.(?:dyn|pool|dsl){i}\./i",
            rf"/^\[?(?:10|192\.168)\.\d+\.\d+\.{i}\]?$/",
            rf"/^{d}{i}(?:\.[a-z0-9-]+)*\.invalid$/i",
            rf"/(?:^|\.)(?:dynamic|dhcp|cable)-{i}-\d+\./i",
            rf"/^[a-z]{{12,}}{i}$/",
        ])

    def header_re(self, i):
        d = self.rnd.choice(self.WORDS)
        return self.rnd.choice([
            rf"/^Subject:.*\b(?:viagra|cialis|lottery|winner){i}\b/i",
            rf"/^X-Mailer:\s*(?:Bulk|Mass|Turbo)\s*Mailer\s+{i}/i",
            rf"/^Received: from [^ ]*\.{d}{i}\.(?:example|invalid) /",
            rf"/^From:.*@(?:[a-z0-9-]+\.)*{d}{i}-spam\.example>?$/i",
            rf"/^Content-Type:\s*multipart\/mixed;.*boundary=\"?{d}{i}_/i",
            rf"/^Reply-To:.*@free{i}mail\.example/i",
            rf"/^X-Spam-Flag:\s*YES{i}/i",
            rf"/^To:.*\bundisclosed-recipients{i}\b/i",
            rf"/^Message-Id:\s*<[^@>]*@(?:localhost|{d}{i}\.invalid)>/i",
        ])

    def check_re(self, pat, key):
        """Fails when the regex pat would match the traffic."""
        body, _, flags = pat[1:].rpartition("/")
        rf = re.IGNORECASE if "i" in flags else 0
        rx = re.compile(body, rf)
        for s in self.subjects:
            if rx.search(s):
                sys.exit(f"genpolicy: regex {pat} ({key}) matches the "
                         f"benchmark traffic {s!r}")

    # ---- the policy ---------------------------------------------------------

    def action(self, i, kinds):
        """An action for rule i, warn for a few, else one of kinds."""
        if i % 97 == 13:
            return "warn"
        return self.rnd.choice(kinds)

    def rules(self):
        a = self.a
        nre = a.regexes
        nexact = a.rules - nre - 1              # the canary is the last
        # Shares of the exact rules and of the regexes, by what they match.
        ex_share = [("client", 0.22), ("client_name", 0.02), ("helo", 0.17),
                    ("sender", 0.28), ("client+sender", 0.02),
                    ("recipient", 0.22), ("header", 0.07)]
        re_share = [("helo", 0.20), ("sender", 0.30), ("recipient", 0.25),
                    ("header", 0.25)]

        def split(total, shares):
            n = [int(total * s) for _, s in shares]
            n[3 if len(n) > 3 else 0] += total - sum(n)
            return [(k, c) for (k, _), c in zip(shares, n)]

        out = []
        i = 0
        for key, count in split(nexact, ex_share):
            for _ in range(count):
                i += 1
                if key == "client":
                    nets = self.nets(self.rnd.choice([1, 1, 1, 2, 3, 4]),
                                     lo=16)
                    m = {"client": nets if len(nets) > 1 else nets[0]}
                    act = self.action(i, ["reject", "refuse", "refuse",
                                          "tempfail", "accept"])
                elif key == "client_name":
                    m = {"client_name": self.unique(self.host, i)}
                    act = self.action(i, ["reject", "refuse", "tempfail"])
                elif key == "helo":
                    m = {"helo": self.unique(self.host, i)}
                    act = self.action(i, ["reject", "reject", "tempfail"])
                elif key == "sender":
                    m = {"sender": self.unique(self.address, i)}
                    act = self.action(i, ["reject", "reject", "tempfail"])
                elif key == "client+sender":
                    m = {"client": self.nets(2, lo=16),
                         "sender": self.unique(self.address, i)}
                    act = self.action(i, ["accept", "reject"])
                elif key == "recipient":
                    m = {"recipient": self.unique(self.address, i)}
                    act = self.action(i, ["reject", "reject", "tempfail"])
                else:
                    m = {"header": self.unique(lambda i: self.rnd.choice([
                        f"X-Mailer: Mass Mailer Pro {i}.{self.rnd.randint(0, 9)}",
                        f"X-Campaign-Id: {self.rnd.getrandbits(40):x}",
                        f"Subject: You are our winner #{i}",
                        f"Precedence: bulk-{i}",
                    ]), i)}
                    act = self.action(i, ["reject", "tempfail"])
                out.append((f"{key.replace('+', '-')}-{i}", m, act))
        for key, count in split(nre, re_share):
            make = {"helo": self.helo_re, "sender": self.sender_re,
                    "recipient": self.rcpt_re, "header": self.header_re}[key]
            for _ in range(count):
                i += 1
                pat = make(i)
                self.check_re(pat, key)
                act = self.action(i, ["reject", "reject", "tempfail"])
                if i % 23 == 0:
                    act = "warn"
                out.append((f"{key}-re-{i}", {key: pat}, act))
        self.rnd.shuffle(out)                   # one file, mixed as edited
        out.append(("bench-canary", {"sender": a.canary}, "reject"))
        return out

    def write(self, f):
        a = self.a
        rules = self.rules()
        trusted = self.nets(a.trusted, lo=16)
        rdom = a.rcpt.rpartition("@")[2]
        domains = [self.domain(i) for i in range(a.domains - 1)]
        for k in range(0, len(domains), 3):     # every third: a subtree
            domains[k] = "." + domains[k]
        domains.insert(len(domains) * 2 // 3, rdom)
        refuse = self.nets(a.refuse)

        f.write("# Generated by deploy/bench/genpolicy.py for the benchmark "
                "(do not edit):\n")
        f.write(f"# {len(rules)} rules, {a.regexes} of them regexes; the "
                f"traffic ({a.client}, HELO {a.helo},\n# {a.sender} -> "
                f"{a.rcpt}) matches none of them.\n")
        f.write("relay:\n  trusted_networks:\n")
        for n in trusted:
            f.write(f"    - {q(n)}\n")
        f.write("  local_domains:\n")
        for d in domains:
            f.write(f"    - {d}\n")
        f.write("source_routes: strip\n")
        f.write("refuse_clients:\n")
        for n in refuse:
            f.write(f"  - {q(n)}\n")
        f.write("rules:\n")
        stats = {}
        for name, m, act in rules:
            parts = []
            for k, v in m.items():
                if isinstance(v, list):
                    parts.append(f"{k}: [{', '.join(q(x) for x in v)}]")
                else:
                    parts.append(f"{k}: {q(v)}")
            f.write(f"  - name: {name}\n    match: {{ {', '.join(parts)} }}\n"
                    f"    action: {act}\n")
            if name == "bench-canary":
                f.write(f"    reply: {q(a.canary_reply)}\n")
            stage = ("header" if "header" in m else "rcpt" if "recipient" in m
                     else "mail" if "sender" in m else "helo" if "helo" in m
                     else "connect")
            stats[stage] = stats.get(stage, 0) + 1
            if any(isinstance(v, str) and v.startswith("/")
                   for v in m.values()):
                stats["regex"] = stats.get("regex", 0) + 1
            stats[act] = stats.get(act, 0) + 1
        return len(rules), stats, len(trusted), len(domains), len(refuse)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output")
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--regexes", type=int, default=100)
    p.add_argument("--trusted", type=int, default=300,
                   help="trusted_networks entries [300]")
    p.add_argument("--domains", type=int, default=300,
                   help="local_domains entries, the recipient's included")
    p.add_argument("--refuse", type=int, default=200,
                   help="refuse_clients entries [200]")
    p.add_argument("--client", default="127.0.0.1")
    p.add_argument("--helo", default="bench.example.test")
    p.add_argument("--sender", default="bench@sender.example")
    p.add_argument("--rcpt", default="bench@rcpt.example")
    p.add_argument("--header", action="append", default=None,
                   help="a header line of the traffic (repeatable)")
    p.add_argument("--canary", default="canary@policy-probe.invalid")
    p.add_argument("--canary-reply",
                   default="550 5.7.1 bench policy canary")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.header is None:
        # What smtp-source sends (the Date and Message-Id vary).
        a.header = [f"From: <{a.sender}>", f"To: <{a.rcpt}>",
                    "Date: Sun, 22 Nov 2026 05:54:00 +0000 (UTC)",
                    f"Message-Id: <2c65.0003.0000@{a.helo}>"]
    if a.regexes >= a.rules:
        p.error("--regexes must be below --rules")
    with open(a.output, "w") as f:
        n, st, nt, nd, nr = Gen(a).write(f)
    stages = ", ".join(f"{s} {st.get(s, 0)}" for s in
                       ("connect", "helo", "mail", "rcpt", "header"))
    acts = ", ".join(f"{k} {st[k]}" for k in
                     ("reject", "tempfail", "refuse", "accept", "warn")
                     if k in st)
    print(f"{n} rules ({st.get('regex', 0)} regexes; by stage: {stages}; "
          f"{acts}), {nt} trusted networks, {nd} local domains, "
          f"{nr} refused networks", file=sys.stderr)


if __name__ == "__main__":
    main()
