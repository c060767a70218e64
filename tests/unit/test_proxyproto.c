/*
 * test_proxyproto.c: unit tests for proxy/proxy_proto.c.
 *
 * Table driven, as test_parse.c is.  Every input is copied so that it ends
 * right before a PROT_NONE page, so a parser that reads one octet too far
 * faults.  Each input is also parsed in every truncated prefix: a prefix
 * of a good header must need more, and a bad header must need more up to
 * the octet that makes it bad and be bad from there on.  A good header is
 * parsed again with the client's first octets after it, which must not be
 * counted in the header.
 */
#include <sys/mman.h>

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "proxy_proto.h"
#include "test.h"

#define S(s)		s, sizeof(s) - 1	/* literal, length */
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* Ten octets, to build inputs of a given length. */
#define X10		"xxxxxxxxxx"

/* A full-length IPv6 address, 39 characters. */
#define FFFF6		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

/* Version 2 building blocks: signature, address blocks, TLVs. */
#define SIG		"\r\n\r\n\0\r\nQUIT\n"
/* 192.0.2.1:54321 -> 198.51.100.2:25 */
#define A4		"\xc0\x00\x02\x01" "\xc6\x33\x64\x02" \
			"\xd4\x31" "\x00\x19"
/* [2001:db8::1]:54321 -> [2001:db8::25]:25 */
#define A6		"\x20\x01\x0d\xb8" "\x00\x00\x00\x00" \
			"\x00\x00\x00\x00" "\x00\x00\x00\x01" \
			"\x20\x01\x0d\xb8" "\x00\x00\x00\x00" \
			"\x00\x00\x00\x00" "\x00\x00\x00\x25" \
			"\xd4\x31" "\x00\x19"
/* NOOP "ab", then ALPN "smtp": 12 octets. */
#define TLVS		"\x04\x00\x02" "ab" "\x01\x00\x04" "smtp"

/* What the client sends after the header, longer than any header. */
#define TRAILER_LEN	600

/* Readable pages followed by a PROT_NONE page. */
struct guard {
	char	*end;		/* first octet of the PROT_NONE page */
	size_t	 size;		/* readable octets before it */
};

static struct guard guard;

/* Maps two readable pages and a PROT_NONE one after them; exits on error. */
static void
guard_init(void)
{
	size_t	 pg = (size_t)sysconf(_SC_PAGESIZE);
	char	*m;

	guard.size = 2 * pg;
	m = mmap(NULL, guard.size + pg, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m + guard.size, pg, PROT_NONE) == -1) {
		perror("guard page");
		exit(2);
	}
	guard.end = m + guard.size;
}

/*
 * Copies s[0..len) to end right before the guard page and returns the
 * copy, which the next call overwrites.
 */
static const char *
at_guard(const char *s, size_t len)
{
	char	*p;

	if (len > guard.size) {
		fprintf(stderr, "test input of %zu octets too long\n", len);
		exit(2);
	}
	p = guard.end - len;
	if (len > 0)
		memmove(p, s, len);
	return p;
}

/* The rest of a row, after the input, by outcome. */
#define PROXIED(v, src, sport, dst, dport, tlvlen) \
	PP_OK, 0, v, 0, src, sport, dst, dport, tlvlen
#define LOCAL(v, tlvlen) \
	PP_OK, 0, v, 1, NULL, 0, NULL, 0, tlvlen
/* Bad from the prefix given on; BAD_END: only the whole input is. */
#define BAD(prefix)	PP_BAD, sizeof(prefix) - 1, 0, 0, NULL, 0, NULL, 0, 0
#define BAD_AT(n)	PP_BAD, n, 0, 0, NULL, 0, NULL, 0, 0
#define BAD_END		BAD_AT(0)

struct pp_test {
	const char	*in;		/* a header alone, or a bad input */
	size_t		 len;
	enum pp_status	 st;		/* expected: PP_OK or PP_BAD */
	size_t		 bad_at;	/* PP_BAD: shortest bad prefix, 0 for
					 * the whole input */
	int		 version;	/* the rest: expected on PP_OK */
	int		 local;
	const char	*src;		/* when !local */
	unsigned	 sport;
	const char	*dst;
	unsigned	 dport;
	size_t		 tlvlen;	/* octets of TLVs, at the end */
};

