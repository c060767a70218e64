/*
 * proxy_proto.c: PROXY protocol header parser (see proxy_proto.h for the
 * contract and the choices made).
 *
 * Every helper is given the number of octets it may look at and compares
 * each position with it before reading.  A helper returns PP_NEED_MORE
 * only when the octets it saw are the start of something valid, so that a
 * header goes bad at the first octet that cannot belong to one.
 */
#include <sys/types.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "proxy_proto.h"

/* The version 2 header: signature, ver_cmd, fam, 16-bit length. */
#define V2_SIG		"\r\n\r\n\0\r\nQUIT\n"
#define V2_SIGLEN	12
#define V2_HDRLEN	16

/* ver_cmd: version 2 in the high nibble, the command in the low one. */
#define V2_VERSION	0x20
#define V2_CMD_LOCAL	0x0
#define V2_CMD_PROXY	0x1

/* Longest address text inet_pton() is given, without NUL. */
#define ADDR4_MAX	15	/* "255.255.255.255" */
#define ADDR6_MAX	45	/* "ffff:...:ffff:255.255.255.255" */

/* What a version 2 PROXY command says with one family octet. */
struct v2_fam {
	unsigned char	 fam;		/* the 14th octet of the header */
	int		 af;		/* AF_INET or AF_INET6: the addresses
					 * are used; AF_UNSPEC: local */
	size_t		 addrlen;	/* octets of the address block; TLVs
					 * follow it */
	int		 read;		/* 0: the block is skipped unread */
};

/*
 * The families a PROXY command may carry; any other family octet is
 * refused (see proxy_proto.h for why the datagram ones are).  UNSPEC
 * comes with no defined address block, so it is not read.
 */
static const struct v2_fam v2_fams[] = {
	{ 0x00, AF_UNSPEC, 0, 0 },	/* UNSPEC */
	{ 0x11, AF_INET, 12, 1 },	/* TCP over IPv4 */
	{ 0x21, AF_INET6, 36, 1 },	/* TCP over IPv6 */
	{ 0x31, AF_UNSPEC, 216, 1 },	/* UNIX stream, two sun_path[108] */
};

/*
 * Short tails that make a valid start of an address complete.  Together
 * they cover every way an address can go on from any of its prefixes: a
 * partial group stands as it is, a separator is followed by a group,
 * missing IPv4 numbers are ".0", missing IPv6 groups "::" (or ":" after a
 * lone colon).
 */
static const char *const addr4_tails[] = {
	"", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0", "0.0.0.0",
};
static const char *const addr6_tails[] = {
	"", "0", ":", "::", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0",
};

