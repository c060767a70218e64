/*
 * explain.c: smtpgate -c FILE --explain client=IP [name=NAME] [helo=NAME]
 * [from=ADDR] [rcpt=ADDR ...] [header="Name: value" ...]
 *
 * Runs the policy's filters stage by stage on a session described on the
 * command line, without any network, and prints which filter (and rule)
 * decided at each stage and the reply a client would get.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "explain.h"
#include "filter.h"
#include "log.h"
#include "smtp_reply.h"

#define EXPLAIN_MAX	32	/* rcpt= and header= values at most */

struct explain_args {
	const char	*client;		/* client= */
	const char	*name;			/* name= (reverse name) */
	const char	*helo;			/* helo= */
	const char	*from;			/* from= */
	const char	*rcpt[EXPLAIN_MAX];	/* rcpt= */
	int		 nrcpt;
	const char	*header[EXPLAIN_MAX];	/* header= */
	int		 nheader;
};

static const char *const explain_verdicts[] = {
	[FLT_CONTINUE] = "continue", [FLT_ACCEPT] = "accept",
	[FLT_REJECT] = "reject", [FLT_TEMPFAIL] = "tempfail",
	[FLT_REFUSE] = "refuse", [FLT_PENDING] = "pending",
};

static int
explain_parse(int argc, char **argv, struct explain_args *a)
{
	int	 i;
	char	*eq;

	memset(a, 0, sizeof(*a));
	for (i = 0; i < argc; i++) {
		if ((eq = strchr(argv[i], '=')) == NULL)
			goto bad;
		*eq++ = '\0';
		if (strcmp(argv[i], "client") == 0)
			a->client = eq;
		else if (strcmp(argv[i], "name") == 0)
			a->name = eq;
		else if (strcmp(argv[i], "helo") == 0)
			a->helo = eq;
		else if (strcmp(argv[i], "from") == 0)
			a->from = eq;
		else if (strcmp(argv[i], "rcpt") == 0 && a->nrcpt < EXPLAIN_MAX)
			a->rcpt[a->nrcpt++] = eq;
		else if (strcmp(argv[i], "header") == 0 &&
		    a->nheader < EXPLAIN_MAX)
			a->header[a->nheader++] = eq;
		else
			goto bad;
	}
	if (a->client != NULL)
		return 0;
	fprintf(stderr, "smtpgate: --explain needs client=ADDRESS\n");
	return -1;
bad:
	fprintf(stderr, "smtpgate: --explain: bad argument \"%s\" (client=, "
	    "name=, helo=, from=, rcpt=, header=)\n", argv[i]);
	return -1;
}

/*
 * Parses an address given as "a@b", "<a@b>" or "" into out, using buf
 * (size bytes) as storage.  Returns 0, or -1 with a message printed.
 */
static int
explain_path(const char *what, const char *addr, int is_rcpt, char *buf,
    size_t size, struct smtp_mailrcpt *out)
{
	int n;

	n = snprintf(buf, size, addr[0] == '<' ? "%s%s" : "%s<%s>",
	    is_rcpt ? "TO:" : "FROM:", addr);
	if (n < 0 || (size_t)n >= size ||
	    smtp_mailrcpt_parse(buf, (size_t)n, is_rcpt, out) != SMTP_ARG_OK) {
		printf("%s %s: not a valid RFC 5321 path: the client would "
		    "get a 501\n", what, addr);
		return -1;
	}
	return 0;
}

static int
explain_refusing(enum flt_verdict v)
{
	return v == FLT_REJECT || v == FLT_TEMPFAIL || v == FLT_REFUSE;
}

/* Names the rate limits that would be checked and counted at stage st. */
static void
explain_ratelimits(enum flt_stage st, const struct flt_env *env)
{
	static const char *const counts[] = {
		"connections", "messages", "recipients", "bytes"
	};
	static const char *const keys[] = {
		"client_ip", "client_net", "helo", "sender", "sender_domain",
		"recipient", "recipient_domain", "auth_user"
	};
	const struct pol_ratelimit	*rl;
	size_t				 i;

	for (i = 0; i < env->pol->nratelimits; i++) {
		rl = &env->pol->ratelimits[i];
		if (flt_ratelimit_stage(rl) != st ||
		    !flt_match(&rl->rule.match, env))
			continue;
		printf("  rate limit %s: %llu %s per %llu ms per %s (counted "
		    "at run time)\n", rl->rule.name,
		    (unsigned long long)rl->limit, counts[rl->count],
		    (unsigned long long)rl->window_ms, keys[rl->key]);
	}
}

/*
 * Runs one stage, filter by filter, printing each verdict.  Returns the
 * stage's verdict; *rewrite gathers FLT_RW_* bits.
 */
