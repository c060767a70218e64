#!/usr/bin/env python3
"""Command line: -V, -t (config test)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_CONFIG, REPO_ROOT, deep_merge, gateway_bin, to_yaml  # noqa: E402

GOOD = deep_merge(DEFAULT_CONFIG, {"listen": [{"address": "127.0.0.1:2525"}],
                                   "backend": {"servers": ["127.0.0.1:10025",
                                                           "127.0.0.1:10026"]}})

# Two errors, each at its value (1-based line:column): line 5 (bad port,
# column 14) and line 9 (not a size, column 21).
BAD = """\
hostname: gate.example.test
workers: 1
log_level: debug
listen:
  - address: 127.0.0.1:notaport
backend:
  servers: [127.0.0.1:10025]
limits:
  max_message_size: lots
"""
BAD_POSITIONS = [(5, 14), (9, 21)]


def run(*args, timeout=20):
    return subprocess.run([gateway_bin()] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


class Cli(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="smtpgate-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version(self):
        p = run("-V")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout + p.stderr, r"\b\d+\.\d+\.\d+\b")

    def test_check_good_config(self):
        path = self.write("good.yaml", to_yaml(GOOD) + "\n")
        p = run("-t", "-c", path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_bad_config_fails(self):
        path = self.write("bad.yaml", BAD)
        p = run("-t", "-c", path)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_bad_config_reports_every_error(self):
        path = self.write("bad.yaml", BAD)
        p = run("-t", "-c", path)
        out = p.stdout + p.stderr
        for line, col in BAD_POSITIONS:
            self.assertRegex(out, r"(?m)^%s:%d:%d: \S" % (re.escape(path), line, col),
                             "missing error at %d:%d in:\n%s" % (line, col, out))

    def test_check_yaml_syntax_error_position(self):
        path = self.write("syntax.yaml", "hostname: gate.example.test\nlisten: [\n")
        p = run("-t", "-c", path)
        out = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, out)
        self.assertRegex(out, r"(?m)^%s:\d+:\d+: \S" % re.escape(path))

    def test_check_missing_file(self):
        p = run("-t", "-c", os.path.join(self.dir, "nope.yaml"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.yaml", p.stdout + p.stderr)

    def test_shipped_example_config_passes(self):
        path = os.path.join(REPO_ROOT, "deploy", "example.yaml")
        p = run("-t", "-c", path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_shipped_reference_config_passes(self):
        path = os.path.join(REPO_ROOT, "deploy", "smtpgate.yaml")
        p = run("-t", "-c", path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
