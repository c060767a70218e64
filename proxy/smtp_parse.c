/*
 * smtp_parse.c: pure SMTP parsers (see smtp_parse.h for the contracts).
 *
 * Nothing here allocates or keeps state between calls other than what the
 * caller passes in.  Every read is bounded by the caller's length: the
 * helpers work on a cursor that knows its end, and no helper looks at an
 * octet without first comparing its position with that end.
 */
#include <sys/types.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "smtp_parse.h"

/*
 * RFC 5321 4.5.3.1: size limits of the parts of a path, in octets.  The
 * path limit also keeps every domain under its own limit of 255.
 */
#define LOCALPART_MAX	64	/* Local-part */
#define PATHLEN_MAX	256	/* whole path, angle brackets included */

/* RFC 3461 4.2 and 4.4: longest ORCPT and ENVID values, in octets. */
#define ORCPT_MAX	500
#define ENVID_MAX	100

/* A read position inside a path or a parameter list. */
struct cur {
	const char	*p;		/* next octet to read */
	const char	*end;		/* one past the last octet */
	unsigned	 flags;		/* SMTP_PATH_* seen so far */
};

/* A keyword and the bit it stands for, for table lookups. */
struct name_bit {
	const char	*name;		/* keyword, any case */
	unsigned	 bit;		/* value returned on a match */
};

/* Indexed by enum smtp_verb. */
static const char *const verb_names[SMTP_V__COUNT] = {
	[SMTP_V_UNKNOWN] = "UNKNOWN",
	[SMTP_V_HELO] = "HELO",
	[SMTP_V_EHLO] = "EHLO",
	[SMTP_V_MAIL] = "MAIL",
	[SMTP_V_RCPT] = "RCPT",
	[SMTP_V_DATA] = "DATA",
	[SMTP_V_RSET] = "RSET",
	[SMTP_V_NOOP] = "NOOP",
	[SMTP_V_QUIT] = "QUIT",
	[SMTP_V_VRFY] = "VRFY",
	[SMTP_V_EXPN] = "EXPN",
	[SMTP_V_HELP] = "HELP",
	[SMTP_V_STARTTLS] = "STARTTLS",
	[SMTP_V_AUTH] = "AUTH",
	[SMTP_V_BDAT] = "BDAT",
	[SMTP_V_XCLIENT] = "XCLIENT",
	[SMTP_V_XFORWARD] = "XFORWARD",
};

/* ---- Character classes (ASCII only, independent of the locale) --------- */