static int
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* The octets of an address in a version 1 line: hex digits, ':' and '.'. */
static int
is_addr(int c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

/*
 * Matches the literal lit at buf[*pos..n).  Returns PP_OK and moves *pos
 * past it; PP_NEED_MORE when the octets there are a proper prefix of lit;
 * PP_BAD when they differ from it.
 */
static enum pp_status
match(const char *buf, size_t n, size_t *pos, const char *lit)
{
	size_t	litlen = strlen(lit), avail = n - *pos;

	if (memcmp(buf + *pos, lit, avail < litlen ? avail : litlen) != 0)
		return PP_BAD;
	if (avail < litlen)
		return PP_NEED_MORE;
	*pos += litlen;
	return PP_OK;
}

/*
 * Returns 1 when text[0..len), which holds address octets only, is the
 * start of an address of family af: when one of the tails completes it.
 */
static int
addr_start(int af, const char *text, size_t len)
{
	const char *const	*tails;
	size_t			 ntails, i, tlen, max;
	char			 try[ADDR6_MAX + 1];
	unsigned char		 addr[sizeof(struct in6_addr)];

	if (af == AF_INET) {
		tails = addr4_tails;
		ntails = sizeof(addr4_tails) / sizeof(addr4_tails[0]);
		max = ADDR4_MAX;
	} else {
		tails = addr6_tails;
		ntails = sizeof(addr6_tails) / sizeof(addr6_tails[0]);
		max = ADDR6_MAX;
	}
	for (i = 0; i < ntails; i++) {
		tlen = strlen(tails[i]);
		if (len + tlen > max)
			continue;
		memcpy(try, text, len);
		memcpy(try + len, tails[i], tlen + 1);
		if (inet_pton(af, try, addr) == 1)
			return 1;
	}
	return 0;
}

/*
 * Reads an address of family af at buf[*pos..n), followed by SP.  Returns
 * PP_OK, stores it in addr (a struct in_addr or in6_addr) and moves *pos
 * past the SP; PP_NEED_MORE when it runs to buf[n - 1] and can still
 * become valid; PP_BAD otherwise.
 */
static enum pp_status
v1_addr(const char *buf, size_t n, size_t *pos, int af, void *addr)
{
	size_t	start = *pos, i = *pos, len;
	char	text[ADDR6_MAX + 1];

	while (i < n && is_addr((unsigned char)buf[i]))
		i++;
	len = i - start;
	if (len > (af == AF_INET ? ADDR4_MAX : ADDR6_MAX))
		return PP_BAD;
	memcpy(text, buf + start, len);
	text[len] = '\0';
	if (i == n)
		return addr_start(af, text, len) ? PP_NEED_MORE : PP_BAD;
	if (buf[i] != ' ' || inet_pton(af, text, addr) != 1)
		return PP_BAD;
	*pos = i + 1;
	return PP_OK;
}

/*
 * Reads a port, 0-65535 in decimal without heading zero, at
 * buf[*pos..n), followed by the octet delim.  Returns PP_OK, stores it in
 * network byte order in *port and moves *pos past delim; PP_NEED_MORE
 * when the digits run to buf[n - 1]; PP_BAD otherwise.  Every start of a
 * valid port is itself one, so no look-ahead is needed.
 */
static enum pp_status
v1_port(const char *buf, size_t n, size_t *pos, char delim, in_port_t *port)
{
	size_t		start = *pos, i = *pos;
	unsigned	v = 0;

	for (; i < n && is_digit(buf[i]); i++) {
		if (i > start && buf[start] == '0')
			return PP_BAD;
		v = v * 10 + (buf[i] - '0');
		/* Checked at each digit, so v cannot overflow. */
		if (v > 65535)
			return PP_BAD;
	}
	if (i == n)
		return PP_NEED_MORE;
	if (i == start || buf[i] != delim)
		return PP_BAD;
	*port = htons((uint16_t)v);
	*pos = i + 1;
	return PP_OK;
}

/*
 * Reads the rest of a "PROXY UNKNOWN" line from buf[pos], right after
 * "UNKNOWN": CRLF, or SP and octets other than CR and LF up to CRLF (the
 * spec has the receiver ignore them).  Returns PP_OK with r->len set,
 * PP_NEED_MORE or PP_BAD.
 */
static enum pp_status
v1_unknown(const char *buf, size_t n, size_t pos, struct pp_result *r)
{
	enum pp_status	st;

	if (pos < n && buf[pos] == ' ')
		while (++pos < n && buf[pos] != '\r' && buf[pos] != '\n')
			;
	if ((st = match(buf, n, &pos, "\r\n")) != PP_OK)
		return st;
	r->local = 1;
	r->len = pos;
	return PP_OK;
}

/*
 * Parses a version 1 line in buf[0..n), n at most PP_V1_MAX.  Returns
 * PP_OK with *r filled, PP_NEED_MORE or PP_BAD.
 */
static enum pp_status
v1_parse(const char *buf, size_t n, struct pp_result *r)
{
	struct sockaddr_in	*s4 = (struct sockaddr_in *)&r->src;
	struct sockaddr_in	*d4 = (struct sockaddr_in *)&r->dst;
	struct sockaddr_in6	*s6 = (struct sockaddr_in6 *)&r->src;
	struct sockaddr_in6	*d6 = (struct sockaddr_in6 *)&r->dst;
	enum pp_status		 st;
	in_port_t		 sport, dport;
	size_t			 pos = 0;
	int			 af;
	void			*sa, *da;

	r->version = 1;
	if ((st = match(buf, n, &pos, "PROXY ")) != PP_OK)
		return st;
	/* No word is a prefix of another: the first not PP_BAD decides. */
	if ((st = match(buf, n, &pos, "UNKNOWN")) != PP_BAD)
		return st == PP_OK ? v1_unknown(buf, n, pos, r) : st;
	if ((st = match(buf, n, &pos, "TCP4 ")) == PP_OK)
		af = AF_INET;
	else if (st == PP_BAD &&
	    (st = match(buf, n, &pos, "TCP6 ")) == PP_OK)
		af = AF_INET6;
	else
		return st;

	sa = af == AF_INET ? (void *)&s4->sin_addr : (void *)&s6->sin6_addr;
	da = af == AF_INET ? (void *)&d4->sin_addr : (void *)&d6->sin6_addr;
	if ((st = v1_addr(buf, n, &pos, af, sa)) != PP_OK ||
	    (st = v1_addr(buf, n, &pos, af, da)) != PP_OK ||
	    (st = v1_port(buf, n, &pos, ' ', &sport)) != PP_OK ||
	    (st = v1_port(buf, n, &pos, '\r', &dport)) != PP_OK ||
	    (st = match(buf, n, &pos, "\n")) != PP_OK)
		return st;

	if (af == AF_INET) {
		s4->sin_family = d4->sin_family = AF_INET;
		s4->sin_port = sport;
		d4->sin_port = dport;
	} else {
		s6->sin6_family = d6->sin6_family = AF_INET6;
		s6->sin6_port = sport;
		d6->sin6_port = dport;
	}
	r->len = pos;
	return PP_OK;
}

/*
 * Returns 0 when p[0..n) is a whole number of TLVs (type octet, 16-bit
 * length, value), -1 otherwise.
 */
static int
v2_tlvs(const unsigned char *p, size_t n)
{
	size_t	vlen;

	while (n > 0) {
		if (n < 3)
			return -1;
		vlen = (size_t)p[1] << 8 | p[2];
		if (vlen > n - 3)
			return -1;
		p += 3 + vlen;
		n -= 3 + vlen;
	}
	return 0;
}

/* Returns the entry for family octet fam of a PROXY command, or NULL. */
static const struct v2_fam *
v2_fam(unsigned char fam)
{
	size_t	i;

	for (i = 0; i < sizeof(v2_fams) / sizeof(v2_fams[0]); i++)
		if (v2_fams[i].fam == fam)
			return &v2_fams[i];
	return NULL;
}

/*
 * Parses a version 2 header in buf[0..len).  Returns PP_OK with *r
 * filled, PP_NEED_MORE or PP_BAD.  Each octet of the fixed part is
 * checked as soon as it is there.
 */
static enum pp_status
v2_parse(const char *buf, size_t len, struct pp_result *r)
{
	const unsigned char	*u = (const unsigned char *)buf;
	const struct v2_fam	*f = NULL;
	struct sockaddr_in	*s4 = (struct sockaddr_in *)&r->src;
	struct sockaddr_in	*d4 = (struct sockaddr_in *)&r->dst;
	struct sockaddr_in6	*s6 = (struct sockaddr_in6 *)&r->src;
	struct sockaddr_in6	*d6 = (struct sockaddr_in6 *)&r->dst;
	size_t			 total, tlvlen;
	const unsigned char	*tlv;

	r->version = 2;
	if (memcmp(buf, V2_SIG, len < V2_SIGLEN ? len : V2_SIGLEN) != 0)
		return PP_BAD;
	if (len <= V2_SIGLEN)
		return PP_NEED_MORE;
	if ((u[12] & 0xf0) != V2_VERSION ||
	    ((u[12] & 0x0f) != V2_CMD_LOCAL && (u[12] & 0x0f) != V2_CMD_PROXY))
		return PP_BAD;
	if (len == 13)
		return PP_NEED_MORE;
	/* LOCAL: "discard the protocol block including the family". */
	if ((u[12] & 0x0f) == V2_CMD_PROXY && (f = v2_fam(u[13])) == NULL)
		return PP_BAD;
	if (len < V2_HDRLEN)
		return PP_NEED_MORE;
	total = V2_HDRLEN + ((size_t)u[14] << 8 | u[15]);
	if (total > PP_MAX_HEADER ||
	    (f != NULL && total < V2_HDRLEN + f->addrlen))
		return PP_BAD;
	if (len < total)
		return PP_NEED_MORE;

	if (f == NULL || !f->read) {
		r->local = 1;
		r->len = total;
		return PP_OK;
	}
	tlv = u + V2_HDRLEN + f->addrlen;
	tlvlen = total - V2_HDRLEN - f->addrlen;
	if (v2_tlvs(tlv, tlvlen) == -1)
		return PP_BAD;
	if (tlvlen > 0) {
		r->tlv = (const char *)tlv;
		r->tlvlen = tlvlen;
	}
	r->len = total;

	u += V2_HDRLEN;
	switch (f->af) {
	case AF_INET:
		s4->sin_family = d4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, u, 4);
		memcpy(&d4->sin_addr, u + 4, 4);
		memcpy(&s4->sin_port, u + 8, 2);
		memcpy(&d4->sin_port, u + 10, 2);
		break;
	case AF_INET6:
		s6->sin6_family = d6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, u, 16);
		memcpy(&d6->sin6_addr, u + 16, 16);
		memcpy(&s6->sin6_port, u + 32, 2);
		memcpy(&d6->sin6_port, u + 34, 2);
		break;
	default:
		r->local = 1;
		break;
	}
	return PP_OK;
}

/* See proxy_proto.h. */
enum pp_status
pp_parse(const char *buf, size_t len, struct pp_result *r)
{
	enum pp_status	st;

	memset(r, 0, sizeof(*r));
	if (len == 0)
		return PP_NEED_MORE;
	switch (buf[0]) {
	case 'P':
		st = v1_parse(buf, len < PP_V1_MAX ? len : PP_V1_MAX, r);
		/* Any valid line ends within the first PP_V1_MAX octets. */
		if (st == PP_NEED_MORE && len >= PP_V1_MAX)
			st = PP_BAD;
		break;
	case '\r':
		st = v2_parse(buf, len, r);
		break;
	default:
		st = PP_BAD;
		break;
	}
	if (st != PP_OK)
		memset(r, 0, sizeof(*r));
	return st;
}