static enum flt_verdict
explain_stage(enum flt_stage st, const struct flt_env *env, unsigned *rewrite)
{
	const struct policy	*pol = env->pol;
	const struct flt_def	*f;
	struct flt_result	 r;
	enum flt_verdict	 v = FLT_CONTINUE;
	size_t			 i, n;

	n = pol->filters != NULL ? pol->nfilters : flt_ntable;
	for (i = 0; i < n; i++) {
		f = pol->filters != NULL ? pol->filters[i] : flt_table[i];
		if (!(f->stages & FLT_STAGE(st)))
			continue;
		memset(&r, 0, sizeof(r));
		v = f->hook(st, env, &r);
		*rewrite |= r.rewrite;
		printf("  %-14s %s", f->name, explain_verdicts[v]);
		if (r.rule != NULL)
			printf(v == FLT_CONTINUE ? " (rule %s matched: warn)" :
			    " (rule %s)", r.rule);
		if (r.rewrite & FLT_RW_STRIP_ROUTE)
			printf(" (source route stripped)");
		if (explain_refusing(v))
			printf(": \"%d %s\"", r.code, r.reply);
		printf("\n");
		if (v != FLT_CONTINUE)
			break;
	}
	explain_ratelimits(st, env);
	return v;
}

/* Prints what the client would get after stage st ended with v. */
static int
explain_outcome(enum flt_stage st, enum flt_verdict v, const char *ok)
{
	switch (v) {
	case FLT_REFUSE:
		printf("  => session refused: %s, then 503 5.5.1 to every "
		    "command but QUIT\n", st == FLT_CONNECT ? "greeting above" :
		    "reply above");
		return -1;
	case FLT_REJECT:
	case FLT_TEMPFAIL:
		printf("  => refused with the reply above\n");
		return st == FLT_CONNECT ? -1 : 0;
	case FLT_PENDING:
		printf("  => decided by an asynchronous filter at run time\n");
		return 0;
	default:
		printf("  => %s\n", ok);
		return 0;
	}
}

int
explain_run(const struct config *cfg, int argc, char **argv)
{
	struct explain_args	 a;
	struct flt_env		 env;
	struct sockaddr_storage	 ss;
	struct smtp_mailrcpt	 from, rcpt;
	char			 fbuf[600], rbuf[600];
	enum flt_verdict	 v;
	unsigned		 rw;
	int			 i;

	if (explain_parse(argc, argv, &a) < 0)
		return 2;
	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, a.client,
	    &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, a.client,
	    &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else {
		fprintf(stderr, "smtpgate: --explain: client=%s is not an IP "
		    "address\n", a.client);
		return 2;
	}
	memset(&env, 0, sizeof(env));
	env.pol = cfg->policy;
	env.scratch = pattern_scratch_new();
	env.session = "explain";
	env.hostname = cfg->hostname;
	env.addr = (const struct sockaddr *)&ss;
	env.addr_text = a.client;
	env.client_name = a.name ? a.name : "unknown";
	env.helo = a.helo ? a.helo : "";

	printf("policy: %s\n", cfg->policy->path ? cfg->policy->path :
	    "(none: the backend decides everything)");
	printf("stage connect: client %s, name %s\n", a.client,
	    env.client_name);
	rw = 0;
	v = explain_stage(FLT_CONNECT, &env, &rw);
	if (explain_outcome(FLT_CONNECT, v, "greeting: 220") < 0)
		goto out;
	if (a.helo != NULL) {
		printf("stage helo: %s\n", a.helo);
		v = explain_stage(FLT_HELO, &env, &rw);
		if (explain_outcome(FLT_HELO, v, "250") < 0)
			goto out;
	}
	if (a.from == NULL)
		goto out;
	if (explain_path("from", a.from, 0, fbuf, sizeof(fbuf), &from) < 0)
		goto out;
	env.sender = &from.path;
	printf("stage mail: %.*s\n", (int)from.path.rawlen, from.path.raw);
	rw = 0;
	v = explain_stage(FLT_MAIL, &env, &rw);
	if ((rw & FLT_RW_STRIP_ROUTE) && !explain_refusing(v))
		printf("  forwarded as <%.*s>\n", (int)from.path.mailboxlen,
		    from.path.mailbox);
	if (explain_outcome(FLT_MAIL, v, "MAIL forwarded; the backend's "
	    "reply decides") < 0 || explain_refusing(v))
		goto out;
	for (i = 0; i < a.nrcpt; i++) {
		if (explain_path("rcpt", a.rcpt[i], 1, rbuf, sizeof(rbuf),
		    &rcpt) < 0)
			continue;
		env.rcpt = &rcpt.path;
		printf("stage rcpt: %.*s\n", (int)rcpt.path.rawlen,
		    rcpt.path.raw);
		rw = 0;
		v = explain_stage(FLT_RCPT, &env, &rw);
		if ((rw & FLT_RW_STRIP_ROUTE) && !explain_refusing(v))
			printf("  forwarded as <%.*s>\n",
			    (int)rcpt.path.mailboxlen, rcpt.path.mailbox);
		if (explain_outcome(FLT_RCPT, v, "RCPT forwarded; the "
		    "backend's reply decides") < 0)
			goto out;
	}
	env.rcpt = NULL;
	for (i = 0; i < a.nheader; i++) {
		env.header = a.header[i];
		env.headerlen = strlen(a.header[i]);
		printf("stage header: %s\n", a.header[i]);
		v = explain_stage(FLT_HEADER, &env, &rw);
		if (explain_outcome(FLT_HEADER, v, "passes") < 0)
			goto out;
	}
out:
	pattern_scratch_free(env.scratch);
	return 0;
}
