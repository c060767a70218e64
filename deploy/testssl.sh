#!/usr/bin/env bash
# deploy/testssl.sh: testssl.sh against smtpgate's STARTTLS listener, with
# the default TLS settings (proxy/tlsio.c: TLS 1.2 and up, the default
# TLS 1.2 cipher list, OpenSSL's TLS 1.3 suites).
#
# Runs on 127.0.0.1 with ports picked free at run time: smtp-sink as the
# backend, one smtpgate (a copy of build/smtpgate) with a STARTTLS listener
# per certificate type (RSA-2048, the usual operator case, and ECDSA
# P-256), each certificate signed by a test CA made here with openssl.
# testssl.sh's default run (protocols, cipher categories, forward secrecy,
# server preference, server defaults and certificate, vulnerabilities,
# client simulation) goes over each listener with --starttls smtp; its
# flat JSON findings are then sorted out:
#   expected   findings about the test certificate, not about smtpgate:
#              its CA publishes no CRL and no OCSP responder (testssl.sh
#              rates that HIGH), and it is in no public trust store (it is
#              passed with --add-ca, so the chain of trust should be "Ok";
#              should a testssl.sh version ignore that, chain of trust and
#              trust findings land here as well).  A real deployment uses
#              a certificate from a real CA.  Listed, not counted.
#   failures   every other finding of severity HIGH or CRITICAL, and scan
#              problems (FATAL, or a testssl.sh exit on error): what
#              smtpgate's TLS settings would be blamed for.
# MEDIUM findings are listed too, for information.
#
# Exit status: 0 when there is no failure, 1 when there is any, 2 when the
# setup fails.  Takes a few minutes per certificate type.
#
# Usage: deploy/testssl.sh        (from anywhere; run as root or not)
# Environment (defaults in brackets):
#   TESTSSL_CERTS   certificate types to test, of rsa and ecdsa [rsa ecdsa]
#   TESTSSL         the testssl.sh command [testssl, else testssl.sh]
#   TESTSSL_ARGS    more testssl.sh options, e.g. --fast []
#   SMTPGATE        binary to test [<repo>/build/smtpgate]
#   TESTSSL_KEEP    1: keep the work directory (logs, JSON, configs) [0]

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
deploy=$here
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"

CERTS=${TESTSSL_CERTS:-rsa ecdsa}
SMTPGATE_BIN=${SMTPGATE:-$top/build/smtpgate}
KEEP=${TESTSSL_KEEP:-0}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
OPENSSL=$(command -v openssl)

die() { echo "testssl: $*" >&2; exit 2; }
note() { echo "testssl: $*" >&2; }

# testssl.sh: Debian's package calls it testssl.  It is not needed by the
# test suite, so deploy/install-deps.sh does not install it: we do, when
# run as root, or say how.
TESTSSL_CMD=${TESTSSL:-}
if [ -z "$TESTSSL_CMD" ]; then
	for c in testssl testssl.sh; do
		command -v "$c" >/dev/null 2>&1 && { TESTSSL_CMD=$c; break; }
	done
fi
if [ -z "$TESTSSL_CMD" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		note "installing testssl.sh (Debian package)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq testssl.sh \
		    >/dev/null || die "apt-get install testssl.sh failed"
		TESTSSL_CMD=testssl
	else
		die "testssl.sh is missing: apt-get install testssl.sh (as root), or set TESTSSL"
	fi
fi
for x in "$TESTSSL_CMD" "$SMTP_SINK" "$SMTPGATE_BIN" "$OPENSSL" python3; do
	command -v "$x" >/dev/null 2>&1 || die "missing: $x"
done
for t in $CERTS; do
	case $t in rsa|ecdsa) ;; *) die "TESTSSL_CERTS: unknown type $t" ;; esac
done

work=$(mktemp -d /tmp/smtpgate-testssl.XXXXXX) || die "mktemp failed"
cp "$SMTPGATE_BIN" "$work/smtpgate" || die "cannot copy $SMTPGATE_BIN"

# ---- process bookkeeping (deploy/lib.sh) -------------------------------------

pids=()                 # every background process we started
failures=0              # HIGH/CRITICAL findings and scan problems

trap 'cleanup_pids "logs, JSON and configs"' EXIT
trap 'exit 130' INT TERM

# ---- the certificates -------------------------------------------------------------

ossl() {                # ossl LOGNAME ARGS...: openssl, or die with its output
	local log=$work/openssl-$1.log
	shift
	"$OPENSSL" "$@" >"$log" 2>&1 || die "openssl $1 failed: $(cat "$log")"
}
# A test CA, and per type a server certificate it signed, for the name
# and the address testssl.sh connects to.  A year's validity: testssl.sh
# rates a certificate that expires within 60 days MEDIUM or HIGH.
ossl ca req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=smtpgate testssl CA" -days 400 -keyout "$work/ca.key" \
    -out "$work/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
printf '%s\n' "subjectAltName=DNS:gate.example.test,DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature,keyEncipherment" \
    >"$work/ext.cnf"
for t in $CERTS; do
	case $t in
	rsa) newkey=(-newkey rsa:2048) ;;
	ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
	esac
	ossl "$t-req" req -new "${newkey[@]}" -nodes -subj "/CN=gate.example.test" \
	    -keyout "$work/$t.key" -out "$work/$t.csr"
	ossl "$t-sign" x509 -req -in "$work/$t.csr" -CA "$work/ca.pem" \
	    -CAkey "$work/ca.key" -CAcreateserial -days 365 -sha256 \
	    -extfile "$work/ext.cnf" -out "$work/$t.pem"
	cat "$work/$t.pem" "$work/ca.pem" >"$work/$t-chain.pem"