static const struct pp_test v1_tests[] = {
	/* Good lines. */
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25\r\n"),
	    PROXIED(1, "192.0.2.1", 54321, "198.51.100.2", 25, 0) },
	{ S("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
	    PROXIED(1, "255.255.255.255", 65535, "255.255.255.255", 65535,
	    0) },
	{ S("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n"),
	    PROXIED(1, "0.0.0.0", 0, "10.0.0.1", 0, 0) },
	{ S("PROXY TCP6 2001:db8::1 2001:db8::25 54321 25\r\n"),
	    PROXIED(1, "2001:db8::1", 54321, "2001:db8::25", 25, 0) },
	{ S("PROXY TCP6 " FFFF6 " " FFFF6 " 65535 65535\r\n"),
	    PROXIED(1, FFFF6, 65535, FFFF6, 65535, 0) },
	{ S("PROXY TCP6 ::ffff:192.0.2.1 :: 1 10\r\n"),
	    PROXIED(1, "::ffff:192.0.2.1", 1, "::", 10, 0) },
	{ S("PROXY TCP6 1:2:3:4:5:6:7:: 1:2:3:4:5:6:1.2.3.4 100 1000\r\n"),
	    PROXIED(1, "1:2:3:4:5:6:7::", 100, "1:2:3:4:5:6:1.2.3.4", 1000,
	    0) },
	{ S("PROXY TCP6 FE80::A:B:c:d ::1 9 99\r\n"),
	    PROXIED(1, "fe80::a:b:c:d", 9, "::1", 99, 0) },
	{ S("PROXY UNKNOWN\r\n"), LOCAL(1, 0) },
	{ S("PROXY UNKNOWN " FFFF6 " " FFFF6 " 65535 65535\r\n"),
	    LOCAL(1, 0) },
	{ S("PROXY UNKNOWN anything\tat all \x01\xff\r\n"), LOCAL(1, 0) },
	{ S("PROXY UNKNOWN \r\n"), LOCAL(1, 0) },
	/* 107 octets, the longest line. */
	{ S("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 "x\r\n"),
	    LOCAL(1, 0) },

	/* Not PROXY at all. */
	{ S("EHLO foo\r\n"), BAD("E") },
	{ S("GET / HTTP/1.0\r\n\r\n"), BAD("G") },
	{ S("proxy TCP4 192.0.2.1 198.51.100.2 54321 25\r\n"), BAD("p") },
	{ S("\0PROXY"), BAD("\0") },
	{ S("PROXI TCP4"), BAD("PROXI") },
	{ S("PROXY\r\n"), BAD("PROXY\r") },
	/* Protocol word. */
	{ S("PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), BAD("PROXY  ") },
	{ S("PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n"), BAD("PROXY t") },
	{ S("PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n"), BAD("PROXY TCP5") },
	{ S("PROXY TCP4\r\n"), BAD("PROXY TCP4\r") },
	{ S("PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n"), BAD("PROXY UD") },
	{ S("PROXY UNKNOWNX\r\n"), BAD("PROXY UNKNOWNX") },
	{ S("PROXY UNKNOWN\n"), BAD("PROXY UNKNOWN\n") },
	{ S("PROXY UNKNOWN\rx"), BAD("PROXY UNKNOWN\rx") },
	{ S("PROXY UNKNOWN a\nb\r\n"), BAD("PROXY UNKNOWN a\n") },
	{ S("PROXY UNKNOWN a\rb\r\n"), BAD("PROXY UNKNOWN a\rb") },
	/* 108 octets: no CRLF within the first 107. */
	{ S("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 "xx\r\n"),
	    BAD_AT(107) },
	{ S("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10),
	    BAD_AT(107) },
	/* Addresses. */
	{ S("PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2.256") },
	{ S("PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2.01") },
	{ S("PROXY TCP4 192.0.2 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2 ") },
	{ S("PROXY TCP4 192.0.2.1.5 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2.1.") },
	{ S("PROXY TCP4 192..0.2 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192..") },
	{ S("PROXY TCP4 2001:db8::1 2001:db8::25 1 2\r\n"),
	    BAD("PROXY TCP4 2001") },
	{ S("PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP6 192.") },
	{ S("PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n"),
	    BAD("PROXY TCP6 2001:db8::1 192.") },
	{ S("PROXY TCP6 2001:db8::1::2 ::1 1 2\r\n"),
	    BAD("PROXY TCP6 2001:db8::1::") },
	{ S("PROXY TCP6 12345:: ::1 1 2\r\n"), BAD("PROXY TCP6 12345") },
	{ S("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
	    BAD("PROXY TCP6 1:2:3:4:5:6:7:8:") },
	{ S("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
	    BAD("PROXY TCP6 fe80::1%") },
	{ S("PROXY TCP6 ::g ::1 1 2\r\n"), BAD("PROXY TCP6 ::g") },
	{ S("PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2.1\t") },
	/* Valid addresses, but a line over 107 octets (116). */
	{ S("PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 "
	    "0000:0000:0000:0000:0000:ffff:255.255.255.255 65535 65535\r\n"),
	    BAD_AT(107) },
	/* Spaces. */
	{ S("PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4 192.0.2.1  ") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 1  2\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 1  ") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 ") },
	{ S("PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n"),
	    BAD("PROXY TCP4  ") },
	/* Ports. */
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 65536") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 25 70000\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 25 70000") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 99999999999 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 99999") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 02") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 +25 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 +") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 -") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 0x19 25\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 0x") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 54321\r") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25 26\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25 ") },
	/* Line end. */
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25\n"), BAD_END },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25\rX"), BAD_END },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25\r\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25\r\r") },
	{ S("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25x\r\n"),
	    BAD("PROXY TCP4 192.0.2.1 198.51.100.2 54321 25x") },
};

