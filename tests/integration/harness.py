"""
harness.py: helpers for the smtpgate integration tests (standard library only).

Everything here runs on 127.0.0.1 and is built so that two test runs on one
machine never collide: servers we own bind port 0 and keep their socket; the
gateway's and Postfix's listen ports are picked with free_port() right before
the process starts.  Every process started is registered and killed at exit
as a safety net; tests still stop what they start through addCleanup().

Pieces:
  free_port()        a port nobody listens on right now
  SmtpClient         raw SMTP client: send bytes, read (multi-line) replies
  Reply              (code, lines, raw) plus .enhanced, .text, .texts
  Gateway            the smtpgate binary with a YAML config of our own
  RecordingBackend   threaded SMTP server recording every byte it receives
  ClosedPort         a bound, non-listening port: connections are refused
  SmtpSink           Postfix's smtp-sink on a free port
  PrivatePostfix     a private real Postfix instance in a temp dir
  RedisServer        a private real redis-server on a free port
  tls_files()        a test CA and a server certificate for TLS tests
  client_tls_context()  an ssl.SSLContext for the test clients
  redis_command()    one command to a Redis server (a tiny RESP client)
  GatewayTestCase    unittest base: one gateway + backend per class
  DeployScript       a deploy/ script serving until SIGTERM (ready line, pids)

Environment: SMTPGATE_BIN (the binary; default ../../build/smtpgate from
this file), SMTPGATE_KEEP_TMP=1 (keep temp dirs: configs, logs, maildirs).
"""

import atexit
import base64
import copy
import grp
import hashlib
import itertools
import os
import pwd
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CRLF = b"\r\n"

# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------


def gateway_bin():
    """Path of the gateway binary: $SMTPGATE_BIN or ../../build/smtpgate."""
    path = os.environ.get("SMTPGATE_BIN")
    if not path:
        path = os.path.join(HERE, "..", "..", "build", "smtpgate")
    return os.path.abspath(path)


# Listening ports come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default): a port the kernel
# handed out for bind(0) and we released can be taken by any outgoing
# connection before our server binds it, and the tests make thousands.
PORT_LOW, PORT_HIGH = 15000, 32767


def free_port(host="127.0.0.1"):
    """A TCP port that is free right now: a random one below the ephemeral
    range that binds (without SO_REUSEADDR, so not one in TIME_WAIT)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(PORT_LOW, PORT_HIGH)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what="condition", interval=0.02):
    """Polls pred() until it returns a true value or timeout seconds pass.
    Returns that value; raises TimeoutError naming `what` otherwise.  This is
    for states that send no message (a file appearing, a log line)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def has_bare_cr_lf(data):
    """True when data holds a CR not followed by LF or an LF not preceded by CR."""
    return b"\r" in data.replace(CRLF, b"") or b"\n" in data.replace(CRLF, b"")


def make_message(subject="test", body_lines=None, extra_headers=()):
    """A small RFC 5322 message in wire form (CRLF, no terminator)."""
    msgid = "<%s@client.example.test>" % os.urandom(8).hex()
    head = [
        b"From: <sender@client.example.test>",
        b"To: <user@example.test>",
        ("Subject: %s" % subject).encode(),
        ("Message-ID: %s" % msgid).encode(),
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000",
    ] + [h.encode() if isinstance(h, str) else h for h in extra_headers]
    if body_lines is None:
        body_lines = [b"Hello,", b"", b"this is a test message.", b"-- ", b"tester"]
    body = [l.encode() if isinstance(l, str) else l for l in body_lines]
    return CRLF.join(head) + CRLF + CRLF + CRLF.join(body) + CRLF


def dot_stuff(msg):
    """Dot-stuffs a CRLF message and appends the terminator '.\\r\\n'.
    msg must end in CRLF (or be empty)."""
    assert msg == b"" or msg.endswith(CRLF)
    lines = msg.split(CRLF)[:-1] if msg else []
    out = [b"." + l if l.startswith(b".") else l for l in lines]
    return b"".join(l + CRLF for l in out) + b".\r\n"


def make_big_message(size):
    """A message of about `size` bytes: headers and base64 lines (76 chars +
    CRLF), pseudo-random so a lost or duplicated block shows up in a hash."""
    head = make_message(subject="big", body_lines=[]).rstrip(CRLF) + CRLF + CRLF
    nraw = max(0, (size - len(head)) * 57 // 78)
    raw = hashlib.sha256(b"seed").digest()
    # Expand deterministically without holding two huge copies for long.
    chunks = []
    block = raw
    total = 0
    while total < nraw:
        block = hashlib.sha512(block).digest() * 64  # 4096 bytes
        chunks.append(block)
        total += len(block)
    data = b"".join(chunks)[:nraw]
    body = base64.encodebytes(data).replace(b"\n", CRLF)
    return head + body


SETPRIV = shutil.which("setpriv")


def die_with_us(argv):
    """argv prefixed so that the process is SIGKILLed when this test process
    dies, even by SIGKILL (PR_SET_PDEATHSIG through util-linux setpriv,
    which then execs argv: the pid stays the same).  Unchanged when setpriv
    is missing."""
    if SETPRIV:
        return [SETPRIV, "--pdeathsig", "KILL", "--"] + list(argv)
    return list(argv)


_procs_lock = threading.Lock()
_procs = []  # (Popen, pgid) of everything started, killed at exit


def _register(proc):
    with _procs_lock:
        _procs.append(proc)


_owned = []  # Gateway, SmtpSink, PrivatePostfix objects: cleanup() at exit


def _own(obj):
    with _procs_lock:
        if obj not in _owned:
            _owned.append(obj)


@atexit.register
def _kill_leftovers():
    with _procs_lock:
        procs = list(_procs)
        owned = list(_owned)
    for obj in owned:
        try:
            obj.cleanup()
        except Exception:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(5)
            except Exception:
                pass


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")  # unittest stops on it; atexit cleans up


# A runner's SIGTERM (a ctest timeout, say) still stops what we started.
if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and \
        threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _sigterm)


# ---------------------------------------------------------------------------
# SMTP client
# ---------------------------------------------------------------------------


class ConnectionClosed(Exception):
    """The peer closed the connection before a complete reply arrived."""


