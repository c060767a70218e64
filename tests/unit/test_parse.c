/*
 * test_parse.c: unit tests for proxy/smtp_parse.c.
 *
 * Table driven.  Every input is copied so that it ends right before a
 * PROT_NONE page, so a parser that reads one octet too far faults, and
 * every parser is also given each truncated prefix of each input.  The DATA
 * scanner is fed each input in one piece, in every two pieces and octet by
 * octet, and the results must agree.
 */
#include <sys/mman.h>

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "smtp_parse.h"
#include "test.h"

#define S(s)		s, sizeof(s) - 1	/* literal, length */
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define MAIL		0
#define RCPT		1
#define DSCAN_MAX	64			/* longest DATA test input */

/* Ten and a hundred octets, to build inputs of a given length. */
#define X10		"xxxxxxxxxx"
#define X100		X10 X10 X10 X10 X10 X10 X10 X10 X10 X10

/* Readable pages followed by a PROT_NONE page. */
struct guard {
	char	*end;		/* first octet of the PROT_NONE page */
	size_t	 size;		/* readable octets before it */
};

static struct guard guard;

/* Judges a parser's result on a truncated input; returns 1 when right. */
typedef int (*prefix_fn)(const char *buf, size_t len, const void *test);

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

/*
 * Runs fn on every proper prefix of in[0..len) at the guard page and
 * returns how many results it found wrong.
 */
static int
each_prefix(const char *in, size_t len, prefix_fn fn, const void *test)
{
	size_t	k;
	int	wrong = 0;

	for (k = 0; k < len; k++)
		wrong += !fn(at_guard(in, k), k, test);
	return wrong;
}