static const struct pp_test v2_tests[] = {
	/* PROXY with addresses, with and without TLVs. */
	{ S(SIG "\x21\x11\x00\x0c" A4),
	    PROXIED(2, "192.0.2.1", 54321, "198.51.100.2", 25, 0) },
	{ S(SIG "\x21\x11\x00\x18" A4 TLVS),
	    PROXIED(2, "192.0.2.1", 54321, "198.51.100.2", 25, 12) },
	{ S(SIG "\x21\x11\x00\x0f" A4 "\x04\x00\x00"),
	    PROXIED(2, "192.0.2.1", 54321, "198.51.100.2", 25, 3) },
	{ S(SIG "\x21\x21\x00\x24" A6),
	    PROXIED(2, "2001:db8::1", 54321, "2001:db8::25", 25, 0) },
	{ S(SIG "\x21\x21\x00\x30" A6 TLVS),
	    PROXIED(2, "2001:db8::1", 54321, "2001:db8::25", 25, 12) },
	/* LOCAL: the family and the block are ignored. */
	{ S(SIG "\x20\x00\x00\x00"), LOCAL(2, 0) },
	{ S(SIG "\x20\x11\x00\x0c" A4), LOCAL(2, 0) },
	{ S(SIG "\x20\x00\x00\x18" A4 TLVS), LOCAL(2, 0) },
	{ S(SIG "\x20\xff\x00\x03" "abc"), LOCAL(2, 0) },
	{ S(SIG "\x20\x21\x00\x02" "\x01\x00"), LOCAL(2, 0) },
	/* PROXY with UNSPEC: local, the block is not read. */
	{ S(SIG "\x21\x00\x00\x00"), LOCAL(2, 0) },
	{ S(SIG "\x21\x00\x00\x04" "\x01\x00\xff\xff"), LOCAL(2, 0) },

	/* Signature. */
	{ S("\r\r\n"), BAD("\r\r") },
	{ S("\r\nEHLO x\r\n"), BAD("\r\nE") },
	{ S("\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c" A4),
	    BAD("\r\n\r\n\0\r\nQUIX") },
	{ S("\r\n\r\n\r\n"), BAD("\r\n\r\n\r") },
	/* Version and command. */
	{ S(SIG "\x11\x11\x00\x0c" A4), BAD(SIG "\x11") },
	{ S(SIG "\x31\x11\x00\x0c" A4), BAD(SIG "\x31") },
	{ S(SIG "\x01\x11\x00\x0c" A4), BAD(SIG "\x01") },
	{ S(SIG "\x22\x11\x00\x0c" A4), BAD(SIG "\x22") },
	{ S(SIG "\x2f\x00\x00\x00"), BAD(SIG "\x2f") },
	/* Families a PROXY command may not carry. */
	{ S(SIG "\x21\x12\x00\x0c" A4), BAD(SIG "\x21\x12") },
	{ S(SIG "\x21\x22\x00\x24" A6), BAD(SIG "\x21\x22") },
	{ S(SIG "\x21\x32\x00\x00"), BAD(SIG "\x21\x32") },
	{ S(SIG "\x21\x10\x00\x0c" A4), BAD(SIG "\x21\x10") },
	{ S(SIG "\x21\x01\x00\x00"), BAD(SIG "\x21\x01") },
	{ S(SIG "\x21\x13\x00\x0c" A4), BAD(SIG "\x21\x13") },
	{ S(SIG "\x21\x41\x00\x0c" A4), BAD(SIG "\x21\x41") },
	{ S(SIG "\x21\xff\x00\x00"), BAD(SIG "\x21\xff") },
	/* Lengths. */
	{ S(SIG "\x21\x11\x00\x0b" A4), BAD(SIG "\x21\x11\x00\x0b") },
	{ S(SIG "\x21\x11\x00\x00"), BAD(SIG "\x21\x11\x00\x00") },
	{ S(SIG "\x21\x21\x00\x23" A6), BAD(SIG "\x21\x21\x00\x23") },
	{ S(SIG "\x21\x21\x00\x0c" A4), BAD(SIG "\x21\x21\x00\x0c") },
	{ S(SIG "\x21\x31\x00\xd7"), BAD(SIG "\x21\x31\x00\xd7") },
	{ S(SIG "\x21\x11\x02\x09" A4), BAD(SIG "\x21\x11\x02\x09") },
	{ S(SIG "\x21\x11\xff\xff" A4), BAD(SIG "\x21\x11\xff\xff") },
	{ S(SIG "\x20\x00\x02\x09"), BAD(SIG "\x20\x00\x02\x09") },
	{ S(SIG "\x21\x00\x02\x09"), BAD(SIG "\x21\x00\x02\x09") },
	/* TLV framing. */
	{ S(SIG "\x21\x11\x00\x0d" A4 "\x04"), BAD_END },
	{ S(SIG "\x21\x11\x00\x0e" A4 "\x04\x00"), BAD_END },
	{ S(SIG "\x21\x11\x00\x10" A4 "\x04\x00\x02" "a"), BAD_END },
	{ S(SIG "\x21\x11\x00\x11" A4 "\x04\x00\x01" "ab"), BAD_END },
	{ S(SIG "\x21\x11\x00\x17" A4 "\x04\x00\x02" "ab" "\x01\x00\x04"
	    "smt"), BAD_END },
	{ S(SIG "\x21\x21\x00\x27" A6 "\x04\xff\xff"), BAD_END },
};