class Reply(NamedTuple):
    code: int          # 250
    lines: list        # full lines without CRLF: ["250-gate", "250 DSN"]
    raw: bytes         # exactly the bytes received, CRLFs included

    @property
    def texts(self):
        """Text of each line after "ddd-" / "ddd "."""
        return [l[4:] for l in self.lines]

    @property
    def text(self):
        """Text of the first line after the code."""
        return self.texts[0] if self.lines else ""

    @property
    def enhanced(self):
        """Enhanced status code of the first line ("5.5.2"), or None."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})(?: |$)", self.text)
        return m.group(1) if m else None

    def __str__(self):
        return self.raw.decode("utf-8", "replace").rstrip("\r\n")


class SmtpClient:
    """A raw SMTP client.  Nothing is sent unless asked; replies are parsed
    strictly (each line must end in CRLF; every line of one reply carries the
    same code)."""

    def __init__(self, port, host="127.0.0.1", source_addr=None, timeout=10.0):
        self.host = host
        self.port = port
        self.source_addr = source_addr
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.eof = False

    # -- connection --------------------------------------------------------

    def connect(self):
        """Connects (from source_addr when given).  Returns self."""
        src = (self.source_addr, 0) if self.source_addr else None
        self.sock = socket.create_connection((self.host, self.port), self.timeout,
                                             source_address=src)
        self.sock.settimeout(None)
        return self

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    @property
    def local_addr(self):
        return self.sock.getsockname()[0]

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sending -----------------------------------------------------------

    def send(self, data):
        """Sends bytes (or str, encoded as UTF-8) as they are."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def sendline(self, line):
        """Sends line followed by CRLF."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + CRLF)

    # -- receiving ---------------------------------------------------------

    def _fill(self, deadline):
        """Reads more bytes into self.buf.  Returns False on EOF."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete reply within the deadline; have %r" % self.buf[:300])
        # Under TLS, decrypted bytes may wait in the SSL object, unseen by
        # select().
        tls_ready = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
        if not tls_ready:
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                raise TimeoutError("no complete reply within the deadline; have %r" % self.buf[:300])
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        except ssl.SSLWantReadError:
            return True  # a TLS record is not complete yet
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_line(self, timeout=None):
        """Reads one line ending in LF; returns it with its line ending."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            if not self._fill(deadline):
                raise ConnectionClosed("connection closed; unterminated data %r" % self.buf)

    def read_reply(self, timeout=None):
        """Reads one complete reply.  Raises ConnectionClosed on EOF before a
        reply, TimeoutError when none completes in time, and AssertionError
        when the reply is malformed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        raw = b""
        lines = []
        code = None
        while True:
            left = max(0.0, deadline - time.monotonic())
            line = self.read_line(left)
            raw += line
            if not line.endswith(CRLF):
                raise AssertionError("reply line not ending in CRLF: %r" % raw)
            text = line[:-2].decode("utf-8", "replace")
            m = re.match(r"^(\d{3})([ -]|$)", text)
            if not m:
                raise AssertionError("malformed reply line: %r" % raw)
            c = int(m.group(1))
            if code is None:
                code = c
            elif c != code:
                raise AssertionError("reply lines with different codes: %r" % raw)
            lines.append(text)
            if m.group(2) != "-":
                return Reply(code, lines, raw)

    def cmd(self, line, timeout=None):
        """Sends a command line and returns its reply."""
        self.sendline(line)
        return self.read_reply(timeout)

    def expect(self, code, enhanced=None, text=None, timeout=None, line=None):
        """Reads a reply (after sending `line` when given) and asserts its
        code, enhanced code and exact first-line text.  Returns the reply."""
        if line is not None:
            self.sendline(line)
        r = self.read_reply(timeout)
        check_reply(r, code, enhanced, text, ctx=line)
        return r

    def greet(self, timeout=None):
        """Reads the greeting; asserts it is a 220."""
        return self.expect(220, timeout=timeout)

    def ehlo(self, name="client.example.test"):
        return self.expect(250, line="EHLO " + name)

    def tls(self, ctx=None, server_hostname="gate.example.test"):
        """Starts TLS on the connection (after STARTTLS's 220, or at once for
        implicit TLS).  Bytes the server sent that were not read yet are an
        error: nothing may follow the 220.  Returns self."""
        if self.buf:
            raise AssertionError("bytes after the 220 to STARTTLS: %r" % self.buf)
        self.sock = (ctx or client_tls_context()).wrap_socket(
            self.sock, server_hostname=server_hostname)
        return self

    def starttls(self, ctx=None):
        """STARTTLS (220 asserted), then the handshake.  Returns self."""
        self.expect(220, "2.0.0", line="STARTTLS")
        return self.tls(ctx)

    @property
    def tls_version(self):
        """The TLS version in use ("TLSv1.3"), or None."""
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def wait_closed(self, timeout=5.0):
        """Waits for EOF from the peer.  Returns the bytes that arrived before
        it (whatever was unread); raises TimeoutError if it stays open."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        data, self.buf = self.buf, b""
        return data

    def pending(self, timeout=0.0):
        """Returns bytes that arrive within timeout without blocking further
        (used to show that nothing unexpected came)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                r, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
                if not r:
                    break
                if not self._fill(deadline + 1):
                    break
        except TimeoutError:
            pass
        data, self.buf = self.buf, b""
        return data

    def transaction(self, mail_from, rcpts, message, expect_final=250):
        """MAIL, RCPTs, DATA, the dot-stuffed message.  Asserts 250s for MAIL
        and RCPT, 354 for DATA, and `expect_final` for the end of data.
        Returns the final reply."""
        self.expect(250, line="MAIL FROM:<%s>" % mail_from)
        for r in rcpts:
            self.expect(250, line="RCPT TO:<%s>" % r)
        self.expect(354, line="DATA")
        self.send(dot_stuff(message))
        final = self.read_reply(60)
        if expect_final is not None:
            check_reply(final, expect_final, ctx="end of data")
        return final


def check_reply(r, code, enhanced=None, text=None, ctx=None):
    """Asserts a reply's code (int, or a 1-digit class like 4 meaning 4xx),
    its enhanced code and its first-line text."""
    where = (" (after %r)" % ctx) if ctx is not None else ""
    if code is not None:
        if code < 10:
            if r.code // 100 != code:
                raise AssertionError("expected a %dxx reply%s, got %r" % (code, where, str(r)))
        elif r.code != code:
            raise AssertionError("expected %d%s, got %r" % (code, where, str(r)))
    if enhanced is not None:
        allowed = enhanced if isinstance(enhanced, (tuple, list, set)) else (enhanced,)
        if r.enhanced not in allowed:
            raise AssertionError("expected enhanced code %s%s, got %r" % (
                "/".join(allowed), where, str(r)))
    if text is not None and r.text != text:
        raise AssertionError("expected text %r%s, got %r" % (text, where, str(r)))