static int
is_alpha(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int
is_alnum(int c)
{
	return is_alpha(c) || is_digit(c);
}

/* Letters, digits and hyphens: sub-domains, esmtp-keywords, tags. */
static int
is_ldh(int c)
{
	return is_alnum(c) || c == '-';
}

/* RFC 5322 atext, the octets of a Dot-string atom. */
static int
is_atext(int c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* RFC 5321 qtextSMTP: printable ASCII and SP, except '"' and '\'. */
static int
is_qtext(int c)
{
	return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

/* RFC 5321 dcontent, the octets of an address literal. */
static int
is_dcontent(int c)
{
	return c >= 33 && c <= 126 && c != '[' && c != '\\' && c != ']';
}

/* RFC 5321 esmtp-value octets (RFC 6531 adds UTF-8, handled apart). */
static int
is_esmtp_value(int c)
{
	return c >= 33 && c <= 126 && c != '=';
}

static int
is_xdigit_upper(int c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F');
}

static int
lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Returns 1 when a[0..alen) equals b[0..blen) ignoring ASCII case. */
static int
ieqn(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t	i;

	if (alen != blen)
		return 0;
	for (i = 0; i < alen; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

/* Returns 1 when a[0..alen) equals the string lit ignoring ASCII case. */
static int
ieq(const char *a, size_t alen, const char *lit)
{
	return ieqn(a, alen, lit, strlen(lit));
}

/* Returns 1 when a[0..alen) starts with lit ignoring ASCII case. */
static int
iprefix(const char *a, size_t alen, const char *lit)
{
	size_t	n = strlen(lit);

	return alen >= n && ieqn(a, n, lit, n);
}

/* Returns the table bit whose name is w[0..wlen), or 0. */
static unsigned
name_bit(const struct name_bit *t, size_t n, const char *w, size_t wlen)
{
	size_t	i;

	for (i = 0; i < n; i++)
		if (ieq(w, wlen, t[i].name))
			return t[i].bit;
	return 0;
}

/*
 * Reads 1 to 20 decimal digits, exactly p[0..n).  Returns 0 and sets *v, or
 * -1 when p is not such a number.  Values beyond UINT64_MAX saturate: a
 * size that large is refused by any limit the caller compares it with.
 */
static int
parse_u64(const char *p, size_t n, uint64_t *v)
{
	uint64_t	r = 0;
	unsigned	d;
	size_t		i;

	if (n == 0 || n > 20)
		return -1;
	for (i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return -1;
		d = p[i] - '0';
		r = r > (UINT64_MAX - d) / 10 ? UINT64_MAX : r * 10 + d;
	}
	*v = r;
	return 0;
}

/*
 * Returns the length of the well-formed UTF-8 sequence (RFC 3629 4) of two
 * to four octets at s, which must not run past end, or 0 when there is
 * none: overlong forms, surrogates and code points past U+10FFFF are
 * refused.
 */
static size_t
utf8_len(const char *s, const char *end)
{
	const unsigned char	*p = (const unsigned char *)s;
	unsigned char		 lo = 0x80, hi = 0xbf;
	size_t			 n, i;

	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	/* The second octet carries the range limits of the first. */
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	if ((size_t)(end - s) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

/* ---- Cursor helpers ------------------------------------------------------ */

/* Returns the next octet (0-255) without taking it, or -1 at the end. */
static int
peek(const struct cur *c)
{
	return c->p < c->end ? (unsigned char)*c->p : -1;
}

/* Takes the next octet if it is ch.  Returns 1 when taken, else 0. */
static int
eat(struct cur *c, int ch)
{
	if (peek(c) != ch)
		return 0;
	c->p++;
	return 1;
}

/*
 * Takes the longest run of octets for which ok() holds and, when utf8 is
 * set, of well-formed UTF-8 characters (flagging SMTP_PATH_UTF8).  Returns
 * the number of octets taken, or -1 on a malformed UTF-8 sequence.
 */
static ptrdiff_t
run(struct cur *c, int (*ok)(int), int utf8)
{
	const char	*s = c->p;
	size_t		 n;
	int		 ch;

	while ((ch = peek(c)) != -1) {
		if (ch < 0x80) {
			if (!ok(ch))
				break;
			c->p++;
		} else if (!utf8) {
			break;
		} else {
			if ((n = utf8_len(c->p, c->end)) == 0)
				return -1;
			c->p += n;
			c->flags |= SMTP_PATH_UTF8;
		}
	}
	return c->p - s;
}

/* ---- Command lines ------------------------------------------------------- */

/*
 * See smtp_parse.h.  For statuses other than SMTP_LINE_OK, *line is buf
 * and *linelen 0.
 */
enum smtp_line_status
smtp_line_parse(const char *buf, size_t len, size_t max, const char **line,
    size_t *linelen, size_t *consumed)
{
	size_t		 n = len < max ? len : max, end;
	const char	*lf = n ? memchr(buf, '\n', n) : NULL;

	*line = buf;
	*linelen = 0;
	*consumed = 0;
	if (lf == NULL)
		return len < max ? SMTP_LINE_NEED_MORE : SMTP_LINE_TOO_LONG;
	end = lf - buf;
	*consumed = end + 1;
	/* The only CR allowed is the one right before the LF. */
	if (end == 0 || buf[end - 1] != '\r' || memchr(buf, '\r', end - 1))
		return SMTP_LINE_BARE;
	*linelen = end - 1;
	return SMTP_LINE_OK;
}

/* ---- Commands ------------------------------------------------------------ */

/* See smtp_parse.h. */
const char *
smtp_verb_name(enum smtp_verb v)
{
	if ((unsigned)v >= SMTP_V__COUNT)
		v = SMTP_V_UNKNOWN;
	return verb_names[v];
}

/*
 * See smtp_parse.h.  For SMTP_V_UNKNOWN, *arg is line and *arglen 0.
 */
enum smtp_verb
smtp_cmd_parse(const char *line, size_t len, const char **arg, size_t *arglen)
{
	size_t	n;
	int	v;

	*arg = line;
	*arglen = 0;
	for (v = SMTP_V_UNKNOWN + 1; v < SMTP_V__COUNT; v++) {
		n = strlen(verb_names[v]);
		if (!iprefix(line, len, verb_names[v]) ||
		    (len > n && line[n] != ' '))
			continue;
		/* Skip the one SP after the verb, when there is one. */
		if (len > n)
			n++;
		*arg = line + n;
		*arglen = len - n;
		return v;
	}
	return SMTP_V_UNKNOWN;
}

/* ---- Paths --------------------------------------------------------------- */

/*
 * Reads a Domain: sub-domains joined by '.', each a run of letters, digits,
 * hyphens and UTF-8 characters (RFC 6531 U-labels) that neither starts nor
 * ends with a hyphen.  Returns 0, or -1 on a grammar error.
 */
static int
path_domain(struct cur *c)
{
	const char	*label;

	do {
		label = c->p;
		if (run(c, is_ldh, 1) <= 0 || label[0] == '-' ||
		    c->p[-1] == '-')
			return -1;
	} while (eat(c, '.'));
	return 0;
}

/* Returns 0 when p[0..n) is an IPv4-address-literal, else -1. */
static int
literal_ipv4(const char *p, size_t n)
{
	size_t	i = 0, digits;
	int	part, val;

	for (part = 0; part < 4; part++) {
		if (part > 0 && (i == n || p[i++] != '.'))
			return -1;
		for (val = 0, digits = 0; i < n && digits < 3 &&
		    is_digit(p[i]); i++, digits++)
			val = val * 10 + (p[i] - '0');
		if (digits == 0 || val > 255)
			return -1;
	}
	return i == n ? 0 : -1;
}

/* Returns 0 when p[0..n) (after "IPv6:") is an IPv6 address, else -1. */
static int
literal_ipv6(const char *p, size_t n)
{
	char		tmp[INET6_ADDRSTRLEN];
	struct in6_addr	a;

	/* inet_pton() wants a string; the caller made sure p has no NUL. */
	if (n >= sizeof(tmp))
		return -1;
	memcpy(tmp, p, n);
	tmp[n] = '\0';
	return inet_pton(AF_INET6, tmp, &a) == 1 ? 0 : -1;
}

/*
 * Returns 0 when p[0..n) is a General-address-literal: Standardized-tag
 * (an Ldh-str ending in a letter or digit) ':' 1*dcontent.  Else -1.
 */
static int
literal_general(const char *p, size_t n)
{
	const char	*colon = memchr(p, ':', n);
	size_t		 i, taglen;

	if (colon == NULL || (taglen = colon - p) == 0 || taglen + 1 == n ||
	    p[taglen - 1] == '-')
		return -1;
	for (i = 0; i < taglen; i++)
		if (!is_ldh((unsigned char)p[i]))
			return -1;
	return 0;
}

/*
 * Reads an address-literal "[...]" at the cursor.  The content must be a
 * dotted quad, "IPv6:" and an IPv6 address, or a General-address-literal
 * (a tag of "IPv6" never falls back to the last).  Returns 0 or -1.
 */
static int
path_literal(struct cur *c)
{
	const char	*s = c->p + 1, *e = s;
	size_t		 n;

	while (e < c->end && is_dcontent((unsigned char)*e))
		e++;
	if (e == c->end || *e != ']')
		return -1;
	c->p = e + 1;
	c->flags |= SMTP_PATH_LITERAL;
	n = e - s;
	if (iprefix(s, n, "IPv6:"))
		return literal_ipv6(s + 5, n - 5);
	if (literal_ipv4(s, n) == 0)
		return 0;
	return literal_general(s, n);
}

/*
 * Reads a Local-part: a Quoted-string (quoted-pairSMTP is '\' and one of
 * octets 32-126) or a Dot-string of atoms.  Returns 0 or -1.
 */
static int
path_local(struct cur *c)
{
	int	ch;

	if (eat(c, '"')) {
		c->flags |= SMTP_PATH_QUOTED;
		for (;;) {
			if (run(c, is_qtext, 1) == -1)
				return -1;
			if (eat(c, '"'))
				return 0;
			if (!eat(c, '\\') || (ch = peek(c)) < 32 || ch > 126)
				return -1;
			c->p++;
		}
	}
	do {
		if (run(c, is_atext, 1) <= 0)
			return -1;
	} while (eat(c, '.'));
	return 0;
}

/*
 * Reads a Path "<[A-d-l:]Mailbox>" at the cursor into *path, also "<>" for
 * MAIL and "<Postmaster>" for RCPT.  Returns SMTP_ARG_OK, SMTP_ARG_SYNTAX
 * when there is no '<', or SMTP_ARG_PATH.
 */
static enum smtp_arg_err
path_parse(struct cur *c, int is_rcpt, struct smtp_path *path)
{
	const char	*raw = c->p;

	if (!eat(c, '<'))
		return SMTP_ARG_SYNTAX;
	if (eat(c, '>')) {
		if (is_rcpt)
			return SMTP_ARG_PATH;
		c->flags |= SMTP_PATH_NULL;
		goto done;
	}
	if (peek(c) == '@') {
		path->route = c->p;
		do {
			if (!eat(c, '@') || path_domain(c) == -1)
				return SMTP_ARG_PATH;
		} while (eat(c, ','));
		path->routelen = c->p - path->route;
		if (!eat(c, ':'))
			return SMTP_ARG_PATH;
		c->flags |= SMTP_PATH_ROUTE;
	}
	path->mailbox = path->local = c->p;
	if (path_local(c) == -1 ||
	    (path->locallen = c->p - path->local) > LOCALPART_MAX)
		return SMTP_ARG_PATH;
	if (is_rcpt && !(c->flags & (SMTP_PATH_ROUTE | SMTP_PATH_QUOTED)) &&
	    peek(c) == '>' &&
	    ieq(path->local, path->locallen, "Postmaster")) {
		c->flags |= SMTP_PATH_POSTMASTER;
	} else {
		if (!eat(c, '@'))
			return SMTP_ARG_PATH;
		path->domain = c->p;
		if ((peek(c) == '[' ? path_literal(c) : path_domain(c)) == -1)
			return SMTP_ARG_PATH;
		path->domainlen = c->p - path->domain;
	}
	path->mailboxlen = c->p - path->mailbox;
	if (!eat(c, '>'))
		return SMTP_ARG_PATH;
done:
	path->raw = raw;
	path->rawlen = c->p - raw;
	path->flags = c->flags;
	return path->rawlen > PATHLEN_MAX ? SMTP_ARG_PATH : SMTP_ARG_OK;
}

/* ---- ESMTP parameters ---------------------------------------------------- */

/*
 * Reads the esmtp-param list after a path: keyword ["=" value] items split
 * by one or more SP, trailing SP allowed.  Stores the first SMTP_PARAMS_MAX
 * in out.  Returns SMTP_ARG_OK, SMTP_ARG_PARAM_SYNTAX or, when the whole
 * list is well formed but too long, SMTP_ARG_TOO_MANY.
 */
static enum smtp_arg_err
params_parse(struct cur *c, struct smtp_mailrcpt *out)
{
	struct smtp_param	*sp;
	const char		*key, *val;
	int			 n = 0;

	for (;;) {
		while (eat(c, ' '))
			;
		if (c->p == c->end)
			break;
		key = c->p;
		if (!is_alnum(peek(c)))
			return SMTP_ARG_PARAM_SYNTAX;
		run(c, is_ldh, 0);
		val = NULL;
		if (eat(c, '=')) {
			val = c->p;
			if (run(c, is_esmtp_value, 1) <= 0)
				return SMTP_ARG_PARAM_SYNTAX;
		}
		if (c->p < c->end && *c->p != ' ')
			return SMTP_ARG_PARAM_SYNTAX;
		if (n < SMTP_PARAMS_MAX) {
			sp = &out->params[n];
			sp->key = key;
			sp->keylen = (val ? val - 1 : c->p) - key;
			sp->val = val;
			sp->vallen = val ? (size_t)(c->p - val) : 0;
			out->nparams = n + 1;
		}
		n++;
	}
	return n > SMTP_PARAMS_MAX ? SMTP_ARG_TOO_MANY : SMTP_ARG_OK;
}

/* See smtp_parse.h. */
enum smtp_arg_err
smtp_mailrcpt_parse(const char *arg, size_t len, int is_rcpt,
    struct smtp_mailrcpt *out)
{
	const char		*kw = is_rcpt ? "TO:" : "FROM:";
	struct cur		 c;
	enum smtp_arg_err	 err;

	memset(out, 0, sizeof(*out));
	if (!iprefix(arg, len, kw))
		return SMTP_ARG_SYNTAX;
	c.p = arg + strlen(kw);
	c.end = arg + len;
	c.flags = 0;
	while (eat(&c, ' '))
		;
	if ((err = path_parse(&c, is_rcpt, &out->path)) != SMTP_ARG_OK)
		return err;
	if (c.p < c.end && *c.p != ' ')
		return SMTP_ARG_SYNTAX;
	return params_parse(&c, out);
}

/* Returns 0 when p[0..n) is RFC 3461 xtext ("+XX" in upper case hex). */
static int
xtext_ok(const char *p, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		if (p[i] == '+') {
			if (n - i < 3 || !is_xdigit_upper(p[i + 1]) ||
			    !is_xdigit_upper(p[i + 2]))
				return -1;
			i += 2;
		} else if ((unsigned char)p[i] < 33 ||
		    (unsigned char)p[i] > 126 || p[i] == '=')
			return -1;
	}
	return 0;
}

/* SIZE=1*20DIGIT (RFC 1870). */
static int
param_size(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	return parse_u64(p->val, p->vallen, &o->size);
}

/* BODY=7BIT / 8BITMIME (RFC 6152). */
static int
param_body(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	if (ieq(p->val, p->vallen, "7BIT"))
		o->body = 7;
	else if (ieq(p->val, p->vallen, "8BITMIME"))
		o->body = 8;
	else
		return -1;
	return 0;
}

/* SMTPUTF8 (RFC 6531), without value. */
static int
param_smtputf8(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	(void)p;
	o->smtputf8 = 1;
	return 0;
}

/* RET=FULL / HDRS (RFC 3461 4.3). */
static int
param_ret(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	if (ieq(p->val, p->vallen, "FULL"))
		o->ret = 1;
	else if (ieq(p->val, p->vallen, "HDRS"))
		o->ret = 2;
	else
		return -1;
	return 0;
}

/* ENVID=xtext, at most ENVID_MAX octets (RFC 3461 4.4). */
static int
param_envid(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	o->envid = 1;
	return p->vallen > ENVID_MAX ? -1 : xtext_ok(p->val, p->vallen);
}

/*
 * NOTIFY="NEVER" or a comma list of SUCCESS, FAILURE, DELAY, each at most
 * once (RFC 3461 4.1).
 */
static int
param_notify(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	static const struct name_bit kinds[] = {
		{ "NEVER", 1 }, { "SUCCESS", 2 }, { "FAILURE", 4 },
		{ "DELAY", 8 },
	};
	const char	*s = p->val, *end = p->val + p->vallen, *comma;
	unsigned	 seen = 0, bit;

	for (;;) {
		if ((comma = memchr(s, ',', end - s)) == NULL)
			comma = end;
		bit = name_bit(kinds, sizeof(kinds) / sizeof(kinds[0]), s,
		    comma - s);
		if (bit == 0 || (seen & bit))
			return -1;
		seen |= bit;
		if (comma == end)
			break;
		s = comma + 1;
	}
	o->notify = 1;
	return (seen & 1) && seen != 1 ? -1 : 0;
}

/*
 * ORCPT=addr-type ";" xtext, at most ORCPT_MAX octets (RFC 3461 4.2);
 * addr-type is an atom and the address is not empty.
 */
static int
param_orcpt(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	const char	*semi = memchr(p->val, ';', p->vallen);
	size_t		 i, typelen;

	o->orcpt = 1;
	if (p->vallen > ORCPT_MAX || semi == NULL ||
	    (typelen = semi - p->val) == 0 || typelen + 1 == p->vallen)
		return -1;
	for (i = 0; i < typelen; i++)
		if (!is_atext((unsigned char)p->val[i]))
			return -1;
	return xtext_ok(semi + 1, p->vallen - typelen - 1);
}

/*
 * AUTH=xtext on MAIL (RFC 4954 5): "<>" or a mailbox, xtext-encoded, at
 * most ORCPT_MAX octets.  Taken and never forwarded: the backend learns
 * the login from XCLIENT.
 */
static int
param_auth(const struct smtp_param *p, struct smtp_mail_opts *o)
{
	(void)o;
	return p->vallen > ORCPT_MAX ? -1 : xtext_ok(p->val, p->vallen);
}

/* A parameter we support, with the check of its value. */
struct param_rule {
	const char	*key;		/* esmtp-keyword */
	int		 is_rcpt;	/* 0: a MAIL parameter, 1: RCPT */
	int		 has_val;	/* 1: needs "=value", 0: refuses */
	int		(*check)(const struct smtp_param *,
			    struct smtp_mail_opts *); /* 0 or -1 */
};

static const struct param_rule param_rules[] = {
	{ "SIZE",	0, 1, param_size },
	{ "BODY",	0, 1, param_body },
	{ "SMTPUTF8",	0, 0, param_smtputf8 },
	{ "RET",	0, 1, param_ret },
	{ "ENVID",	0, 1, param_envid },
	{ "AUTH",	0, 1, param_auth },
	{ "NOTIFY",	1, 1, param_notify },
	{ "ORCPT",	1, 1, param_orcpt },
};

/* Returns the rule for parameter p of MAIL or RCPT, or NULL. */
static const struct param_rule *
param_rule(const struct smtp_param *p, int is_rcpt)
{
	size_t	i;

	for (i = 0; i < sizeof(param_rules) / sizeof(param_rules[0]); i++)
		if (param_rules[i].is_rcpt == is_rcpt &&
		    ieq(p->key, p->keylen, param_rules[i].key))
			return &param_rules[i];
	return NULL;
}

/* See smtp_parse.h. */
enum smtp_arg_err
smtp_params_check(const struct smtp_mailrcpt *m, int is_rcpt, int smtputf8,
    struct smtp_mail_opts *opts)
{
	const struct smtp_param	*p;
	const struct param_rule	*rule;
	int			 i, j;

	memset(opts, 0, sizeof(*opts));
	is_rcpt = is_rcpt != 0;
	for (i = 0; i < m->nparams; i++) {
		p = &m->params[i];
		for (j = 0; j < i; j++)
			if (ieqn(p->key, p->keylen, m->params[j].key,
			    m->params[j].keylen))
				return SMTP_ARG_PARAM_DUP;
		if ((rule = param_rule(p, is_rcpt)) == NULL)
			return SMTP_ARG_PARAM_UNKNOWN;
		if ((p->val != NULL) != rule->has_val ||
		    rule->check(p, opts) == -1)
			return SMTP_ARG_PARAM_VALUE;
	}
	if (!is_rcpt)
		smtputf8 = opts->smtputf8;
	if ((m->path.flags & SMTP_PATH_UTF8) && !smtputf8)
		return SMTP_ARG_UTF8;
	return SMTP_ARG_OK;
}

/* ---- DATA scanner -------------------------------------------------------- */

/*
 * Scanner states kept between calls.  A CR is only ever consumed together
 * with the octet after it, so no state needs to remember a pending CR.
 */
enum {
	DS_BOL = 0,	/* at the start of a line (after a true CRLF) */
	DS_LINE,	/* inside a line */
	DS_DOT,		/* after a '.' at the start of a line */
	DS_DONE		/* the terminator has been consumed */
};

/* Records a bare CR or LF at offset i of this call's buffer. */
static void
dscan_offence(struct smtp_dscan *s, size_t i, size_t *clean, int kind)
{
	if (s->bad == 0) {
		s->bad = kind;
		*clean = i;
	}
}

/* See smtp_parse.h.  Once done, further calls consume nothing. */
size_t
smtp_dscan(struct smtp_dscan *s, const char *buf, size_t len, size_t *fwd,
    int *done)
{
	size_t	i = 0, clean = s->bad ? 0 : SIZE_MAX;

	*done = s->state == DS_DONE;
	while (i < len && !*done) {
		switch (buf[i]) {
		case '\r':
			/* Hold a final CR back until its successor comes. */
			if (i + 1 == len)
				goto out;
			if (buf[i + 1] != '\n') {
				dscan_offence(s, i, &clean, SMTP_DSCAN_BARE_CR);
				s->state = DS_LINE;
				i++;
				break;
			}
			i += 2;
			if (s->state == DS_DOT) {
				s->state = DS_DONE;
				*done = 1;
			} else
				s->state = DS_BOL;
			break;
		case '\n':
			/* A bare LF starts no line: "\n.\r\n" is data. */
			dscan_offence(s, i, &clean, SMTP_DSCAN_BARE_LF);
			s->state = DS_LINE;
			i++;
			break;
		case '.':
			s->state = s->state == DS_BOL ? DS_DOT : DS_LINE;
			i++;
			break;
		default:
			/* The bulk of a message: skip to the next CR or LF. */
			s->state = DS_LINE;
			while (++i < len && buf[i] != '\r' && buf[i] != '\n')
				;
			break;
		}
	}
out:
	*fwd = clean < i ? clean : i;
	s->bytes += i;
	return i;
}

/* ---- Replies from the backend ------------------------------------------- */

/*
 * Checks the start of one reply line, of which avail octets are at p:
 * "ddd" (2-5, 0-9, 0-9) and then '-', SP, CRLF or LF.  Returns 1 when
 * complete and well formed (setting *code, and *more for '-'), 0 when more
 * octets are needed, -1 when malformed.  Partial heads are checked too, so
 * garbage fails before max octets have arrived.
 */
static int
reply_head(const char *p, size_t avail, int *code, int *more)
{
	static const char	lo[] = "200", hi[] = "599";
	size_t			i;

	for (i = 0; i < 3; i++) {
		if (i == avail)
			return 0;
		if (p[i] < lo[i] || p[i] > hi[i])
			return -1;
	}
	if (avail == 3)
		return 0;
	switch (p[3]) {
	case '-':
		*more = 1;
		break;
	case '\r':
		if (avail == 4)
			return 0;
		if (p[4] != '\n')
			return -1;
		/* FALLTHROUGH */
	case ' ':
	case '\n':
		*more = 0;
		break;
	default:
		return -1;
	}
	*code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	return 1;
}

/* See smtp_parse.h. */
long
smtp_reply_parse(const char *buf, size_t len, size_t max, int *code)
{
	size_t		 n = len < max ? len : max, pos = 0;
	const char	*lf;
	int		 c = 0, first = 0, more = 1, r;

	*code = 0;
	while (more) {
		r = reply_head(buf + pos, n - pos, &c, &more);
		if (r == -1 || (r == 1 && first != 0 && c != first))
			return -1;
		if (r == 0 || (lf = memchr(buf + pos, '\n', n - pos)) == NULL)
			return len >= max || n - pos > SMTP_REPLY_LINE_MAX ?
			    -1 : 0;
		if ((size_t)(lf - (buf + pos)) + 1 > SMTP_REPLY_LINE_MAX)
			return -1;
		first = c;
		pos = lf - buf + 1;
	}
	*code = c;
	return (long)pos;
}

static const struct name_bit ehlo_exts[] = {
	{ "PIPELINING", SMTP_EXT_PIPELINING },
	{ "SIZE", SMTP_EXT_SIZE },
	{ "8BITMIME", SMTP_EXT_8BITMIME },
	{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 },
	{ "DSN", SMTP_EXT_DSN },
	{ "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCED },
	{ "STARTTLS", SMTP_EXT_STARTTLS },
	{ "XCLIENT", SMTP_EXT_XCLIENT },
	{ "XFORWARD", SMTP_EXT_XFORWARD },
	{ "CHUNKING", SMTP_EXT_CHUNKING },
};

static const struct name_bit xclient_attrs[] = {
	{ "NAME", SMTP_XCLIENT_NAME },
	{ "ADDR", SMTP_XCLIENT_ADDR },
	{ "PORT", SMTP_XCLIENT_PORT },
	{ "PROTO", SMTP_XCLIENT_PROTO },
	{ "HELO", SMTP_XCLIENT_HELO },
	{ "LOGIN", SMTP_XCLIENT_LOGIN },
};

/*
 * Returns the next SP-separated word in [*p, end) and its length in *wlen,
 * moving *p past it; NULL when only spaces are left.
 */
static const char *
next_word(const char **p, const char *end, size_t *wlen)
{
	const char	*w;

	while (*p < end && **p == ' ')
		(*p)++;
	w = *p;
	while (*p < end && **p != ' ')
		(*p)++;
	*wlen = *p - w;
	return *wlen ? w : NULL;
}

/* Reads one EHLO line p[0..n) without its line end; returns its SMTP_EXT_*. */
static unsigned
ehlo_line(const char *p, size_t n, uint64_t *size, unsigned *xclient)
{
	const char	*end = p + n, *w;
	size_t		 wlen;
	unsigned	 bit;

	if (n < 4)
		return 0;
	p += 4;		/* "250-" or "250 " */
	if ((w = next_word(&p, end, &wlen)) == NULL)
		return 0;
	bit = name_bit(ehlo_exts, sizeof(ehlo_exts) / sizeof(ehlo_exts[0]),
	    w, wlen);
	if (bit == SMTP_EXT_SIZE && (w = next_word(&p, end, &wlen)) != NULL)
		(void)parse_u64(w, wlen, size);
	while (bit == SMTP_EXT_XCLIENT &&
	    (w = next_word(&p, end, &wlen)) != NULL)
		*xclient |= name_bit(xclient_attrs,
		    sizeof(xclient_attrs) / sizeof(xclient_attrs[0]), w, wlen);
	return bit;
}

/* See smtp_parse.h.  A last line without LF is read as well. */
unsigned
smtp_ehlo_parse(const char *reply, size_t len, uint64_t *size,
    unsigned *xclient)
{
	const char	*p, *end = reply + len, *lf;
	size_t		 n;
	unsigned	 ext = 0;

	*size = 0;
	*xclient = 0;
	/* Skip the greeting line. */
	if (len == 0 || (p = memchr(reply, '\n', len)) == NULL)
		return 0;
	for (p++; p < end; p = lf ? lf + 1 : end) {
		lf = memchr(p, '\n', end - p);
		n = (lf ? lf : end) - p;
		if (n > 0 && p[n - 1] == '\r')
			n--;
		ext |= ehlo_line(p, n, size, xclient);
	}
	return ext;
}

/* Stores octet ch at dst[*n] if it fits in dstlen, and counts it. */
static void
xtext_put(char *dst, size_t dstlen, size_t *n, char ch)
{
	if (*n < dstlen)
		dst[*n] = ch;
	(*n)++;
}

/* See smtp_parse.h. */
size_t
smtp_xtext_encode(char *dst, size_t dstlen, const char *src, size_t len)
{
	static const char	hex[] = "0123456789ABCDEF";
	size_t			i, n = 0;
	unsigned char		ch;

	for (i = 0; i < len; i++) {
		ch = (unsigned char)src[i];
		if (ch < 33 || ch > 126 || ch == '+' || ch == '=') {
			xtext_put(dst, dstlen, &n, '+');
			xtext_put(dst, dstlen, &n, hex[ch >> 4]);
			xtext_put(dst, dstlen, &n, hex[ch & 0xf]);
		} else
			xtext_put(dst, dstlen, &n, ch);
	}
	if (n < dstlen)
		dst[n] = '\0';
	return n;
}