/* The client's first octets: a command, then padding. */
static char trailer[TRAILER_LEN];

/* Returns 1 when ss holds address text and port (host order). */
static int
addr_is(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
	struct sockaddr_storage	 want;
	const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
	const struct sockaddr_in *b = (const struct sockaddr_in *)&want;
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
	const struct sockaddr_in6 *b6 = (const struct sockaddr_in6 *)&want;

	test_addr(text, &want);
	if (ss->ss_family != want.ss_family)
		return 0;
	if (ss->ss_family == AF_INET)
		return a->sin_addr.s_addr == b->sin_addr.s_addr &&
		    a->sin_port == htons(port);
	return memcmp(&a6->sin6_addr, &b6->sin6_addr,
	    sizeof(b6->sin6_addr)) == 0 && a6->sin6_port == htons(port);
}

/* Returns 1 when r is all zero, as after PP_NEED_MORE and PP_BAD. */
static int
zeroed(const struct pp_result *r)
{
	static const struct pp_result	zero;

	return memcmp(r, &zero, sizeof(zero)) == 0;
}

/*
 * Returns 1 when r is what t expects of a good header at buf, whose
 * header is t->len octets long.
 */
static int
result_ok(const struct pp_test *t, const char *buf, const struct pp_result *r)
{
	if (r->version != t->version || r->local != t->local ||
	    r->len != t->len || r->tlvlen != t->tlvlen ||
	    r->tlv != (t->tlvlen ? buf + t->len - t->tlvlen : NULL))
		return 0;
	if (t->local)
		return r->src.ss_family == AF_UNSPEC &&
		    r->dst.ss_family == AF_UNSPEC;
	return addr_is(&r->src, t->src, t->sport) &&
	    addr_is(&r->dst, t->dst, t->dport);
}

