/*
 * testenv.h: a filter environment built from a session described in a
 * test table, for the unit tests of the filters and the rule index.
 */
#ifndef SMTPGATE_TESTENV_H
#define SMTPGATE_TESTENV_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "smtp_parse.h"
#include "test.h"

/* Parses "<path>" as a MAIL (is_rcpt 0) or RCPT argument into m, using buf
 * (size bytes) as its storage; a bad path is a bug in the test: exit 2. */
static inline void
test_path(const char *path, int is_rcpt, char *buf, size_t size,
    struct smtp_mailrcpt *m)
{
	int n;

	n = snprintf(buf, size, "%s%s", is_rcpt ? "TO:" : "FROM:", path);
	if (n < 0 || (size_t)n >= size ||
	    smtp_mailrcpt_parse(buf, (size_t)n, is_rcpt, m) != SMTP_ARG_OK) {
		fprintf(stderr, "bad test path %s\n", path);
		exit(2);
	}
}

/* A session as a test table describes it. */
struct test_sess {
	const char	*client;	/* address text (NULL: "192.0.2.1") */
	const char	*name;		/* reverse name (NULL: "unknown") */
	const char	*helo;		/* HELO argument (NULL: "") */
	const char	*from;		/* reverse path, "<a@b>", or NULL */
	const char	*rcpt;		/* forward path, or NULL */
	const char	*header;	/* "Name: value", unfolded, or NULL */
	int		 auth;		/* authenticated */
};

/* A filter environment and the storage it points to. */
struct test_envbuf {
	struct sockaddr_storage	 ss;
	struct smtp_mailrcpt	 from, rcpt;
	char			 fbuf[600], rbuf[600];
	struct flt_env		 env;
};

/* Fills b->env for session s under pol, with the PCRE2 scratch sc. */
static inline const struct flt_env *
test_env(struct test_envbuf *b, const struct policy *pol,
    struct pattern_scratch *sc, const struct test_sess *s)
{
	const char *client = s->client ? s->client : "192.0.2.1";

	memset(b, 0, sizeof(*b));
	test_addr(client, &b->ss);
	b->env.pol = pol;
	b->env.scratch = sc;
	b->env.session = "test";
	b->env.hostname = "gate.example.test";
	b->env.addr = (const struct sockaddr *)&b->ss;
	b->env.addr_text = client;
	b->env.port = 40000;
	b->env.client_name = s->name ? s->name : "unknown";
	b->env.helo = s->helo ? s->helo : "";
	b->env.authenticated = s->auth;
	if (s->from != NULL) {
		test_path(s->from, 0, b->fbuf, sizeof(b->fbuf), &b->from);
		b->env.sender = &b->from.path;
	}
	if (s->rcpt != NULL) {
		test_path(s->rcpt, 1, b->rbuf, sizeof(b->rbuf), &b->rcpt);
		b->env.rcpt = &b->rcpt.path;
	}
	if (s->header != NULL) {
		b->env.header = s->header;
		b->env.headerlen = strlen(s->header);
	}
	return &b->env;
}

#endif /* SMTPGATE_TESTENV_H */
