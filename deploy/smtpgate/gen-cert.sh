#!/bin/sh
# gen-cert.sh DIR [HOSTNAME [UID]]: writes a self-signed certificate for
# HOSTNAME (default gate.example.test) to DIR/cert.pem and its key to
# DIR/key.pem, unless DIR/cert.pem exists already.  With UID, the key is
# given to that user (smtpgate's, 10025, in the image), mode 0600.
#
# For trying the deployment out.  In production put the certificate (then
# its chain) and the key of your MX name in DIR instead; smtpgate re-reads
# them on SIGHUP.
set -eu
dir=$1
host=${2:-gate.example.test}
owner=${3:-}
if [ -e "$dir/cert.pem" ]; then
	echo "gen-cert.sh: $dir/cert.pem exists, kept"
	exit 0
fi
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-days 825 -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
	-keyout "$dir/key.pem.tmp" -out "$dir/cert.pem.tmp" 2>/dev/null
chmod 0644 "$dir/cert.pem.tmp"
[ -n "$owner" ] && chown "$owner:$owner" "$dir/key.pem.tmp"
mv "$dir/key.pem.tmp" "$dir/key.pem"
mv "$dir/cert.pem.tmp" "$dir/cert.pem"
echo "gen-cert.sh: self-signed certificate for $host in $dir"