/*
 * Returns the length of the first proper prefix of t's input that gets
 * the wrong status, or t->len when all are right.
 */
static size_t
first_wrong_prefix(const struct pp_test *t)
{
	struct pp_result	r;
	enum pp_status		st, want;
	size_t			k, bad_at = t->bad_at ? t->bad_at : t->len;

	for (k = 0; k < t->len; k++) {
		st = pp_parse(at_guard(t->in, k), k, &r);
		want = t->st == PP_BAD && k >= bad_at ? PP_BAD : PP_NEED_MORE;
		if (st != want || !zeroed(&r))
			return k;
	}
	return t->len;
}

/* Runs one row: the whole input, its prefixes and, if good, a trailer. */
static void
run(const char *name, size_t i, const struct pp_test *t)
{
	static char		 both[PP_MAX_HEADER + TRAILER_LEN];
	struct pp_result	 r;
	const char		*p;
	enum pp_status		 st;
	size_t			 k;

	p = at_guard(t->in, t->len);
	st = pp_parse(p, t->len, &r);
	if (t->st == PP_OK)
		CHECKF(st == PP_OK && result_ok(t, p, &r),
		    "%s %zu: status %d, version %d, local %d, len %zu, "
		    "tlvlen %zu", name, i, st, r.version, r.local, r.len,
		    r.tlvlen);
	else
		CHECKF(st == PP_BAD && zeroed(&r), "%s %zu: status %d", name,
		    i, st);
	k = first_wrong_prefix(t);
	CHECKF(k == t->len, "%s %zu: prefix of %zu octets", name, i, k);
	if (t->st != PP_OK)
		return;

	/* The client's octets after the header are not the header's. */
	if (t->len > PP_MAX_HEADER)
		abort();
	memcpy(both, t->in, t->len);
	memcpy(both + t->len, trailer, TRAILER_LEN);
	p = at_guard(both, t->len + TRAILER_LEN);
	st = pp_parse(p, t->len + TRAILER_LEN, &r);
	CHECKF(st == PP_OK && result_ok(t, p, &r),
	    "%s %zu with trailer: status %d, len %zu", name, i, st, r.len);
	for (k = 1; k < 8; k++) {
		st = pp_parse(p, t->len + k, &r);
		CHECKF(st == PP_OK && r.len == t->len,
		    "%s %zu with %zu more: status %d, len %zu", name, i, k,
		    st, r.len);
	}
}

/*
 * Version 2 headers too long to write out: the longest ones allowed, one
 * octet more, and UNIX stream addresses (two blocks of 108 octets).
 */