done

# ---- the processes ------------------------------------------------------------

read -r SINK_PORT RSA_PORT ECDSA_PORT <<<"$(free_ports 3)"
[ -n "$ECDSA_PORT" ] || die "cannot pick free ports"
declare -A port=([rsa]=$RSA_PORT [ecdsa]=$ECDSA_PORT)

sink_start "$SINK_PORT" 128 -c || die "smtp-sink did not start: $(cat "$work/sink.err")"

{
	cat <<EOF
hostname: gate.example.test
workers: 2
log_level: warning
listen:
EOF
	for t in $CERTS; do
		cat <<EOF
  - address: 127.0.0.1:${port[$t]}
    tls: starttls
    cert_file: $work/$t-chain.pem
    key_file: $work/$t.key
EOF
	done
	cat <<EOF
backend:
  servers: [127.0.0.1:$SINK_PORT]
smtp:
  reverse_dns: false
EOF
} >"$work/smtpgate.yaml"
"$work/smtpgate" -t -c "$work/smtpgate.yaml" >"$work/smtpgate-check.log" 2>&1 ||
	die "smtpgate rejects its config: $(cat "$work/smtpgate-check.log")"
GATE_LOG=$work/smtpgate.log
"$work/smtpgate" -c "$work/smtpgate.yaml" 2>"$GATE_LOG" &
GATE_PID=$!
pids+=("$GATE_PID")
for t in $CERTS; do
	wait_port "${port[$t]}" "$GATE_PID" || die "smtpgate did not start: $(cat "$GATE_LOG")"
done

# ---- the scans ---------------------------------------------------------------------

# report JSON: prints the findings of testssl.sh's flat JSON as "SEVERITY
# ID: FINDING" lines in three groups, and returns the number of failures.
# Findings about the test certificate are expected (see above), whatever
# their severity: cert_revocation (no CRL, no OCSP URI), and trust:
# cert_chain_of_trust, cert_trust and the intermediate's counterpart.
report() {
	python3 - "$1" <<'EOF'
import json, re, sys

EXPECTED = re.compile(r"^(cert_revocation|cert_chain_of_trust|cert_trust|"
                      r"intermediate_cert_chain_of_trust)"
                      r"(\s*<cert#\d+>)?$")
with open(sys.argv[1]) as f:
    findings = json.load(f)
groups = {"expected": [], "failures": [], "medium": []}
for x in findings:
    sev = x.get("severity", "")
    line = "%-8s %s: %s" % (sev, x.get("id", "?"), x.get("finding", ""))
    if EXPECTED.match(x.get("id", "")) and sev not in ("OK", "INFO", "DEBUG"):
        groups["expected"].append(line)
    elif sev in ("HIGH", "CRITICAL", "FATAL"):
        groups["failures"].append(line)
    elif sev in ("MEDIUM", "WARN"):
        groups["medium"].append(line)
names = {"failures": "HIGH/CRITICAL findings and scan problems",
         "expected": "expected for the test certificate (not counted)",
         "medium": "MEDIUM findings and scan warnings (for information)"}
for g in ("failures", "expected", "medium"):
    print("  %s: %d" % (names[g], len(groups[g])))
    for line in groups[g]:
        print("    " + line)
sys.exit(min(len(groups["failures"]), 100))
EOF
}

for t in $CERTS; do
	json=$work/testssl-$t.json
	echo "testssl.sh --starttls smtp, $t certificate, 127.0.0.1:${port[$t]}:"
	start=$(date +%s)
	# --nodns none: no DNS at all (the target is an address, the machine
	# may be offline); --add-ca: the chain of trust against the test CA;
	# --warnings off: no questions.  The exit status of testssl.sh 3.0 is
	# the count of some findings, not an error indication: only 2xx-style
	# errors (> 200) are treated as scan failures, the findings themselves
	# are judged from the JSON.
	# shellcheck disable=SC2086  # TESTSSL_ARGS: several options
	"$TESTSSL_CMD" --starttls smtp --quiet --color 0 --warnings off \
	    --openssl "$OPENSSL" --nodns none --add-ca "$work/ca.pem" \
	    --jsonfile "$json" ${TESTSSL_ARGS:-} "127.0.0.1:${port[$t]}" \
	    >"$work/testssl-$t.log" 2>&1
	rc=$?
	echo "  exit status $rc after $(( $(date +%s) - start ))s; full output: $work/testssl-$t.log"
	if [ ! -s "$json" ] || [ "$rc" -gt 200 ]; then
		note "ERROR: testssl.sh failed on the $t listener: $(tail -5 "$work/testssl-$t.log")"
		failures=$((failures + 1))
		continue
	fi
	report "$json"
	n=$?
	failures=$((failures + n))
	kill -0 "$GATE_PID" 2>/dev/null || die "smtpgate died during the $t scan (log: $GATE_LOG)"
done

if [ -s "$GATE_LOG" ]; then
	echo "smtpgate logged $(wc -l <"$GATE_LOG") line(s) at warning or above (first 5):"
	head -5 "$GATE_LOG" | sed 's/^/  /'
fi
if [ "$failures" -gt 0 ]; then
	echo "FAIL: $failures HIGH/CRITICAL finding(s) or scan problem(s)"
	exit 1
fi
echo "OK: no HIGH or CRITICAL finding"
exit 0