/* Returns 1 when p[0..n) is the string want, or both are NULL. */
static int
field_is(const char *p, size_t n, const char *want)
{
	if (want == NULL)
		return p == NULL;
	return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

/* Returns 1 when p[0..n) is NULL or lies inside buf[0..len). */
static int
inside(const char *p, size_t n, const char *buf, size_t len)
{
	return p == NULL || (p >= buf && p <= buf + len &&
	    n <= len - (size_t)(p - buf));
}

/* ---- Commands and lines ---------------------------------------------- */

static const struct cmd_test {
	const char	*line;
	size_t		 len;
	enum smtp_verb	 verb;		/* expected verb */
	const char	*arg;		/* expected argument */
} cmd_tests[] = {
	{ S("MAIL FROM:<a@b.example>"), SMTP_V_MAIL, "FROM:<a@b.example>" },
	{ S("mail from:<>"), SMTP_V_MAIL, "from:<>" },
	{ S("RcPt TO:<a@b>"), SMTP_V_RCPT, "TO:<a@b>" },
	{ S("MAILX FROM:<>"), SMTP_V_UNKNOWN, "" },
	{ S("NOOP"), SMTP_V_NOOP, "" },
	{ S("NOOP "), SMTP_V_NOOP, "" },
	{ S("NOOP hello"), SMTP_V_NOOP, "hello" },
	{ S("NOOP  two"), SMTP_V_NOOP, " two" },
	{ S("NOOP\tx"), SMTP_V_UNKNOWN, "" },
	{ S(" NOOP"), SMTP_V_UNKNOWN, "" },
	{ S("NOO"), SMTP_V_UNKNOWN, "" },
	{ S(""), SMTP_V_UNKNOWN, "" },
	{ S("EHLO client.example"), SMTP_V_EHLO, "client.example" },
	{ S("helo x"), SMTP_V_HELO, "x" },
	{ S("DATA"), SMTP_V_DATA, "" },
	{ S("starttls"), SMTP_V_STARTTLS, "" },
	{ S("STARTTLSX"), SMTP_V_UNKNOWN, "" },
	{ S("AUTH PLAIN AGZvbwBiYXI="), SMTP_V_AUTH, "PLAIN AGZvbwBiYXI=" },
	{ S("BDAT 100 LAST"), SMTP_V_BDAT, "100 LAST" },
	{ S("XCLIENT ADDR=192.0.2.1"), SMTP_V_XCLIENT, "ADDR=192.0.2.1" },
	{ S("QUIT\0"), SMTP_V_UNKNOWN, "" },
};

/* Any result will do on a prefix, as long as the argument is inside it. */
static int
cmd_prefix(const char *buf, size_t len, const void *test)
{
	const char	*arg;
	size_t		 arglen;

	(void)test;
	smtp_cmd_parse(buf, len, &arg, &arglen);
	return inside(arg, arglen, buf, len);
}

static void
test_cmd(void)
{
	const struct cmd_test	*t;
	const char		*arg, *name;
	size_t			 i, arglen;
	int			 v;

	for (i = 0; i < NELEM(cmd_tests); i++) {
		t = &cmd_tests[i];
		v = smtp_cmd_parse(at_guard(t->line, t->len), t->len, &arg,
		    &arglen);
		CHECKF(v == (int)t->verb && field_is(arg, arglen, t->arg),
		    "cmd %zu: verb %d arg \"%.*s\"", i, v, (int)arglen, arg);
		CHECKF(each_prefix(t->line, t->len, cmd_prefix, t) == 0,
		    "cmd %zu prefixes", i);
	}
	for (v = SMTP_V_UNKNOWN + 1; v < SMTP_V__COUNT; v++) {
		name = smtp_verb_name(v);
		CHECKF(smtp_cmd_parse(name, strlen(name), &arg, &arglen) ==
		    (enum smtp_verb)v && arglen == 0, "verb %s", name);
	}
	CHECK(strcmp(smtp_verb_name(SMTP_V_UNKNOWN), "UNKNOWN") == 0);
	CHECK(strcmp(smtp_verb_name(SMTP_V__COUNT), "UNKNOWN") == 0);
}

static const struct line_test {
	const char	*in;
	size_t		 len;
	size_t		 max;		/* limit, CRLF included */
	enum smtp_line_status st;	/* expected status */
	size_t		 linelen;	/* expected, for SMTP_LINE_OK */
	size_t		 consumed;	/* expected */
} line_tests[] = {
	{ S("NOOP\r\n"), 512, SMTP_LINE_OK, 4, 6 },
	{ S("NOOP\r\nQUIT\r\n"), 512, SMTP_LINE_OK, 4, 6 },
	{ S("\r\n"), 512, SMTP_LINE_OK, 0, 2 },
	{ S("NOOP"), 512, SMTP_LINE_NEED_MORE, 0, 0 },
	{ S("NOOP\r"), 512, SMTP_LINE_NEED_MORE, 0, 0 },
	{ S(""), 512, SMTP_LINE_NEED_MORE, 0, 0 },
	{ S("NOOP\n"), 512, SMTP_LINE_BARE, 0, 5 },
	{ S("\n"), 512, SMTP_LINE_BARE, 0, 1 },
	{ S("NO\rOP\r\n"), 512, SMTP_LINE_BARE, 0, 7 },
	{ S("NOOP\r\r\n"), 512, SMTP_LINE_BARE, 0, 7 },
	{ S("\rNOOP\r\nQUIT\r\n"), 512, SMTP_LINE_BARE, 0, 7 },
	{ S("NOOP xx\r\n"), 9, SMTP_LINE_OK, 7, 9 },
	{ S("NOOP xxx\r\n"), 9, SMTP_LINE_TOO_LONG, 0, 0 },
	{ S("NOOP xx\n"), 8, SMTP_LINE_BARE, 0, 8 },
	{ S("NOOP xxx"), 9, SMTP_LINE_NEED_MORE, 0, 0 },
	{ S("NOOP xxx\r"), 9, SMTP_LINE_TOO_LONG, 0, 0 },
	{ S("NOOP xxxx"), 9, SMTP_LINE_TOO_LONG, 0, 0 },
};

/* Before its first LF, a line needs more input until max octets. */
static int
line_prefix(const char *buf, size_t len, const void *test)
{
	const struct line_test	*t = test;
	const char		*line;
	size_t			 linelen, consumed;
	enum smtp_line_status	 st;

	st = smtp_line_parse(buf, len, t->max, &line, &linelen, &consumed);
	if (memchr(buf, '\n', len) != NULL)
		return 1;
	return consumed == 0 && st == (len < t->max ?
	    SMTP_LINE_NEED_MORE : SMTP_LINE_TOO_LONG);
}

static void
test_line(void)
{
	const struct line_test	*t;
	const char		*p, *line;
	size_t			 i, linelen, consumed;
	enum smtp_line_status	 st;

	for (i = 0; i < NELEM(line_tests); i++) {
		t = &line_tests[i];
		p = at_guard(t->in, t->len);
		st = smtp_line_parse(p, t->len, t->max, &line, &linelen,
		    &consumed);
		CHECKF(st == t->st && consumed == t->consumed &&
		    (st != SMTP_LINE_OK || (line == p &&
		    linelen == t->linelen)), "line %zu: status %d, %zu, %zu",
		    i, st, linelen, consumed);
		CHECKF(each_prefix(t->in, t->len, line_prefix, t) == 0,
		    "line %zu prefixes", i);
	}
}

/* ---- Paths and parameters ----------------------------------------------- */

/* The rest of a path_test row when the path is refused. */
#define REFUSED(err)	err, 0, NULL, NULL, NULL

static const struct path_test {
	int		 is_rcpt;
	const char	*arg;
	size_t		 len;
	enum smtp_arg_err err;		/* expected result */
	unsigned	 flags;		/* the rest: expected if OK */
	const char	*route;
	const char	*local;
	const char	*domain;
} path_tests[] = {
	{ MAIL, S("FROM:<user@example.org>"), SMTP_ARG_OK,
	    0, NULL, "user", "example.org" },
	{ MAIL, S("from:  <user@Example.ORG>"), SMTP_ARG_OK,
	    0, NULL, "user", "Example.ORG" },
	{ MAIL, S("FROM:<>"), SMTP_ARG_OK, SMTP_PATH_NULL, NULL, NULL, NULL },
	{ RCPT, S("TO:<>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<Postmaster>"), SMTP_ARG_OK,
	    SMTP_PATH_POSTMASTER, NULL, "Postmaster", NULL },
	{ RCPT, S("to:<postMASTER>"), SMTP_ARG_OK,
	    SMTP_PATH_POSTMASTER, NULL, "postMASTER", NULL },
	{ RCPT, S("TO:<Postmaster@example.org>"), SMTP_ARG_OK,
	    0, NULL, "Postmaster", "example.org" },
	{ MAIL, S("FROM:<Postmaster>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<Postmistress>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<\"Postmaster\">"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<@a.example:Postmaster>"), REFUSED(SMTP_ARG_PATH) },
	/* Source routes. */
	{ RCPT, S("TO:<@a.example,@b.example:u@c.example>"), SMTP_ARG_OK,
	    SMTP_PATH_ROUTE, "@a.example,@b.example", "u", "c.example" },
	{ MAIL, S("FROM:<@a.example:u@c.example>"), SMTP_ARG_OK,
	    SMTP_PATH_ROUTE, "@a.example", "u", "c.example" },
	{ RCPT, S("TO:<@a.example,u@c.example>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<@a.example,:u@c.example>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<@:u@c.example>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<@[192.0.2.1]:u@c.example>"), REFUSED(SMTP_ARG_PATH) },
	{ RCPT, S("TO:<a.example:u@c.example>"), REFUSED(SMTP_ARG_PATH) },
	/* Local parts. */
	{ MAIL, S("FROM:<first.last@x.example>"), SMTP_ARG_OK,
	    0, NULL, "first.last", "x.example" },
	{ MAIL, S("FROM:<!#$%&'*+-/=?^_`{|}~@x.example>"), SMTP_ARG_OK,
	    0, NULL, "!#$%&'*+-/=?^_`{|}~", "x.example" },
	{ MAIL, S("FROM:<\"john doe\"@x.example>"), SMTP_ARG_OK,
	    SMTP_PATH_QUOTED, NULL, "\"john doe\"", "x.example" },
	{ MAIL, S("FROM:<\"a\\\"b\\\\c@d\"@x.example>"), SMTP_ARG_OK,
	    SMTP_PATH_QUOTED, NULL, "\"a\\\"b\\\\c@d\"", "x.example" },
	{ MAIL, S("FROM:<\"a>b\"@x.example>"), SMTP_ARG_OK,
	    SMTP_PATH_QUOTED, NULL, "\"a>b\"", "x.example" },
	{ MAIL, S("FROM:<\"\"@x.example>"), SMTP_ARG_OK,
	    SMTP_PATH_QUOTED, NULL, "\"\"", "x.example" },
	{ MAIL, S("FROM:<\"a\\\x01\"@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\"a\tb\"@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\"abc@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\"abc\\"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<.a@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<a.@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<a..b@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<a b@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<a\0b@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<@x.example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<user>"), REFUSED(SMTP_ARG_PATH) },
	/* Domains. */
	{ MAIL, S("FROM:<u@localhost>"), SMTP_ARG_OK,
	    0, NULL, "u", "localhost" },
	{ MAIL, S("FROM:<u@xn--bcher-kva.example>"), SMTP_ARG_OK,
	    0, NULL, "u", "xn--bcher-kva.example" },
	{ MAIL, S("FROM:<u@1.2.3.4>"), SMTP_ARG_OK, 0, NULL, "u", "1.2.3.4" },
	{ MAIL, S("FROM:<u@example.org.>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@.example.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@a..example>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@exa-.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@-exa.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@ex_ample.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@x.example"), REFUSED(SMTP_ARG_PATH) },
	/* Address literals. */
	{ MAIL, S("FROM:<u@[192.0.2.1]>"), SMTP_ARG_OK,
	    SMTP_PATH_LITERAL, NULL, "u", "[192.0.2.1]" },
	{ MAIL, S("FROM:<u@[IPv6:2001:db8::1]>"), SMTP_ARG_OK,
	    SMTP_PATH_LITERAL, NULL, "u", "[IPv6:2001:db8::1]" },
	{ MAIL, S("FROM:<u@[ipv6:::ffff:192.0.2.1]>"), SMTP_ARG_OK,
	    SMTP_PATH_LITERAL, NULL, "u", "[ipv6:::ffff:192.0.2.1]" },
	{ MAIL, S("FROM:<u@[x-tag:any+thing]>"), SMTP_ARG_OK,
	    SMTP_PATH_LITERAL, NULL, "u", "[x-tag:any+thing]" },
	{ MAIL, S("FROM:<u@[300.1.1.1]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[1.2.3]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[1.2.3.4.5]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[1234.2.3.4]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[192.0.2.1>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@192.0.2.1]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[IPv6:2001:db8::g]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[IPv6:192.0.2.1]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[IPv6:" X10 X10 X10 X10 X10 "]>"),
	    REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[tag-:x]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[tag:]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[:x]>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[t:a\\b]>"), REFUSED(SMTP_ARG_PATH) },
	/* UTF-8 (RFC 6531); the parser only flags it. */
	{ MAIL, S("FROM:<\xc3\xbc@example.org>"), SMTP_ARG_OK,
	    SMTP_PATH_UTF8, NULL, "\xc3\xbc", "example.org" },
	{ RCPT, S("TO:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90."
	    "\xe5\xb9\xbf\xe5\x91\x8a>"), SMTP_ARG_OK, SMTP_PATH_UTF8, NULL,
	    "\xe7\x94\xa8\xe6\x88\xb7",
	    "\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a" },
	{ MAIL, S("FROM:<\"\xf0\x9f\x93\xa7 x\"@example.org>"), SMTP_ARG_OK,
	    SMTP_PATH_UTF8 | SMTP_PATH_QUOTED, NULL,
	    "\"\xf0\x9f\x93\xa7 x\"", "example.org" },
	{ MAIL, S("FROM:<\xc3@example.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\xc0\xaf@example.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\xe0\x80\xaf@example.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@\xed\xa0\x80.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<\xf4\x90\x80\x80@example.org>"),
	    REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@\xff.org>"), REFUSED(SMTP_ARG_PATH) },
	{ MAIL, S("FROM:<u@[\xc3\xbc:x]>"), REFUSED(SMTP_ARG_PATH) },
	/* What surrounds the path. */
	{ MAIL, S("FROM:user@example.org"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM:"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S(""), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM :<u@x.example>"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S(" FROM:<u@x.example>"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("TO:<u@x.example>"), REFUSED(SMTP_ARG_SYNTAX) },
	{ RCPT, S("FROM:<u@x.example>"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM:<u@x.example>x"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM:<u@x.example>>"), REFUSED(SMTP_ARG_SYNTAX) },
	{ MAIL, S("FROM:<<u@x.example>>"), REFUSED(SMTP_ARG_PATH) },
};

/* Returns 1 when every output of m points inside buf[0..len). */
static int
mailrcpt_inside(const struct smtp_mailrcpt *m, const char *buf, size_t len)
{
	const struct smtp_path	*p = &m->path;
	int			 i;

	if (!inside(p->raw, p->rawlen, buf, len) ||
	    !inside(p->route, p->routelen, buf, len) ||
	    !inside(p->mailbox, p->mailboxlen, buf, len) ||
	    !inside(p->local, p->locallen, buf, len) ||
	    !inside(p->domain, p->domainlen, buf, len))
		return 0;
	for (i = 0; i < m->nparams; i++)
		if (!inside(m->params[i].key, m->params[i].keylen, buf, len) ||
		    !inside(m->params[i].val, m->params[i].vallen, buf, len))
			return 0;
	return m->nparams >= 0 && m->nparams <= SMTP_PARAMS_MAX;
}

/* Any result will do on a prefix, as long as the outputs are inside it. */
static int
mailrcpt_prefix(const char *buf, size_t len, const void *test)
{
	struct smtp_mailrcpt	m;
	const int		*is_rcpt = test;

	smtp_mailrcpt_parse(buf, len, *is_rcpt, &m);
	return mailrcpt_inside(&m, buf, len);
}

/*
 * Returns 1 when a path parsed OK matches t: the mailbox runs from the
 * local part to the end of the domain, inside the brackets of raw.
 */
static int
path_matches(const struct smtp_path *p, const struct path_test *t)
{
	size_t	want;

	if (p->flags != t->flags ||
	    !field_is(p->route, p->routelen, t->route) ||
	    !field_is(p->local, p->locallen, t->local) ||
	    !field_is(p->domain, p->domainlen, t->domain) ||
	    p->rawlen < 2 || p->raw[0] != '<' || p->raw[p->rawlen - 1] != '>')
		return 0;
	if (t->local == NULL)
		return p->mailbox == NULL && p->mailboxlen == 0;
	want = p->locallen + (p->domain ? 1 + p->domainlen : 0);
	return p->mailbox == p->local && p->mailboxlen == want &&
	    p->mailbox + want + 1 == p->raw + p->rawlen;
}

static void
test_path(void)
{
	const struct path_test	*t;
	struct smtp_mailrcpt	 m;
	const char		*p;
	size_t			 i;
	enum smtp_arg_err	 err;

	for (i = 0; i < NELEM(path_tests); i++) {
		t = &path_tests[i];
		p = at_guard(t->arg, t->len);
		err = smtp_mailrcpt_parse(p, t->len, t->is_rcpt, &m);
		CHECKF(err == t->err && mailrcpt_inside(&m, p, t->len) &&
		    (err != SMTP_ARG_OK || path_matches(&m.path, t)),
		    "path %zu: err %d flags %#x", i, err, m.path.flags);
		CHECKF(each_prefix(t->arg, t->len, mailrcpt_prefix,
		    &t->is_rcpt) == 0, "path %zu prefixes", i);
	}
}

/*
 * Builds "FROM:<local@domain>" of the given part lengths and checks the
 * RFC 5321 limits: 64 octets of local part and 256 of path.
 */
static void
test_path_lengths(void)
{
	static const struct {
		size_t			local, domain;
		enum smtp_arg_err	err;
	} t[] = {
		{ 64, 11, SMTP_ARG_OK },
		{ 65, 11, SMTP_ARG_PATH },
		{ 64, 189, SMTP_ARG_OK },	/* a path of 256 */
		{ 64, 190, SMTP_ARG_PATH },
		{ 1, 252, SMTP_ARG_OK },
		{ 1, 253, SMTP_ARG_PATH },
	};
	struct smtp_mailrcpt	m;
	char			buf[300];
	size_t			i, j, n;

	for (i = 0; i < NELEM(t); i++) {
		n = 0;
		memcpy(buf, "FROM:<", 6);
		n += 6;
		memset(buf + n, 'l', t[i].local);
		n += t[i].local;
		buf[n++] = '@';
		/* Labels of 49 octets. */
		for (j = 0; j < t[i].domain; j++)
			buf[n++] = j % 50 == 49 && j + 1 < t[i].domain ?
			    '.' : 'd';
		buf[n++] = '>';
		CHECKF(smtp_mailrcpt_parse(at_guard(buf, n), n, MAIL, &m) ==
		    t[i].err, "path length %zu", i);
	}
}

static const struct param_test {
	int		 is_rcpt;
	int		 smtputf8;	/* the transaction's, for RCPT */
	const char	*arg;
	size_t		 len;
	enum smtp_arg_err err;		/* from parsing, else checking */
	struct smtp_mail_opts opts;	/* expected when err is OK */
} param_tests[] = {
	{ MAIL, 0, S("FROM:<a@b>"), SMTP_ARG_OK, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> "), SMTP_ARG_OK, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=10240000"), SMTP_ARG_OK,
	    { .size = 10240000 } },
	{ MAIL, 0, S("FROM:<> size=0"), SMTP_ARG_OK, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=18446744073709551615"), SMTP_ARG_OK,
	    { .size = UINT64_MAX } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=99999999999999999999"), SMTP_ARG_OK,
	    { .size = UINT64_MAX } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=123456789012345678901"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=12a"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=-1"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> BODY=7BIT"), SMTP_ARG_OK, { .body = 7 } },
	{ MAIL, 0, S("FROM:<a@b> body=8bitmime"), SMTP_ARG_OK, { .body = 8 } },
	{ MAIL, 0, S("FROM:<a@b> BODY=BINARYMIME"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> BODY"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SMTPUTF8"), SMTP_ARG_OK, { .smtputf8 = 1 } },
	{ MAIL, 0, S("FROM:<a@b> SMTPUTF8=yes"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> RET=FULL"), SMTP_ARG_OK, { .ret = 1 } },
	{ MAIL, 0, S("FROM:<a@b> RET=hdrs"), SMTP_ARG_OK, { .ret = 2 } },
	{ MAIL, 0, S("FROM:<a@b> RET=ALL"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=QQ+2B+3Dx"), SMTP_ARG_OK,
	    { .envid = 1 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=" X100), SMTP_ARG_OK, { .envid = 1 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=" X100 "x"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=a+2b"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=a+2"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=a+"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> ENVID=\xc3\xa9"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS "
	    "ENVID=QQ"), SMTP_ARG_OK, { .size = 100, .body = 8,
	    .smtputf8 = 1, .ret = 2, .envid = 1 } },
	{ MAIL, 0, S("FROM:<a@b>   SIZE=1   BODY=7BIT   "), SMTP_ARG_OK,
	    { .size = 1, .body = 7 } },
	{ MAIL, 0, S("FROM:<a@b> NOTIFY=NEVER"),
	    SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> FOO=bar"), SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> X-FOO"), SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=1 SIZE=2"), SMTP_ARG_PARAM_DUP, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SMTPUTF8 smtputf8"),
	    SMTP_ARG_PARAM_DUP, { 0 } },
	/* Parameter syntax. */
	{ MAIL, 0, S("FROM:<a@b> SIZE="), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> =1"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> -X"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SI_ZE=1"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> SIZE=1=2"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> X=a\tb"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> X=\xc3"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> \xc3\xa9"), SMTP_ARG_PARAM_SYNTAX, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> A B C D E F G H I J K L M N O P"),
	    SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> A B C D E F G H I J K L M N O P Q"),
	    SMTP_ARG_TOO_MANY, { 0 } },
	{ MAIL, 0, S("FROM:<a@b> A B C D E F G H I J K L M N O P Q R="),
	    SMTP_ARG_PARAM_SYNTAX, { 0 } },
	/* UTF-8 paths need SMTPUTF8. */
	{ MAIL, 0, S("FROM:<\xc3\xbc@b>"), SMTP_ARG_UTF8, { 0 } },
	{ MAIL, 1, S("FROM:<\xc3\xbc@b>"), SMTP_ARG_UTF8, { 0 } },
	{ MAIL, 0, S("FROM:<\xc3\xbc@b> SMTPUTF8"), SMTP_ARG_OK,
	    { .smtputf8 = 1 } },
	{ RCPT, 0, S("TO:<a@\xc3\xbc>"), SMTP_ARG_UTF8, { 0 } },
	{ RCPT, 1, S("TO:<a@\xc3\xbc>"), SMTP_ARG_OK, { 0 } },
	{ RCPT, 1, S("TO:<a@b> SMTPUTF8"), SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	/* RCPT parameters. */
	{ RCPT, 0, S("TO:<a@b> NOTIFY=NEVER"), SMTP_ARG_OK, { .notify = 1 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=SUCCESS,FAILURE,DELAY"), SMTP_ARG_OK,
	    { .notify = 1 } },
	{ RCPT, 0, S("TO:<a@b> notify=delay,success"), SMTP_ARG_OK,
	    { .notify = 1 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=NEVER,SUCCESS"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=DELAY,NEVER"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=SUCCESS,SUCCESS"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=SUCCESS,"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=,DELAY"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=SOMETIMES"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822;a+2Bb@c.example"), SMTP_ARG_OK,
	    { .orcpt = 1 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822;" X100 X100 X100 X100
	    X10 X10 X10 X10 X10 X10 X10 X10 X10 "xxx"), SMTP_ARG_OK,
	    { .orcpt = 1 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822;" X100 X100 X100 X100
	    X10 X10 X10 X10 X10 X10 X10 X10 X10 "xxxx"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=;a@b"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822;"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=r(c;a@b"), SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> ORCPT=rfc822;a+zzb"),
	    SMTP_ARG_PARAM_VALUE, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=NEVER notify=DELAY"),
	    SMTP_ARG_PARAM_DUP, { 0 } },
	{ RCPT, 0, S("TO:<a@b> SIZE=1"), SMTP_ARG_PARAM_UNKNOWN, { 0 } },
	{ RCPT, 0, S("TO:<a@b> NOTIFY=NEVER ORCPT=rfc822;a@b"), SMTP_ARG_OK,
	    { .notify = 1, .orcpt = 1 } },
};

/* Returns 1 when both option sets are equal. */
static int
opts_eq(const struct smtp_mail_opts *a, const struct smtp_mail_opts *b)
{
	return a->size == b->size && a->body == b->body &&
	    a->smtputf8 == b->smtputf8 && a->ret == b->ret &&
	    a->envid == b->envid && a->notify == b->notify &&
	    a->orcpt == b->orcpt;
}

static void
test_params(void)
{
	static const char	 split[] =
	    "FROM:<a@b>  SIZE=10 SMTPUTF8  X-Y=z\xc3\xa9 ";
	const struct param_test	*t;
	struct smtp_mailrcpt	 m;
	struct smtp_mail_opts	 o;
	const char		*p;
	size_t			 i;
	enum smtp_arg_err	 err;

	for (i = 0; i < NELEM(param_tests); i++) {
		t = &param_tests[i];
		p = at_guard(t->arg, t->len);
		memset(&o, 0, sizeof(o));
		err = smtp_mailrcpt_parse(p, t->len, t->is_rcpt, &m);
		if (err == SMTP_ARG_OK)
			err = smtp_params_check(&m, t->is_rcpt, t->smtputf8,
			    &o);
		CHECKF(err == t->err && mailrcpt_inside(&m, p, t->len) &&
		    (err != SMTP_ARG_OK || opts_eq(&o, &t->opts)),
		    "params %zu: err %d", i, err);
		CHECKF(each_prefix(t->arg, t->len, mailrcpt_prefix,
		    &t->is_rcpt) == 0, "params %zu prefixes", i);
	}

	/* How a list is split into keys and values. */
	p = at_guard(S(split));
	CHECK(smtp_mailrcpt_parse(p, sizeof(split) - 1, MAIL, &m) ==
	    SMTP_ARG_OK);
	CHECK(m.nparams == 3);
	CHECK(field_is(m.params[0].key, m.params[0].keylen, "SIZE"));
	CHECK(field_is(m.params[0].val, m.params[0].vallen, "10"));
	CHECK(field_is(m.params[1].key, m.params[1].keylen, "SMTPUTF8"));
	CHECK(m.params[1].val == NULL && m.params[1].vallen == 0);
	CHECK(field_is(m.params[2].key, m.params[2].keylen, "X-Y"));
	CHECK(field_is(m.params[2].val, m.params[2].vallen, "z\xc3\xa9"));
	CHECK(m.path.flags == 0);
}

/* ---- DATA scanner -------------------------------------------------------- */

static const struct dscan_test {
	const char	*in;
	size_t		 len;
	size_t		 consumed;	/* expected, one call */
	size_t		 fwd;		/* expected clean prefix */
	int		 done;		/* expected */
	int		 bad;		/* expected first offence */
} dscan_tests[] = {
	{ S(""), 0, 0, 0, 0 },
	{ S(".\r\n"), 3, 3, 1, 0 },
	{ S("\r\n.\r\n"), 5, 5, 1, 0 },
	{ S("\r\n\r\n.\r\n"), 7, 7, 1, 0 },
	{ S("Subject: x\r\n\r\nbody\r\n.\r\n"), 23, 23, 1, 0 },
	{ S("a\r\n.\r\nQUIT\r\n"), 6, 6, 1, 0 },
	{ S("..foo\r\n"), 7, 7, 0, 0 },
	{ S("..\r\n"), 4, 4, 0, 0 },
	{ S("a\r\n..\r\n.\r\n"), 10, 10, 1, 0 },
	{ S("a\r\n.x\r\n"), 7, 7, 0, 0 },
	{ S("a.\r\n"), 4, 4, 0, 0 },
	/* A final CR is held back until its successor is known. */
	{ S("abc\r"), 3, 3, 0, 0 },
	{ S("\r"), 0, 0, 0, 0 },
	{ S(".\r"), 1, 1, 0, 0 },
	{ S("x\r\n.\r"), 4, 4, 0, 0 },
	/* The smuggling family: none of these ends the message. */
	{ S("a\n.\nb"), 5, 1, 0, SMTP_DSCAN_BARE_LF },
	{ S("a\n.\r\nb"), 6, 1, 0, SMTP_DSCAN_BARE_LF },
	{ S("a\r.\r\nb"), 6, 1, 0, SMTP_DSCAN_BARE_CR },
	{ S("a\r\n.\rb"), 6, 4, 0, SMTP_DSCAN_BARE_CR },
	{ S("a\r\n.\r\r\nb"), 8, 4, 0, SMTP_DSCAN_BARE_CR },
	{ S("a\r\n.\nb"), 6, 4, 0, SMTP_DSCAN_BARE_LF },
	{ S("\n.\n"), 3, 0, 0, SMTP_DSCAN_BARE_LF },
	{ S("\n.\r\n"), 4, 0, 0, SMTP_DSCAN_BARE_LF },
	{ S("\r.\r\n"), 4, 0, 0, SMTP_DSCAN_BARE_CR },
	{ S(".\n"), 2, 1, 0, SMTP_DSCAN_BARE_LF },
	{ S("a\rb\r\n"), 5, 1, 0, SMTP_DSCAN_BARE_CR },
	{ S("a\nb\r\n"), 5, 1, 0, SMTP_DSCAN_BARE_LF },
	{ S("ab\r\r\n"), 5, 2, 0, SMTP_DSCAN_BARE_CR },
	{ S("a\n\r\n.\r\n"), 7, 1, 1, SMTP_DSCAN_BARE_LF },
	/* ... and the real terminator after them still does. */
	{ S("a\n.\r\nb\r\n.\r\n"), 11, 1, 1, SMTP_DSCAN_BARE_LF },
	{ S("a\r.\r\nb\r\n.\r\n"), 11, 1, 1, SMTP_DSCAN_BARE_CR },
	{ S("a\r\n.\rb\r\n.\r\n"), 11, 4, 1, SMTP_DSCAN_BARE_CR },
	{ S("a\r\n.\nb\r\n.\r\nx"), 11, 4, 1, SMTP_DSCAN_BARE_LF },
	{ S("a\r\n.\r\r\n.\r\n"), 10, 4, 1, SMTP_DSCAN_BARE_CR },
	{ S("a\nb\rc\r\n.\r\n"), 10, 1, 1, SMTP_DSCAN_BARE_LF },
};

/* The outcome of feeding one input to a fresh scanner. */
struct dscan_res {
	size_t	consumed;	/* octets consumed in all */
	size_t	fwd;		/* octets forwardable in all */
	int	done;		/* the terminator was consumed */
	int	bad;		/* smtp_dscan.bad at the end */
	int	broken;		/* some call broke the contract */
};

/*
 * Feeds in[0..len) to a fresh scanner in pieces ending at cuts[0..ncuts),
 * then the rest, as a caller does: octets not consumed stay in its buffer
 * and go again, in front of the next piece.  Each call sees its buffer at
 * the guard page.
 */
static void
dscan_feed(const char *in, size_t len, const size_t *cuts, size_t ncuts,
    struct dscan_res *r)
{
	struct smtp_dscan	s;
	char			buf[DSCAN_MAX];
	size_t			have = 0, given = 0, upto, n, fwd, k;
	int			done = 0;

	memset(&s, 0, sizeof(s));
	memset(r, 0, sizeof(*r));
	for (k = 0; k <= ncuts && !done; k++) {
		upto = k < ncuts ? cuts[k] : len;
		memcpy(buf + have, in + given, upto - given);
		have += upto - given;
		given = upto;
		n = smtp_dscan(&s, at_guard(buf, have), have, &fwd, &done);
		/*
		 * Only a final CR may be held back, and nothing is forwardable
		 * once an octet was not.
		 */
		if (n > have || fwd > n || (fwd > 0 && r->fwd < r->consumed) ||
		    (!done && n < have && (n + 1 != have || buf[n] != '\r')))
			r->broken = 1;
		r->consumed += n;
		r->fwd += fwd;
		have -= n;
		memmove(buf, buf + n, have);
	}
	r->done = done;
	r->bad = s.bad;
	if (s.bytes != r->consumed)
		r->broken = 1;
}

/* Returns 1 when both outcomes are equal and unbroken. */
static int
dscan_same(const struct dscan_res *a, const struct dscan_res *b)
{
	return !a->broken && !b->broken && a->consumed == b->consumed &&
	    a->fwd == b->fwd && a->done == b->done && a->bad == b->bad;
}

static void
test_dscan(void)
{
	const struct dscan_test	*t;
	struct dscan_res	 want, one, r;
	struct smtp_dscan	 s;
	size_t			 cuts[DSCAN_MAX], i, k, fwd;
	int			 done, splits;

	for (i = 0; i < NELEM(dscan_tests); i++) {
		t = &dscan_tests[i];
		if (t->len >= DSCAN_MAX)
			abort();
		want = (struct dscan_res){ t->consumed, t->fwd, t->done,
		    t->bad, 0 };
		dscan_feed(t->in, t->len, NULL, 0, &one);
		CHECKF(dscan_same(&one, &want), "dscan %zu: consumed %zu, "
		    "fwd %zu, done %d, bad %d", i, one.consumed, one.fwd,
		    one.done, one.bad);
		for (k = 0, splits = 0; k <= t->len; k++) {
			cuts[0] = k;
			dscan_feed(t->in, t->len, cuts, 1, &r);
			splits += !dscan_same(&r, &want);
		}
		CHECKF(splits == 0, "dscan %zu: %d splits differ", i, splits);
		for (k = 0; k < t->len; k++)
			cuts[k] = k;
		dscan_feed(t->in, t->len, cuts, t->len, &r);
		CHECKF(dscan_same(&r, &want), "dscan %zu byte by byte", i);
	}

	/* After the terminator nothing more is taken until a reset. */
	memset(&s, 0, sizeof(s));
	CHECK(smtp_dscan(&s, S(".\r\nx\r\n"), &fwd, &done) == 3 && done);
	CHECK(smtp_dscan(&s, S("x\r\n"), &fwd, &done) == 0 && done &&
	    fwd == 0 && s.bytes == 3);
	memset(&s, 0, sizeof(s));
	CHECK(smtp_dscan(&s, S("x\r\n"), &fwd, &done) == 3 && !done &&
	    fwd == 3);
}

/* ---- Replies ------------------------------------------------------------- */

static const struct reply_test {
	const char	*in;
	size_t		 len;
	size_t		 max;
	long		 ret;		/* expected */
	int		 code;		/* expected when ret > 0 */
} reply_tests[] = {
	{ S("250 OK\r\n"), 512, 8, 250 },
	{ S("250 OK\n"), 512, 7, 250 },
	{ S("220\r\n"), 512, 5, 220 },
	{ S("354\n"), 512, 4, 354 },
	{ S("554 5.7.1 no\r\n"), 512, 14, 554 },
	{ S("250-a\r\n250-b\r\n250 c\r\n"), 512, 21, 250 },
	{ S("250-a\n250 c\nQUIT"), 512, 12, 250 },
	{ S("421 bye\r\n250 OK\r\n"), 512, 9, 421 },
	{ S("250 text\rwith CR\r\n"), 512, 18, 250 },
	{ S("250 OK\r\n"), 8, 8, 250 },
	{ S("250 OK\r\n"), 7, -1, 0 },
	{ S("250 OK"), 6, -1, 0 },
	{ S("250 OK"), 7, 0, 0 },
	{ S("250-a\r\n250 b\r\n"), 10, -1, 0 },
	{ S("250-a\r\n250"), 512, 0, 0 },
	{ S("25"), 512, 0, 0 },
	{ S(""), 512, 0, 0 },
	{ S("250-a\r\n251 c\r\n"), 512, -1, 0 },
	{ S("250-a\r\n25x c\r\n"), 512, -1, 0 },
	{ S("hello\r\n"), 512, -1, 0 },
	{ S("X"), 512, -1, 0 },
	{ S("199 x\r\n"), 512, -1, 0 },
	{ S("600 x\r\n"), 512, -1, 0 },
	{ S("2a0 x\r\n"), 512, -1, 0 },
	{ S("250x\r\n"), 512, -1, 0 },
	{ S("250\rx\n"), 512, -1, 0 },
	{ S("250\t\r\n"), 512, -1, 0 },
	{ S("\r\n"), 512, -1, 0 },
};

/*
 * A prefix of a good reply is incomplete until the reply is whole; a
 * prefix of a bad one is incomplete or bad.
 */
static int
reply_prefix(const char *buf, size_t len, const void *test)
{
	const struct reply_test	*t = test;
	long			 r;
	int			 code;

	r = smtp_reply_parse(buf, len, t->max, &code);
	if (t->ret <= 0)
		return r <= 0;
	return r == (len < (size_t)t->ret ? 0 : t->ret);
}

static void
test_reply(void)
{
	const struct reply_test	*t;
	size_t			 i;
	long			 r;
	int			 code;

	for (i = 0; i < NELEM(reply_tests); i++) {
		t = &reply_tests[i];
		r = smtp_reply_parse(at_guard(t->in, t->len), t->len, t->max,
		    &code);
		CHECKF(r == t->ret && (r <= 0 || code == t->code),
		    "reply %zu: %ld, code %d", i, r, code);
		CHECKF(each_prefix(t->in, t->len, reply_prefix, t) == 0,
		    "reply %zu prefixes", i);
	}

	/* Lines of SMTP_REPLY_LINE_MAX octets pass; one more is an error,
	 * also before its line end has come. */
	{
		static char	long_[2 * SMTP_REPLY_LINE_MAX];
		size_t		n = SMTP_REPLY_LINE_MAX;

		memset(long_, 'x', sizeof(long_));
		memcpy(long_, "250-", 4);
		memcpy(long_ + n - 2, "\r\n", 2);
		memcpy(long_ + n, "250 ", 4);
		memcpy(long_ + 2 * n - 2, "\r\n", 2);
		CHECK(smtp_reply_parse(long_, 2 * n, 2048, &code) ==
		    (long)(2 * n) && code == 250);
		long_[3] = ' ';
		CHECK(smtp_reply_parse(long_, n - 1, 2048, &code) == 0);
		CHECK(smtp_reply_parse(long_, n, 2048, &code) == (long)n);
		long_[n - 2] = long_[n - 1] = 'x';
		CHECK(smtp_reply_parse(long_, n, 2048, &code) == 0);
		CHECK(smtp_reply_parse(long_, n + 1, 2048, &code) == -1);
		long_[n] = '\n';
		CHECK(smtp_reply_parse(long_, n + 1, 2048, &code) == -1);
	}
}

static const struct ehlo_test {
	const char	*in;
	size_t		 len;
	unsigned	 ext;		/* expected SMTP_EXT_* */
	uint64_t	 size;		/* expected */
	unsigned	 xclient;	/* expected SMTP_XCLIENT_* */
} ehlo_tests[] = {
	{ S("250-mx.example.org\r\n"
	    "250-PIPELINING\r\n"
	    "250-SIZE 10240000\r\n"
	    "250-VRFY\r\n"
	    "250-ETRN\r\n"
	    "250-STARTTLS\r\n"
	    "250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN "
	    "DESTADDR DESTPORT\r\n"
	    "250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n"
	    "250-ENHANCEDSTATUSCODES\r\n"
	    "250-8BITMIME\r\n"
	    "250-DSN\r\n"
	    "250-SMTPUTF8\r\n"
	    "250 CHUNKING\r\n"),
	    SMTP_EXT_PIPELINING | SMTP_EXT_SIZE | SMTP_EXT_STARTTLS |
	    SMTP_EXT_XCLIENT | SMTP_EXT_XFORWARD | SMTP_EXT_ENHANCED |
	    SMTP_EXT_8BITMIME | SMTP_EXT_DSN | SMTP_EXT_SMTPUTF8 |
	    SMTP_EXT_CHUNKING, 10240000,
	    SMTP_XCLIENT_NAME | SMTP_XCLIENT_ADDR | SMTP_XCLIENT_PROTO |
	    SMTP_XCLIENT_HELO | SMTP_XCLIENT_PORT | SMTP_XCLIENT_LOGIN },
	{ S("250 mx.example.org\r\n"), 0, 0, 0 },
	{ S("250-PIPELINING\r\n250 DSN\r\n"), SMTP_EXT_DSN, 0, 0 },
	{ S("250-mx\r\n250-size\r\n250 pipelining\r\n"),
	    SMTP_EXT_SIZE | SMTP_EXT_PIPELINING, 0, 0 },
	{ S("250-mx\n250-SIZE abc\n250 8BITMIME\n"),
	    SMTP_EXT_SIZE | SMTP_EXT_8BITMIME, 0, 0 },
	{ S("250-mx\r\n250-SIZE  52428800 \r\n250 OK\r\n"),
	    SMTP_EXT_SIZE, 52428800, 0 },
	{ S("250-mx\r\n250-xclient  addr   name\r\n250 X"),
	    SMTP_EXT_XCLIENT, 0, SMTP_XCLIENT_ADDR | SMTP_XCLIENT_NAME },
	{ S("250-mx\r\n250-SIZEX 5\r\n250-AUTH PLAIN LOGIN\r\n250 XCLIENTS"),
	    0, 0, 0 },
	{ S("250-mx\r\n250-SIZE\r\n25"), SMTP_EXT_SIZE, 0, 0 },
	{ S("250 mx"), 0, 0, 0 },
	{ S(""), 0, 0, 0 },
};

/* Any result will do on a prefix. */
static int
ehlo_prefix(const char *buf, size_t len, const void *test)
{
	uint64_t	size;
	unsigned	xclient;

	(void)test;
	smtp_ehlo_parse(buf, len, &size, &xclient);
	return 1;
}

static void
test_ehlo(void)
{
	const struct ehlo_test	*t;
	size_t			 i;
	uint64_t		 size;
	unsigned		 ext, xclient;

	for (i = 0; i < NELEM(ehlo_tests); i++) {
		t = &ehlo_tests[i];
		ext = smtp_ehlo_parse(at_guard(t->in, t->len), t->len, &size,
		    &xclient);
		CHECKF(ext == t->ext && size == t->size &&
		    xclient == t->xclient, "ehlo %zu: %#x %ju %#x", i, ext,
		    (uintmax_t)size, xclient);
		CHECKF(each_prefix(t->in, t->len, ehlo_prefix, t) == 0,
		    "ehlo %zu prefixes", i);
	}
}

static const struct xtext_test {
	const char	*src;
	size_t		 len;
	size_t		 dstlen;
	const char	*want;		/* what fits of the encoding */
	size_t		 ret;		/* expected full length */
} xtext_tests[] = {
	{ S("abc"), 16, "abc", 3 },
	{ S(""), 4, "", 0 },
	{ S(""), 0, "", 0 },
	{ S("a+b=c"), 16, "a+2Bb+3Dc", 9 },
	{ S("a b\x01\xff"), 16, "a+20b+01+FF", 11 },
	{ S("<a@b.example>"), 16, "<a@b.example>", 13 },
	{ S("abc"), 4, "abc", 3 },
	{ S("abc"), 3, "abc", 3 },
	{ S("a+b"), 3, "a+2", 5 },
	{ S("a+b"), 0, "", 5 },
};

/*
 * The output ends at the guard page, so a write past dstlen faults; a NUL
 * follows when there is room.
 */
static void
test_xtext(void)
{
	const struct xtext_test	*t;
	char			*dst;
	size_t			 i, n;

	for (i = 0; i < NELEM(xtext_tests); i++) {
		t = &xtext_tests[i];
		dst = guard.end - t->dstlen;
		memset(dst, '#', t->dstlen);
		n = smtp_xtext_encode(dst, t->dstlen, t->src, t->len);
		CHECKF(n == t->ret && memcmp(dst, t->want, strlen(t->want)) ==
		    0 && (n >= t->dstlen || dst[n] == '\0'), "xtext %zu: %zu",
		    i, n);
	}
}

int
main(void)
{
	guard_init();
	test_cmd();
	test_line();
	test_path();
	test_path_lengths();
	test_params();
	test_dscan();
	test_reply();
	test_ehlo();
	test_xtext();
	TEST_DONE();
}