static void
test_v2_long(void)
{
	static char	 buf[PP_MAX_HEADER + 8];
	struct pp_test	 t;
	size_t		 n, v;

	/* IPv4 and a NOOP TLV filling the header to PP_MAX_HEADER. */
	v = PP_MAX_HEADER - 16 - 12 - 3;
	memcpy(buf, SIG "\x21\x11\x02\x08" A4 "\x04", 29);
	buf[29] = (char)(v >> 8);
	buf[30] = (char)(v & 0xff);
	memset(buf + 31, 'n', v);
	t = (struct pp_test){ buf, PP_MAX_HEADER,
	    PROXIED(2, "192.0.2.1", 54321, "198.51.100.2", 25, 3 + v) };
	run("v2 long", 0, &t);

	/* The same, one octet longer. */
	buf[15] = 0x09;
	buf[30]++;
	buf[PP_MAX_HEADER] = 'n';
	t = (struct pp_test){ buf, PP_MAX_HEADER + 1, BAD_AT(16) };
	run("v2 long", 1, &t);

	/* IPv6 and two TLVs filling the header to PP_MAX_HEADER. */
	v = PP_MAX_HEADER - 16 - 36 - 12 - 3;
	memcpy(buf, SIG "\x21\x21\x02\x08" A6 TLVS "\xe0", 65);
	buf[65] = (char)(v >> 8);
	buf[66] = (char)(v & 0xff);
	memset(buf + 67, 'c', v);
	t = (struct pp_test){ buf, PP_MAX_HEADER,
	    PROXIED(2, "2001:db8::1", 54321, "2001:db8::25", 25, 15 + v) };
	run("v2 long", 2, &t);

	/* UNIX stream: local, TLVs after the 216 octets are checked. */
	memset(buf, 0, sizeof(buf));
	memcpy(buf, SIG "\x21\x31\x00\xd8", 16);
	memcpy(buf + 16, "/run/client.sock", 16);
	memcpy(buf + 16 + 108, "/run/smtpgate.sock", 18);
	t = (struct pp_test){ buf, 16 + 216, LOCAL(2, 0) };
	run("v2 unix", 0, &t);
	buf[15] = (char)0xdb;
	memcpy(buf + 16 + 216, "\x04\x00\x00", 3);
	t = (struct pp_test){ buf, 16 + 219, LOCAL(2, 3) };
	run("v2 unix", 1, &t);
	buf[15] = (char)0xda;
	t = (struct pp_test){ buf, 16 + 218, BAD_END };
	run("v2 unix", 2, &t);
	buf[15] = (char)0xd7;
	t = (struct pp_test){ buf, 16 + 215, BAD_AT(16) };
	run("v2 unix", 3, &t);

	/* LOCAL with the longest block allowed, and one octet more. */
	n = PP_MAX_HEADER - 16;
	memset(buf, 'l', sizeof(buf));
	memcpy(buf, SIG "\x20\x00", 14);
	buf[14] = (char)(n >> 8);
	buf[15] = (char)(n & 0xff);
	t = (struct pp_test){ buf, PP_MAX_HEADER, LOCAL(2, 0) };
	run("v2 local", 0, &t);
	buf[15]++;
	t = (struct pp_test){ buf, PP_MAX_HEADER + 1, BAD_AT(16) };
	run("v2 local", 1, &t);
}

/* Things outside the tables. */
static void
test_misc(void)
{
	static const char	 two[] =
	    "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"
	    "PROXY TCP4 192.0.2.9 198.51.100.9 3 4\r\n";
	struct pp_result	 r;
	const char		*p;

	CHECK(pp_parse(at_guard("", 0), 0, &r) == PP_NEED_MORE &&
	    zeroed(&r));

	/* A second header is the client's, and is not looked at. */
	p = at_guard(two, sizeof(two) - 1);
	CHECK(pp_parse(p, sizeof(two) - 1, &r) == PP_OK && r.len == 39 &&
	    addr_is(&r.src, "192.0.2.1", 1));

	/* Stale results do not survive a call. */
	memset(&r, 0xa5, sizeof(r));
	CHECK(pp_parse(S("PROXY UNKNOWN\r\n"), &r) == PP_OK && r.local &&
	    r.src.ss_family == AF_UNSPEC && r.tlv == NULL);
	memset(&r, 0xa5, sizeof(r));
	CHECK(pp_parse(S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), &r) ==
	    PP_OK && r.tlv == NULL && r.tlvlen == 0);
}

int
main(void)
{
	size_t	i;

	guard_init();
	memset(trailer, 'x', sizeof(trailer));
	memcpy(trailer, "EHLO client.example\r\n", 21);
	for (i = 0; i < NELEM(v1_tests); i++)
		run("v1", i, &v1_tests[i]);
	for (i = 0; i < NELEM(v2_tests); i++)
		run("v2", i, &v2_tests[i]);
	test_v2_long();
	test_misc();
	TEST_DONE();
}