# ---------------------------------------------------------------------------
# Gateway
# ---------------------------------------------------------------------------


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if re.fullmatch(r"[A-Za-z0-9_./@-][A-Za-z0-9_./@:-]*", s) and not s.endswith(":") \
            and s.lower() not in ("true", "false", "yes", "no", "null", "on", "off", "~"):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_yaml(obj, indent=0):
    """A tiny block-style YAML emitter for dicts, lists and scalars."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 1))
            elif isinstance(v, list):
                out.append("%s%s: []" % (pad, k))
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (pad, k))
            else:
                out.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                sub = to_yaml(v, indent + 1).split("\n")
                sub[0] = pad + "- " + sub[0].lstrip()
                out.extend(sub)
            else:
                out.append("%s- %s" % (pad, _yaml_scalar(v)))
    else:
        out.append(pad + _yaml_scalar(obj))
    return "\n".join(out)


def deep_merge(base, over):
    """Returns base updated recursively with over (dicts merge, others replace).
    A value of None in over deletes the key."""
    res = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            res.pop(k, None)
        elif isinstance(v, dict) and isinstance(res.get(k), dict):
            res[k] = deep_merge(res[k], v)
        else:
            res[k] = copy.deepcopy(v)
    return res


DEFAULT_CONFIG = {
    "hostname": "gate.example.test",
    "workers": 1,
    "log_level": "debug",
    "listen": [{"address": "127.0.0.1:0"}],  # replaced at start
    "backend": {
        "servers": [],
        "xclient": True,
        "timeouts": {"connect": "5s", "greeting": "20s", "helo": "20s", "mail": "20s",
                     "rcpt": "20s", "data_init": "20s", "data_block": "60s",
                     "data_done": "60s"},
    },
    "limits": {"max_message_size": 52428800, "max_recipients": 100,
               "max_line_length": 512, "max_connections": 1000, "max_errors": 10},
    "timeouts": {"command": "5m", "data": "3m", "drain": "30s"},
    "smtp": {"expn": False, "reverse_dns": False},
}


class GatewayError(Exception):
    pass


_tls_files = None


class TlsFiles(NamedTuple):
    dir: str
    ca_cert: str       # the test CA (PEM)
    cert: str          # server certificate for gate.example.test, localhost,
                       # 127.0.0.1, signed by the CA (PEM)
    key: str           # its key (PEM)
    chain: str         # cert then ca_cert, for cert_file


def tls_files():
    """A test CA and a server certificate it signed (EC P-256), made with
    the openssl command once per process in a temp dir removed at exit."""
    global _tls_files
    if _tls_files is not None:
        return _tls_files
    d = tempfile.mkdtemp(prefix="smtpgate-tls-")
    atexit.register(shutil.rmtree, d, True)
    j = lambda n: os.path.join(d, n)

    def openssl(*args):
        subprocess.run(["openssl"] + list(args), check=True, cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-subj", "/CN=smtpgate test CA", "-days", "3",
            "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-subj", "/CN=gate.example.test",
            "-keyout", "key.pem", "-out", "req.csr")
    with open(j("ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:gate.example.test,DNS:localhost,IP:127.0.0.1\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3", "-extfile", "ext.cnf", "-out", "cert.pem")
    with open(j("chain.pem"), "w") as f:
        f.write(open(j("cert.pem")).read() + open(j("ca.pem")).read())
    for n in ("key.pem", "ca.key"):
        os.chmod(j(n), 0o644)  # readable by a postfix that drops privileges
    _tls_files = TlsFiles(d, j("ca.pem"), j("cert.pem"), j("key.pem"), j("chain.pem"))
    return _tls_files


def client_tls_context(verify=True, **kw):
    """An ssl.SSLContext trusting the test CA (verify=False: anything).
    Keyword arguments set its attributes (minimum_version=..., say)."""
    if verify:
        ctx = ssl.create_default_context(cafile=tls_files().ca_cert)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_listener(mode="starttls", **kw):
    """A listen: entry (address filled in at start) with the test
    certificate."""
    f = tls_files()
    return dict({"address": "127.0.0.1:0", "tls": mode, "cert_file": f.chain,
                 "key_file": f.key}, **kw)


class Gateway:
    """The smtpgate binary under test, with its own temp dir and config.

    Gateway(backends=[addr, ...], overrides={...}) builds the config from
    DEFAULT_CONFIG; start() picks a free listen port, writes the config and
    waits for a 220 greeting; stop() sends SIGTERM and waits.  With
    policy={...} (or YAML text) the policy file policy.yaml is written next
    to the config, which names it ("policy: policy.yaml", relative to the
    config file)."""

    def __init__(self, backends=(), overrides=None, name="gw", policy=None, nofile=None):
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) of the process, or None
        self.dir = tempfile.mkdtemp(prefix="smtpgate-%s-" % name)
        _own(self)
        self.config_path = os.path.join(self.dir, "gateway.yaml")
        self.log_path = os.path.join(self.dir, "gateway.log")
        self.policy_path = os.path.join(self.dir, "policy.yaml")
        cfg = deep_merge(DEFAULT_CONFIG, {"backend": {"servers": [str(b) for b in backends]}})
        self.config = deep_merge(cfg, overrides or {})
        if policy is not None:
            self.write_policy(policy)
            self.config["policy"] = "policy.yaml"
        self.proc = None
        self.port = None   # the first listener's port
        self.ports = []    # every listener's port, in config order
        self.metrics_port = None  # metrics: address's port (with metrics:)
        self.logf = None
        self.terminating = False  # SIGTERM sent
        self.reported = False     # stop() raised on a sanitizer report

    # -- config ------------------------------------------------------------

    @property
    def hostname(self):
        return self.config["hostname"]

    def write_config(self, config=None, text=None):
        """Writes the config file atomically: `text` as is, else the dict
        (self.config by default) as YAML with the current listen port."""
        if text is None:
            cfg = copy.deepcopy(config if config is not None else self.config)
            if self.port is not None:
                ls = cfg.get("listen") or [{}]
                cfg["listen"] = [dict(lst, address="127.0.0.1:%d" % port)
                                 for lst, port in zip(ls, self.ports)]
            if self.metrics_port is not None and cfg.get("metrics") is not None:
                cfg["metrics"] = dict(cfg["metrics"],
                                      address="127.0.0.1:%d" % self.metrics_port)
            text = to_yaml(cfg) + "\n"
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.config_path)

    def write_policy(self, policy):
        """Writes the policy file (policy.yaml beside the config)
        atomically: a dict as YAML, or a str as is.  The process reads it at
        start and at each SIGHUP."""
        text = policy if isinstance(policy, str) else to_yaml(policy) + "\n"
        tmp = self.policy_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.policy_path)

    def reconfigure(self, overrides):
        """Updates self.config with overrides and rewrites the file (the
        process reads it at the next SIGHUP)."""
        self.config = deep_merge(self.config, overrides)
        self.write_config()

    # -- process -----------------------------------------------------------

    def start(self, timeout=10.0):
        """Starts the gateway; returns once a connection gets a 220 greeting.
        Raises GatewayError (with the log) when the process exits first."""
        binary = gateway_bin()
        if not os.access(binary, os.X_OK):
            raise GatewayError("gateway binary %s is missing (set SMTPGATE_BIN)" % binary)
        last = None
        for attempt in range(3):
            self.ports = [free_port() for _ in self.config.get("listen") or [{}]]
            self.port = self.ports[0]
            if self.config.get("metrics") is not None:
                # With a metrics: section, the endpoint gets a free port too.
                self.metrics_port = free_port()
            self.write_config()
            self.logf = open(self.log_path, "ab")
            self.terminating = False
            self.proc = subprocess.Popen(
                die_with_us([binary, "-c", self.config_path]), stdin=subprocess.DEVNULL,
                stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.dir, preexec_fn=self._limits if self.nofile else None)
            _register(self.proc)
            try:
                self._wait_greeting(timeout)
                return self
            except GatewayError as e:
                last = e
                # Another run may have taken the port between free_port() and
                # bind(): try again with a new one.
                if "in use" in self.log.lower():
                    self.kill()
                    continue
                self.kill()
                raise
        raise last

    def _limits(self):
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def cpu_seconds(self):
        """User + system CPU time the process has used so far (all its
        threads), from /proc/PID/stat."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        """Resident set size in KiB, from /proc/PID/status."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _wait_greeting(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise GatewayError("gateway exited with status %s before greeting; log:\n%s"
                                   % (self.proc.returncode, self.log[-4000:]))
            try:
                c = self.client(greet=False)
            except (ConnectionRefusedError, socket.timeout):
                if time.monotonic() >= deadline:
                    self.kill()
                    raise GatewayError("gateway did not listen within %.0fs; log:\n%s"
                                       % (timeout, self.log[-4000:]))
                time.sleep(0.02)  # nothing to await: the port is not open yet
                continue
            try:
                r = c.read_reply(max(0.5, deadline - time.monotonic()))
                if r.code != 220:
                    raise GatewayError("gateway greeting was %r" % str(r))
                try:
                    c.sendline("QUIT")
                    c.read_reply(2)
                    c.wait_closed(2)  # so the probe no longer counts
                except Exception:
                    pass
                return
            finally:
                c.close()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if sig == signal.SIGTERM:
            self.terminating = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=10.0):
        """Waits for the process to exit; returns its status (raises
        subprocess.TimeoutExpired when it does not)."""
        return self.proc.wait(timeout)

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL (process group) after the deadline.
        Returns the exit status (None when never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                # A test that sent SIGTERM itself gets no second one: the
                # process is already shutting down.
                if not self.terminating:
                    self.proc.send_signal(signal.SIGTERM)
                    self.terminating = True
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.logf:
            self.logf.close()
            self.logf = None
        # A sanitizer report (a leak found at exit, say) fails whoever
        # stops the gateway, once, whether or not it checks the status.
        report = None if self.reported else self.sanitizer_report()
        if report:
            self.reported = True
            raise AssertionError("sanitizer report in the gateway log:\n" + report)
        return self.proc.returncode

    def kill(self):
        """SIGKILL to the process group (only while the leader is not
        reaped, so the group id cannot belong to anyone else)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(10)

    def cleanup(self):
        """stop() and remove the temp dir."""
        try:
            self.stop()
        finally:
            if not os.environ.get("SMTPGATE_KEEP_TMP"):
                shutil.rmtree(self.dir, ignore_errors=True)

    SANITIZER_RX = re.compile(r"ERROR: (Address|Leak|Thread)Sanitizer|runtime error: ")

    def sanitizer_report(self):
        """The log from the first sanitizer report on, or None."""
        log = self.log
        m = self.SANITIZER_RX.search(log)
        return log[max(0, m.start() - 200):][:6000] if m else None

    def stop_and_check(self):
        """stop(), then raise AssertionError when the exit status is not 0
        or the log holds a sanitizer report; removes the temp dir either
        way."""
        try:
            status = self.stop()
            report = None if self.reported else self.sanitizer_report()
            if report:
                raise AssertionError("sanitizer report in the gateway log:\n" + report)
            if status not in (0, None):
                raise AssertionError("gateway exited with status %s after SIGTERM; log:\n%s"
                                     % (status, self.log[-3000:]))
        finally:
            self.cleanup()

    # -- logs and clients --------------------------------------------------

    @property
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def client(self, source_addr=None, greet=True, timeout=10.0, listener=0, tls_ctx=None):
        """A connected SmtpClient to listen entry `listener` (on a PROXY
        listener after a "PROXY UNKNOWN" header; TLS started on an implicit
        TLS listener; greeting read and checked when greet)."""
        c = SmtpClient(self.ports[listener], source_addr=source_addr, timeout=timeout).connect()
        ls = self.config.get("listen") or [{}]
        if ls[listener].get("proxy_protocol"):
            c.send(b"PROXY UNKNOWN\r\n")  # the connection's own address
        if ls[listener].get("tls") == "implicit":
            c.tls(tls_ctx)
        if greet:
            c.greet()
        return c

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def metrics_url(self, path="/metrics"):
        """The URL of the metrics endpoint (a config with metrics:)."""
        return "http://127.0.0.1:%d%s" % (self.metrics_port, path)


# ---------------------------------------------------------------------------
# Recording backend
# ---------------------------------------------------------------------------

DEFAULT_EHLO = ["PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES",
                "SMTPUTF8", "DSN", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN", "CHUNKING"]


def _reply_bytes(r):
    """A reply given as str/bytes (one or more lines, CRLF optional at the
    end) or a list of lines -> wire bytes ending in CRLF."""
    if isinstance(r, (list, tuple)):
        r = "\r\n".join(r)
    if isinstance(r, str):
        r = r.encode("utf-8")
    if not r.endswith(CRLF):
        r += CRLF
    return r


def _addr_of(arg):
    m = re.search(rb"<([^>]*)>", arg)
    return (m.group(1) if m else arg.strip()).decode("utf-8", "replace").lower()


class BackendMessage:
    """One completed transaction at the recording backend."""

    def __init__(self, conn, mail_from, rcpts, data, queue_id):
        self.conn = conn              # BackendConn it came on
        self.mail_line = mail_from    # full MAIL command line (bytes, no CRLF)
        self.mail_from = _addr_of(mail_from.split(b":", 1)[1]) if b":" in mail_from else ""
        self.rcpt_lines = rcpts       # accepted RCPT lines (bytes, no CRLF)
        self.rcpts = [_addr_of(r.split(b":", 1)[1]) for r in rcpts]
        self.data = data              # raw DATA bytes incl. ".\r\n" terminator
        self.queue_id = queue_id      # id in our "250 2.0.0 Ok: queued as ID"

    @property
    def sha256(self):
        return hashlib.sha256(self.data).hexdigest()


class BackendConn:
    """One connection to the recording backend."""

    def __init__(self, sock, index):
        self.sock = sock
        self.index = index
        self.peer = sock.getpeername()
        self.raw = bytearray()        # every byte received, in order
        self.commands = []            # command lines (bytes, no CRLF)
        self.xclient = {}             # XCLIENT attributes seen (str -> str)
        self.data_aborted = []        # DATA payloads cut off by a close
        self.tls_at = None            # index in commands where STARTTLS got
                                      # its 220 (with tls=True,
                                      # commands[tls_at:] came encrypted;
                                      # raw holds the plaintext), or None
        self.tls_version = None       # "TLSv1.3" once TLS is up, or None
        self.after_starttls = b""     # plaintext that followed STARTTLS
                                      # (dropped, never run as commands)
        self.pending = bytearray()    # replies held back (reply_chunking)
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def verbs(self):
        return [c.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
                for c in self.commands]


class ClosedPort:
    """A port bound on 127.0.0.1 but not listening: connections to it are
    refused, and no other process can take it while we hold it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    def close(self):
        self.sock.close()


class RecordingBackend:
    """A threaded SMTP server that records everything it receives.

    Replies are Postfix-like and can be changed per test:
      ehlo_keywords     list of EHLO keywords (after the first line)
      mail_replies      {sender: reply} override the MAIL reply
      rcpt_replies      {recipient: reply} override the RCPT reply (a reply
                        may have several lines: list or CRLF-joined text)
      data_reply        None (default "250 2.0.0 Ok: queued as ID") or a reply
      fault             None, or one of
                          "close_after_354"   close right after "354"
                          "close_at_mail"     close on MAIL without replying
                          "close_after_rcpt"  reply to RCPT, then close
                          "close_mid_data"    close after reading some DATA
                          "plain_after_starttls"  after the 220 to STARTTLS,
                                              answer whatever comes next with
                                              starttls_inject + "250 2.0.0 Ok"
                                              in plaintext (a server that
                                              cannot do TLS)
      starttls_reply    None (default: "220 2.0.0 Ready to start TLS" when
                        STARTTLS is offered, else the 502 of unknown
                        commands) or the reply to STARTTLS
      starttls_inject   bytes sent in the same write right after the 220 to
                        STARTTLS, in plaintext (b"" by default)
      reply_chunking    None: each reply in one write; "coalesce": the
                        replies to the commands of one read in one write;
                        "bytewise": one write per byte (under TLS, one
                        record per byte)
    Attributes may be set while the server runs; each command looks them up.
    listen=False binds the port without listening (connections refused)
    until listen() is called.  tls=True offers STARTTLS (the first EHLO
    reply lists it, the one under TLS does not) with the certificate of
    tls_files(); STARTTLS is also answered 220 when ehlo_keywords lists it
    without tls=True, but the connection then stays in plaintext."""

    counter = itertools.count(1)

    def __init__(self, listen=True, ehlo_keywords=None, hostname="backend.test", tls=False):
        self.hostname = hostname
        self.greeting = "220 %s ESMTP" % hostname
        self.ehlo_keywords = list(DEFAULT_EHLO if ehlo_keywords is None else ehlo_keywords)
        self.mail_replies = {}
        self.rcpt_replies = {}
        self.data_reply = None
        self.fault = None
        self.tls_context = None
        if tls:
            f = tls_files()
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(f.chain, f.key)
        self.starttls_reply = None
        self.starttls_inject = b""
        self.reply_chunking = None
        self.connections = []
        self.messages = []
        self.cond = threading.Condition()
        self.prefix = "%04X" % (os.getpid() & 0xFFFF)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.wake_r, self.wake_w = os.pipe()
        self.threads = []
        self.stopping = False
        self.accept_thread = None
        if listen:
            self.listen()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    def listen(self):
        """Starts listening and accepting (if not already)."""
        if self.accept_thread is not None:
            return
        self.sock.listen(128)
        self.accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.accept_thread.start()

    def stop(self):
        """Closes the listener and every connection; joins the threads."""
        self.stopping = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if self.accept_thread:
            self.accept_thread.join(5)
        self.sock.close()
        for c in list(self.connections):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self.threads):
            t.join(5)
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- waiting -----------------------------------------------------------

    def wait_messages(self, n, timeout=10.0):
        """Waits until at least n messages completed; returns the list."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise TimeoutError("backend got %d messages, wanted %d" % (len(self.messages), n))
            return list(self.messages)

    def wait_connections(self, n, timeout=10.0):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.connections) >= n, timeout):
                raise TimeoutError("backend got %d connections, wanted %d"
                                   % (len(self.connections), n))
            return list(self.connections)

    def wait_closed(self, conns, timeout=10.0):
        """Waits until every given connection was closed by the peer."""
        deadline = time.monotonic() + timeout
        for c in conns:
            if not c.closed.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("backend connection %d still open" % c.index)

    # -- serving -----------------------------------------------------------

    def _accept_loop(self):
        while not self.stopping:
            r, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in r or self.stopping:
                return
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            with self.cond:
                conn = BackendConn(s, len(self.connections))
                self.connections.append(conn)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _send(self, conn, reply):
        data = _reply_bytes(reply)
        if self.reply_chunking == "coalesce":
            conn.pending += data
        elif self.reply_chunking == "bytewise":
            for i in range(len(data)):
                conn.sock.sendall(data[i:i + 1])
        else:
            conn.sock.sendall(data)

    def _send_pending(self, conn):
        if conn.pending:
            data, conn.pending = bytes(conn.pending), bytearray()
            conn.sock.sendall(data)

    def _offers_starttls(self, conn):
        return conn.tls_at is None and (
            self.tls_context is not None
            or any(k.upper() == "STARTTLS" for k in self.ehlo_keywords))

    def _ehlo_keywords(self, conn):
        kw = [k for k in self.ehlo_keywords if k.upper() != "STARTTLS"]
        if self._offers_starttls(conn):
            kw.append("STARTTLS")
        return kw

    def _starttls(self, conn, buf):
        """STARTTLS: the reply (and starttls_inject), then the server side
        of the handshake.  Returns the socket to go on with."""
        if not self._offers_starttls(conn):
            self._send(conn, self.starttls_reply or "502 5.5.2 Error: command not recognized")
            return conn.sock
        reply = _reply_bytes(self.starttls_reply or "220 2.0.0 Ready to start TLS")
        self._send_pending(conn)
        conn.sock.sendall(reply + self.starttls_inject)
        if not reply.startswith(b"220"):
            return conn.sock
        # Whatever the client sent after STARTTLS is dropped (RFC 3207).
        conn.after_starttls = bytes(buf)
        del buf[:]
        conn.tls_at = len(conn.commands)
        if self.fault == "plain_after_starttls" or self.tls_context is None:
            if self.fault == "plain_after_starttls":
                conn.sock.recv(65536)
                conn.sock.sendall(self.starttls_inject + b"250 2.0.0 Ok\r\n")
            return conn.sock
        conn.sock = self.tls_context.wrap_socket(conn.sock, server_side=True)
        conn.tls_version = conn.sock.version()
        return conn.sock

    def _serve(self, conn):
        s = conn.sock
        buf = bytearray()
        in_data = False
        data_start = 0   # offset in buf where the DATA payload starts
        scan = 0         # where to resume searching for the terminator
        mail = None
        rcpts = []
        closed_by_us = False
        try:
            self._send(conn, self.greeting)
            while True:
                self._send_pending(conn)
                chunk = s.recv(262144)
                if not chunk:
                    break
                with conn.lock:
                    conn.raw += chunk
                buf += chunk
                while True:
                    if in_data:
                        # Payload is buf[data_start:]; it starts at a line
                        # start, so look for CRLF.CRLF with a virtual CRLF
                        # in front.
                        if buf[data_start:data_start + 3] == b".\r\n":
                            end = data_start + 3
                        else:
                            i = buf.find(b"\r\n.\r\n", max(data_start, scan))
                            if i < 0:
                                scan = max(data_start, len(buf) - 4)
                                if self.fault == "close_mid_data" and len(buf) - data_start > 10:
                                    conn.data_aborted.append(bytes(buf[data_start:]))
                                    closed_by_us = True
                                    raise _Close()
                                break
                            end = i + 5
                        payload = bytes(buf[data_start:end])
                        del buf[:end]
                        in_data = False
                        qid = "%s%06X" % (self.prefix, next(RecordingBackend.counter))
                        msg = BackendMessage(conn, mail, rcpts, payload, qid)
                        reply = self.data_reply or ("250 2.0.0 Ok: queued as %s" % qid)
                        mail, rcpts = None, []
                        with self.cond:
                            self.messages.append(msg)
                            self.cond.notify_all()
                        self._send(conn, reply)
                        continue
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line = bytes(buf[:i + 1])
                    del buf[:i + 1]
                    cmdline = line[:-2] if line.endswith(CRLF) else line[:-1]
                    conn.commands.append(cmdline)
                    verb = cmdline.split(b" ", 1)[0].split(b":", 1)[0].upper()
                    arg = cmdline[len(verb):].strip() if b" " in cmdline else b""
                    if verb in (b"EHLO", b"LHLO"):
                        lines = ["250-%s" % self.hostname] + \
                            ["250-%s" % k for k in self._ehlo_keywords(conn)]
                        lines[-1] = "250 " + lines[-1][4:]
                        self._send(conn, lines)
                    elif verb == b"HELO":
                        self._send(conn, "250 %s" % self.hostname)
                    elif verb == b"XCLIENT":
                        for tok in arg.split():
                            k, _, v = tok.partition(b"=")
                            conn.xclient[k.decode().upper()] = v.decode("utf-8", "replace")
                        mail, rcpts = None, []
                        self._send(conn, self.greeting)
                    elif verb == b"MAIL":
                        if self.fault == "close_at_mail":
                            closed_by_us = True
                            raise _Close()
                        if mail is not None:
                            self._send(conn, "503 5.5.1 Error: nested MAIL command")
                            continue
                        addr = _addr_of(arg.split(b":", 1)[1]) if b":" in arg else ""
                        reply = self.mail_replies.get(addr, "250 2.1.0 Ok")
                        if _reply_bytes(reply)[:1] == b"2":
                            mail, rcpts = cmdline, []
                        self._send(conn, reply)
                    elif verb == b"RCPT":
                        if mail is None:
                            self._send(conn, "503 5.5.1 Error: need MAIL command")
                            continue
                        addr = _addr_of(arg.split(b":", 1)[1]) if b":" in arg else ""
                        reply = self.rcpt_replies.get(addr, "250 2.1.5 Ok")
                        if _reply_bytes(reply)[:1] == b"2":
                            rcpts.append(cmdline)
                        self._send(conn, reply)
                        if self.fault == "close_after_rcpt":
                            closed_by_us = True
                            raise _Close()
                    elif verb == b"DATA":
                        if mail is None:
                            self._send(conn, "503 5.5.1 Error: need RCPT command")
                        elif not rcpts:
                            self._send(conn, "554 5.5.1 Error: no valid recipients")
                        else:
                            self._send(conn, "354 End data with <CR><LF>.<CR><LF>")
                            if self.fault == "close_after_354":
                                closed_by_us = True
                                raise _Close()
                            in_data = True
                            data_start = 0
                            scan = 0
                    elif verb == b"RSET":
                        mail, rcpts = None, []
                        self._send(conn, "250 2.0.0 Ok")
                    elif verb == b"NOOP":
                        self._send(conn, "250 2.0.0 Ok")
                    elif verb == b"STARTTLS":
                        s = self._starttls(conn, buf)
                    elif verb == b"QUIT":
                        self._send(conn, "221 2.0.0 Bye")
                        closed_by_us = True
                        raise _Close()
                    else:
                        self._send(conn, "502 5.5.2 Error: command not recognized")
        except _Close:
            pass
        except OSError:
            pass
        finally:
            if in_data and not closed_by_us:
                conn.data_aborted.append(bytes(buf[data_start:]))
            try:
                self._send_pending(conn)  # the 221 to QUIT, say
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
            conn.closed.set()
            with self.cond:
                self.cond.notify_all()

    # -- inspection --------------------------------------------------------

    def all_raw(self):
        out = b""
        for c in self.connections:
            with c.lock:
                out += bytes(c.raw)
        return out


class _Close(Exception):
    pass


# ---------------------------------------------------------------------------
# smtp-sink
# ---------------------------------------------------------------------------

SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:<free port>."""

    def __init__(self, extra_args=()):
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.dir = tempfile.mkdtemp(prefix="smtpgate-sink-")
        _own(self)
        self.log_path = os.path.join(self.dir, "sink.out")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    def start(self, timeout=10.0):
        last = None
        for attempt in range(3):
            self.port = free_port()
            args = [SMTP_SINK, "-c"]
            if os.geteuid() == 0:
                args += ["-u", "nobody"]
            args += self.extra_args + ["127.0.0.1:%d" % self.port, "1000"]
            self.out = open(self.log_path, "ab")
            self.proc = subprocess.Popen(die_with_us(args), stdin=subprocess.DEVNULL, stdout=self.out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            _register(self.proc)
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    last = RuntimeError("smtp-sink exited (%s): %s" % (
                        self.proc.returncode, self.output()[-2000:]))
                    break
                try:
                    c = SmtpClient(self.port).connect()
                except ConnectionRefusedError:
                    if time.monotonic() >= deadline:
                        self.stop()
                        raise RuntimeError("smtp-sink did not listen: %s" % self.output())
                    time.sleep(0.02)  # port not open yet: nothing to await
                    continue
                try:
                    r = c.read_reply(5)
                    if r.code != 220:
                        raise RuntimeError("smtp-sink greeting %r" % str(r))
                    c.sendline("QUIT")
                    c.read_reply(5)
                finally:
                    c.close()
                return self
        raise last

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(5)
        if getattr(self, "out", None):
            self.out.close()
            self.out = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Private Postfix
# ---------------------------------------------------------------------------

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# The TLS session cache and PRNG seed manager, for PrivatePostfix(tls=True).
MASTER_CF_TLS = """\
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""


def postfix_knows(param):
    """True when this Postfix has main.cf parameter `param`."""
    out = subprocess.run([POSTCONF, "-d", param], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.startswith(param + " =")


class PrivatePostfix:
    """A private Postfix instance: own config, queue, data and mail dirs under
    a temp dir, smtpd on 127.0.0.1:<free port>, local delivery of every
    recipient in example.test to one Maildir (TMP/mail/Maildir/), logs to
    TMP/maillog.  XCLIENT is allowed from 127.0.0.1; 127.0.0.1 is not in
    mynetworks.  tls=True offers STARTTLS with the certificate of
    tls_files(), logs each TLS session ("Anonymous TLS connection
    established from ...") and records TLS use in the Received header."""

    def __init__(self, extra_main=None, tls=False):
        # Postfix insists the maillog file lies under maillog_file_prefixes;
        # a temp dir in /tmp keeps that simple.
        self.dir = tempfile.mkdtemp(prefix="smtpgate-postfix-", dir="/tmp")
        _own(self)
        os.chmod(self.dir, 0o755)
        self.conf_dir = os.path.join(self.dir, "conf")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.data_dir = os.path.join(self.dir, "data")
        self.mail_base = os.path.join(self.dir, "mail")
        self.maildir = os.path.join(self.mail_base, "Maildir")
        self.log_path = os.path.join(self.dir, "maillog")
        self.extra_main = dict(extra_main or {})
        self.tls = tls
        self.port = None
        self.started = False
        self.tag = os.path.basename(self.dir).replace("smtpgate-postfix-", "")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    def _main_cf(self):
        pw = pwd.getpwnam("nobody")
        ngid = pw.pw_gid
        main = {
            "compatibility_level": "3.6",
            "config_directory": self.conf_dir,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "backend.test",
            "mydomain": "backend.test",
            "myorigin": "backend.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "192.0.2.1/32",
            "mynetworks_style": "host",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "syslog_name": "postfix-" + self.tag,
            "maillog_file_prefixes": "/tmp, /var",
            "maillog_file": self.log_path,
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "virtual_mailbox_domains": "example.test",
            "virtual_mailbox_base": self.mail_base,
            "virtual_mailbox_maps": "static:Maildir/",
            "virtual_uid_maps": "static:%d" % pw.pw_uid,
            "virtual_gid_maps": "static:%d" % ngid,
            "virtual_minimum_uid": "1",
            "message_size_limit": "104857600",
            "virtual_mailbox_limit": "0",
            "smtputf8_enable": "yes",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "delay_warning_time": "0",
            "queue_run_delay": "10s",
            "in_flow_delay": "0",
        }
        if postfix_knows("smtpd_forbid_bare_newline"):
            main["smtpd_forbid_bare_newline"] = "reject"
            main["smtpd_forbid_bare_newline_exclusions"] = ""
        if self.tls:
            f = tls_files()
            main.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": f.chain,
                "smtpd_tls_key_file": f.key,
                "smtpd_tls_received_header": "yes",
                "smtpd_tls_loglevel": "1",
            })
        main.update(self.extra_main)
        return "".join("%s = %s\n" % kv for kv in main.items())

    def start(self, timeout=20.0):
        """Writes the config, runs `postfix -c DIR start` and waits for the
        smtpd's 220.  Retries with another port if the port was taken."""
        pw = pwd.getpwnam("nobody")
        pf = pwd.getpwnam("postfix")
        os.makedirs(self.conf_dir, exist_ok=True)
        os.makedirs(self.queue_dir, exist_ok=True)
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.mail_base, exist_ok=True)
        os.chown(self.data_dir, pf.pw_uid, pf.pw_gid)
        os.chmod(self.data_dir, 0o700)
        os.chown(self.mail_base, pw.pw_uid, pw.pw_gid)
        for attempt in range(3):
            self.port = free_port()
            with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
                f.write(self._main_cf())
            with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
                f.write(MASTER_CF.format(listen="127.0.0.1:%d" % self.port))
                if self.tls:
                    f.write(MASTER_CF_TLS)
            out = self._postfix("start")
            self.started = True
            _own(self)
            if out.returncode != 0:
                raise RuntimeError("postfix start failed (%d): %s\n%s" % (
                    out.returncode, out.stdout + out.stderr, self.read_log()[-3000:]))
            try:
                self._wait_smtpd(timeout)
                return self
            except RuntimeError:
                if "in use" in self.read_log() and attempt < 2:
                    self.stop()
                    continue
                raise

    def _postfix(self, *args):
        return subprocess.run([POSTFIX, "-c", self.conf_dir] + list(args),
                              capture_output=True, text=True, timeout=60)

    def _wait_smtpd(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = SmtpClient(self.port).connect()
            except ConnectionRefusedError:
                if time.monotonic() >= deadline:
                    raise RuntimeError("postfix smtpd not listening on %d; log:\n%s"
                                       % (self.port, self.read_log()[-3000:]))
                time.sleep(0.05)  # master not up yet: nothing to await
                continue
            try:
                r = c.read_reply(max(1.0, deadline - time.monotonic()))
                if r.code != 220:
                    raise RuntimeError("postfix greeting %r" % str(r))
                c.sendline("QUIT")
                c.read_reply(5)
                return
            finally:
                c.close()

    def master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        if not self.started:
            return
        pid = self.master_pid()
        self._postfix("stop")
        if pid:
            # `postfix stop` returns before master has gone; wait for it.
            try:
                wait_until(lambda: not _pid_alive(pid), 15, "postfix master exit", 0.05)
            except TimeoutError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.started = False

    def cleanup(self):
        self.stop()
        if os.environ.get("SMTPGATE_KEEP_TMP"):
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inspection --------------------------------------------------------

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        """Waits until the log matches regex pattern; returns the match."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.read_log()), timeout,
                          "postfix log line /%s/" % pattern, 0.05)

    def mailbox_files(self):
        """Delivered message files (Maildir new/ and cur/), oldest first."""
        files = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir, sub)
            if os.path.isdir(d):
                files += [os.path.join(d, n) for n in os.listdir(d)]
        return sorted(files, key=lambda p: (os.path.getmtime(p), p))

    def read_mailbox(self):
        """Contents (bytes) of every delivered message, oldest first."""
        out = []
        for p in self.mailbox_files():
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def wait_for_delivery(self, count, timeout=20.0):
        """Waits until at least count messages are in the Maildir; returns
        their contents."""
        wait_until(lambda: len(self.mailbox_files()) >= count, timeout,
                   "%d message(s) in %s" % (count, self.maildir), 0.05)
        return self.read_mailbox()

    def find_delivered(self, needle, timeout=20.0):
        """Waits for a delivered message containing needle (bytes)."""
        def look():
            for m in self.read_mailbox():
                if needle in m:
                    return m
            return None
        return wait_until(look, timeout, "delivery of a message with %r" % needle, 0.05)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours would still answer; master is not our child.
    return True


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisError(Exception):
    """An error reply ("-ERR ...") from Redis."""


def _resp_read(f):
    """Reads one RESP reply from the file f: str for simple strings, int,
    bytes or None for bulk strings, a list for arrays.  Raises RedisError
    for an error reply and ConnectionClosed on EOF."""
    line = f.readline()
    if not line.endswith(CRLF):
        raise ConnectionClosed("redis closed the connection (%r)" % line)
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionClosed("redis closed the connection in a bulk string")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise AssertionError("malformed RESP reply %r" % line)


def redis_command(port, *args, timeout=2.0, host="127.0.0.1", password=None, db=None):
    """Sends one command to the Redis server at host:port on a new
    connection (after AUTH password and SELECT db when given) and returns
    its reply (see _resp_read).  Socket errors and timeouts propagate."""
    def enc(*a):
        out = [b"*%d\r\n" % len(a)]
        for x in a:
            x = x if isinstance(x, bytes) else str(x).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(x), x))
        return b"".join(out)

    with socket.create_connection((host, port), timeout) as s:
        s.settimeout(timeout)
        f = s.makefile("rb")
        try:
            if password is not None:
                s.sendall(enc("AUTH", password))
                _resp_read(f)
            if db is not None:
                s.sendall(enc("SELECT", db))
                _resp_read(f)
            s.sendall(enc(*args))
            return _resp_read(f)
        finally:
            f.close()


class RedisServer:
    """A private redis-server on 127.0.0.1:<free port>: no persistence, its
    own temp dir (working dir and log).  start() waits until it answers
    PING; stop() ends it (SIGTERM, then SIGKILL), kill() SIGKILLs it,
    pause()/resume() send SIGSTOP/SIGCONT, restart() starts it again on the
    same port (empty: nothing is saved)."""

    def __init__(self, password=None):
        self.dir = tempfile.mkdtemp(prefix="smtpgate-redis-")
        _own(self)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.password = password
        self.proc = None
        self.port = None
        self.paused = False
        self.out = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __str__(self):
        return self.addr

    def start(self, timeout=10.0, port=None):
        """Starts redis-server (on port, else a free one) and returns once it
        answers PING.  With a free port, retries with another one when the
        port was taken meanwhile.  Returns self."""
        last = None
        for attempt in range(3 if port is None else 1):
            self.port = port if port is not None else free_port()
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.dir,
                    "--daemonize", "no", "--loglevel", "notice"]
            if self.password is not None:
                args += ["--requirepass", self.password]
            self.out = open(self.log_path, "ab")
            self.proc = subprocess.Popen(die_with_us(args), stdin=subprocess.DEVNULL,
                                         stdout=self.out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.dir)
            _register(self.proc)
            self.paused = False
            try:
                self._wait_ping(timeout)
                return self
            except RuntimeError as e:
                last = e
                self.kill()
                if "in use" not in self.output().lower():
                    raise
        raise last

    def _wait_ping(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited (%s) before answering PING:\n%s"
                                   % (self.proc.returncode, self.output()[-2000:]))
            try:
                if self.command("PING", timeout=1.0) == "PONG":
                    return
            except (OSError, ConnectionClosed, RedisError):
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError("redis-server did not answer PING within %.0fs:\n%s"
                                   % (timeout, self.output()[-2000:]))
            time.sleep(0.02)  # not listening yet: nothing to await

    def command(self, *args, timeout=2.0, db=None):
        """One command on a new connection (to database db when given);
        returns the reply."""
        return redis_command(self.port, *args, timeout=timeout, password=self.password, db=db)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _signal(self, sig):
        if self.running():
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass

    def pause(self):
        """SIGSTOP: the server keeps its connections but answers nothing."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill(self):
        """SIGKILL, then reap."""
        if self.running():
            self._signal(signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False
        self._close_out()

    def stop(self, timeout=10.0):
        """SIGTERM (after SIGCONT when paused), SIGKILL after the deadline."""
        if self.running():
            if self.paused:
                self.resume()
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_out()

    def restart(self, timeout=10.0):
        """Starts the server again on the same port (it must be down)."""
        assert not self.running(), "restart() of a running redis-server"
        return self.start(timeout, port=self.port)

    def _close_out(self):
        if self.out is not None:
            self.out.close()
            self.out = None

    def cleanup(self):
        self.stop()
        if os.environ.get("SMTPGATE_KEEP_TMP"):
            return
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Test case base
# ---------------------------------------------------------------------------


class GatewayTestCase(unittest.TestCase):
    """One gateway (config OVERRIDES, policy file POLICY) in front of one
    RecordingBackend for the whole class.  setUp resets the backend's
    replies to the class defaults (RCPT_REPLIES, MAIL_REPLIES) and checks
    the gateway is alive; tearDown checks it is still alive and prints the
    log tail when the test failed."""

    OVERRIDES = {}
    POLICY = None  # policy file text (Gateway policy=), or None for none
    RCPT_REPLIES = {
        "bad@example.test": "550 5.1.1 <bad@example.test>: Recipient address rejected",
    }
    MAIL_REPLIES = {}

    @classmethod
    def backends(cls):
        """The backend server list; override for failover layouts."""
        return [cls.backend.addr]

    @classmethod
    def setUpClass(cls):
        cls.backend = RecordingBackend()
        cls.addClassCleanup(cls.backend.stop)
        cls.gw = Gateway(cls.backends(), cls.OVERRIDES, name=cls.__name__,
                         policy=cls.POLICY)
        cls.addClassCleanup(cls.gw.stop_and_check)
        cls.gw.start()

    def setUp(self):
        b = self.backend
        b.rcpt_replies = dict(self.RCPT_REPLIES)
        b.mail_replies = dict(self.MAIL_REPLIES)
        b.data_reply = None
        b.fault = None
        self._nfail = _failure_count(self)
        self.assertTrue(self.gw.running(), "gateway is not running; log:\n" + self.gw.log[-3000:])

    def tearDown(self):
        alive = self.gw.running()
        report = self.gw.sanitizer_report()
        if not alive or _failure_count(self) != self._nfail:
            show_log_tail(self.gw, self.id())
        self.assertIsNone(report, "sanitizer report in the gateway log")
        self.assertTrue(alive, "gateway died during the test (status %s)"
                        % (self.gw.proc.returncode if self.gw.proc else None))

    # -- helpers -----------------------------------------------------------

    def client(self, source_addr=None, greet=True, ehlo=False, timeout=10.0, listener=0):
        """A client connected to the class gateway, closed at cleanup."""
        c = self.gw.client(source_addr=source_addr, greet=greet, timeout=timeout,
                           listener=listener)
        self.addCleanup(c.close)
        if ehlo:
            c.ehlo()
        return c


def _failure_count(tc):
    res = getattr(getattr(tc, "_outcome", None), "result", None)
    if res is None:
        return 0
    return len(getattr(res, "failures", [])) + len(getattr(res, "errors", []))


def show_log_tail(gw, what, n=4000):
    import sys
    sys.stderr.write("\n----- gateway log tail (%s) -----\n%s\n----- end -----\n"
                     % (what, gw.log[-n:]))


# ---------------------------------------------------------------------------
# deploy/ scripts serving until SIGTERM
# ---------------------------------------------------------------------------


def script_argv(script, args=()):
    """bash script args, SIGTERMed (not SIGKILLed) when this test process
    dies, so that the script's trap stops what it started."""
    argv = ["bash", script] + list(args)
    if SETPRIV:
        argv = [SETPRIV, "--pdeathsig", "TERM", "--"] + argv
    return argv


def kill_pids(pids):
    """Safety net: SIGKILLs what a script should have stopped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class DeployScript:
    """A deploy/ script that starts its processes, prints a line starting
    with "ready" and serves until SIGTERM, which must stop all it started,
    remove its work directory and exit 0.

    start() waits for "ready" and parses the pids line (pids_rx, one group
    per pid); the test sets .work to the directory the script must remove.
    stop() raises AssertionError when the script ignores SIGTERM, exits
    non-zero, leaves a process running or leaves .work behind; whatever
    happens, it SIGKILLs the pids and closes the pipe."""

    def __init__(self, script, args=(), env=None, pids_rx=None):
        self.name = os.path.basename(script)
        self.argv = script_argv(script, args)
        self.env = env
        self.pids_rx = pids_rx
        self.out = []
        self.proc = None
        self.reader = None
        self.pids = []
        self.work = None

    def text(self):
        """All the script printed so far."""
        return "".join(self.out)

    def start(self, timeout):
        """Starts the script and waits up to timeout seconds for its ready
        line; raises RuntimeError when it does not come.  Returns the
        output so far.  Call stop() (addClassCleanup) even when this raises."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.out.append(line.decode("utf-8", "replace"))
                if line.startswith(b"ready"):
                    ready.set()
            ready.set()  # EOF: the script ended

        self.reader = threading.Thread(target=reader, daemon=True)
        self.reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("%s did not get ready:\n%s" % (self.name, self.text()))
        text = self.text()
        self.pids = [int(x) for x in self.pids_rx.search(text).groups()]
        return text

    def port(self, name):
        """The port of the output line "name 127.0.0.1:port"."""
        return int(re.search(r"^%s\s+127\.0\.0\.1:(\d+)" % name, self.text(),
                             re.M).group(1))

    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout):
        """SIGTERM to the script; it must stop everything and exit 0 within
        timeout seconds."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError("%s ignored SIGTERM:\n%s" % (self.name, self.text()))
            self.reader.join(10)
            if rc != 0:
                raise AssertionError("%s exited %s:\n%s" % (self.name, rc, self.text()))
            left = [p for p in self.pids if _pid_alive(p)]
            if left:
                raise AssertionError("still running after %s: %s" % (self.name, left))
            if self.work and os.path.exists(self.work):
                raise AssertionError("%s left behind" % self.work)
        finally:
            kill_pids(self.pids)
            self.proc.stdout.close()
