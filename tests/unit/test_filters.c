/*
 * test_filters.c: unit tests for filters/: the shipped filters' decisions
 * and the running of a stage (filter.c), including the asynchronous path.
 *
 * Each table's policy is written to a file in a private mkdtemp()
 * directory and loaded with policy_load(), as the gateway does.  A case
 * describes a session (client address, reverse name, HELO, sender,
 * recipient, header) and runs one stage through flt_run_stage(); it checks
 * the verdict and, where given, the reply code and text, the rule, the
 * filter that decided and the rewrite bits.  The asynchronous tests use
 * filters of their own (test-async, test-tail) placed in a copy of a
 * loaded policy's filters list; run them under ASan (build-asan) to catch a
 * late answer that touches an abandoned run.
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "smtp_parse.h"
#include "test.h"
#include "testenv.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define STRIP		FLT_RW_STRIP_ROUTE

static char	 tmpdir[] = "/tmp/test_filters.XXXXXX";	/* our files */
static char	 polfile[PATH_MAX];			/* tmpdir/policy.yaml */
static struct pattern_scratch *scratch;			/* for the rules */

/* ---- Helpers ------------------------------------------------------------- */

/* Replaces polfile with text; exits on error. */
static void
write_policy(const char *text)
{
	FILE	*f;
	size_t	 len = strlen(text);

	if ((f = fopen(polfile, "w")) == NULL ||
	    fwrite(text, 1, len, f) != len || fclose(f) != 0) {
		perror(polfile);
		exit(2);
	}
}

/* Loads text as a policy, which must be valid; exits when it is not. */
static struct policy *
load(const char *name, const char *text)
{
	struct policy	*pol;
	char		*errs = NULL;

	write_policy(text);
	pol = policy_load(polfile, &errs);
	if (pol == NULL) {
		fprintf(stderr, "%s: policy does not load:\n%s", name,
		    errs ? errs : "(no errors)\n");
		exit(2);
	}
	return pol;
}

/* Runs stage st for s under pol on a fresh run; the stage's result in *res. */
static enum flt_verdict
run_stage(const struct policy *pol, enum flt_stage st,
    const struct test_sess *s, struct flt_result *res)
{
	struct test_envbuf	 b;
	struct flt_run		 run;
	enum flt_verdict	 v;

	memset(&run, 0, sizeof(run));
	v = flt_run_stage(&run, st, test_env(&b, pol, scratch, s));
	CHECKF(run.state == FLT_RUN_DONE && run.res.verdict == v,
	    "state %d, verdict %d/%d", run.state, run.res.verdict, v);
	*res = run.res;
	flt_run_reset(&run);
	return v;
}

static const char *const verdict_names[] = {
	"continue", "accept", "reject", "tempfail", "refuse", "pending"
};

/* One table entry: a session, a stage and what it must give. */
struct fcase {
	int		 line;		/* __LINE__, for failure messages */
	enum flt_stage	 st;		/* the stage run */
	struct test_sess	 s;		/* the session */
	enum flt_verdict want;		/* the stage's verdict */
	int		 code;		/* reply code; 0: not checked */
	const char	*reply;		/* reply text; NULL: not checked */
	const char	*filter;	/* deciding filter; NULL: not checked,
					 * "": none */
	const char	*rule;		/* rule named; NULL: not checked,
					 * "": none */
	unsigned	 rewrite;	/* FLT_RW_* gathered */
};

/* Nonzero when got equals want ("" wanting NULL); NULL want passes. */
static int
same_name(const char *got, const char *want)
{
	if (want == NULL)
		return 1;
	if (*want == '\0')
		return got == NULL;
	return got != NULL && strcmp(got, want) == 0;
}

/* Runs every case of a table under the policy text ptext. */
static void
run_table(const char *name, const char *ptext, const struct fcase *c,
    size_t n)
{
	struct policy		*pol = load(name, ptext);
	struct flt_result	 r;
	enum flt_verdict	 v;
	size_t			 i;

	for (i = 0; i < n; i++, c++) {
		v = run_stage(pol, c->st, &c->s, &r);
		CHECKF(v == c->want, "%s, line %d: %s, want %s (\"%d %s\")",
		    name, c->line, verdict_names[v], verdict_names[c->want],
		    r.code, r.reply);
		if (c->code != 0)
			CHECKF(r.code == c->code, "%s, line %d: code %d, want "
			    "%d", name, c->line, r.code, c->code);
		if (c->reply != NULL)
			CHECKF(strcmp(r.reply, c->reply) == 0, "%s, line %d: "
			    "reply \"%s\", want \"%s\"", name, c->line,
			    r.reply, c->reply);
		CHECKF(same_name(r.filter, c->filter), "%s, line %d: filter "
		    "%s, want %s", name, c->line, r.filter ? r.filter : "NULL",
		    c->filter);
		CHECKF(same_name(r.rule, c->rule), "%s, line %d: rule %s, "
		    "want %s", name, c->line, r.rule ? r.rule : "NULL",
		    c->rule);
		CHECKF(r.rewrite == c->rewrite, "%s, line %d: rewrite %#x, "
		    "want %#x", name, c->line, r.rewrite, c->rewrite);
	}
	policy_unref(pol);
}

#define RUN_TABLE(policy, table) \
	run_table(#table, policy, table, NELEM(table))

/* Shorthands for the cases. */
#define C(addr)		.client = (addr)
#define FROM(p)		.from = (p)
#define RCPT(p)		.rcpt = (p)
#define UNTRUSTED	C("198.51.100.7")
#define TRUSTED		C("192.0.2.200")

/* ---- The filter table ---------------------------------------------------- */

static void
test_table(void)
{
	CHECK(flt_ntable == 5);
	CHECK(flt_table[0] == &flt_refuse && flt_table[1] == &flt_srcroute &&
	    flt_table[2] == &flt_relay && flt_table[3] == &flt_rules &&
	    flt_table[4] == &flt_ratelimit);
	CHECK(flt_lookup("ratelimit") == &flt_ratelimit);
	CHECK(flt_lookup("refuse") == &flt_refuse);
	CHECK(flt_lookup("source_routes") == &flt_srcroute);
	CHECK(flt_lookup("relay") == &flt_relay);
	CHECK(flt_lookup("rules") == &flt_rules);
	CHECK(flt_lookup("Relay") == NULL && flt_lookup("") == NULL &&
	    flt_lookup("nope") == NULL);
	CHECK(strcmp(flt_stage_name(FLT_CONNECT), "connect") == 0);
	CHECK(strcmp(flt_stage_name(FLT_HELO), "helo") == 0);
	CHECK(strcmp(flt_stage_name(FLT_MAIL), "mail") == 0);
	CHECK(strcmp(flt_stage_name(FLT_RCPT), "rcpt") == 0);
	CHECK(strcmp(flt_stage_name(FLT_DATA), "data") == 0);
	CHECK(strcmp(flt_stage_name(FLT_HEADER), "header") == 0);
	CHECK(strcmp(flt_stage_name(FLT_EOM), "eom") == 0);
	/* The stages docs/filters.md lists for each. */
	CHECK(flt_refuse.stages == FLT_STAGE(FLT_CONNECT));
	CHECK(flt_srcroute.stages == (FLT_STAGE(FLT_MAIL) |
	    FLT_STAGE(FLT_RCPT)));
	CHECK(flt_relay.stages == FLT_STAGE(FLT_RCPT));
	CHECK(flt_rules.stages == (FLT_STAGE(FLT_CONNECT) |
	    FLT_STAGE(FLT_HELO) | FLT_STAGE(FLT_MAIL) | FLT_STAGE(FLT_RCPT) |
	    FLT_STAGE(FLT_HEADER)));
}

static void
test_answer(void)
{
	struct flt_result	r;
	char			long_text[1000];

	memset(&r, 0, sizeof(r));
	CHECK(flt_answer(&r, FLT_TEMPFAIL, 451, "4.7.1 <%s>: %d", "a@b", 7) ==
	    FLT_TEMPFAIL);
	CHECK(r.verdict == FLT_TEMPFAIL && r.code == 451 &&
	    strcmp(r.reply, "4.7.1 <a@b>: 7") == 0);
	memset(long_text, 'x', sizeof(long_text) - 1);
	long_text[sizeof(long_text) - 1] = '\0';
	flt_answer(&r, FLT_REJECT, 550, "5.7.1 %s", long_text);
	CHECK(strlen(r.reply) == sizeof(r.reply) - 1);
}

/* ---- relay --------------------------------------------------------------- */

#define RELAY_POLICY							\
	"relay:\n"							\
	"  trusted_networks: [192.0.2.0/24, \"2001:db8::/32\"]\n"	\
	"  local_domains: [example.test, .example.test]\n"

#define DENIED(addr)	"5.7.1 <" addr ">: Relay access denied"

static const struct fcase relay_cases[] = {
	/* Local domains, exact and below. */
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@example.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<U@Example.TEST>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@mx.example.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@a.b.EXAMPLE.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* Not local. */
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@other.example>") },
	  FLT_REJECT, 550, DENIED("u@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@badexample.test>") },
	  FLT_REJECT, 550, DENIED("u@badexample.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@example.test.org>") },
	  FLT_REJECT, 550, DENIED("u@example.test.org"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@test>") },
	  FLT_REJECT, 550, DENIED("u@test"), "relay", "", 0 },
	/* Trusted networks, v4 and v6, and v4-mapped v6. */
	{ __LINE__, FLT_RCPT, { TRUSTED, RCPT("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("192.0.2.0"), RCPT("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("192.0.3.0"), RCPT("<u@other.example>") },
	  FLT_REJECT, 550, DENIED("u@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { C("192.0.1.255"), RCPT("<u@other.example>") },
	  FLT_REJECT, 550, NULL, "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { C("2001:db8::1"), RCPT("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("2001:db8:ffff:ffff::1"),
	  RCPT("<u@other.example>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("2001:db9::1"), RCPT("<u@other.example>") },
	  FLT_REJECT, 550, DENIED("u@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { C("::1"), RCPT("<u@other.example>") },
	  FLT_REJECT, 550, NULL, "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { C("::ffff:192.0.2.9"),
	  RCPT("<u@other.example>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("::ffff:198.51.100.7"),
	  RCPT("<u@other.example>") }, FLT_REJECT, 550, NULL, "relay", "", 0 },
	/* Authenticated. */
	{ __LINE__, FLT_RCPT, { UNTRUSTED, .auth = 1,
	  RCPT("<u@other.example>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* Postmaster without a domain always; with one, as any address. */
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<Postmaster>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<POSTMASTER>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<postmaster@other.example>") }, FLT_REJECT, 550,
	  DENIED("postmaster@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<postmaster@example.test>") }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
	/* Address literals are never local. */
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@[192.0.2.1]>") },
	  FLT_REJECT, 550, DENIED("u@[192.0.2.1]"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@[IPv6:2001:db8::1]>") },
	  FLT_REJECT, 550, DENIED("u@[IPv6:2001:db8::1]"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { TRUSTED, RCPT("<u@[192.0.2.1]>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* Relay tricks: refused for untrusted clients... */
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<u%ext.example@example.test>") }, FLT_REJECT, 550,
	  DENIED("u%ext.example@example.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<ext.example!u@example.test>") }, FLT_REJECT, 550,
	  DENIED("ext.example!u@example.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<\"u@ext.example\"@example.test>") }, FLT_REJECT, 550,
	  DENIED("\"u@ext.example\"@example.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<u%ext.example@mx.example.test>") }, FLT_REJECT, 550, NULL,
	  "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<\"u%ext\"@example.test>") }, FLT_REJECT, 550, NULL, "relay",
	  "", 0 },
	/* ... but a quoted local part without them is fine ... */
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<\"u v\"@example.test>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* ... and trusted or authenticated clients may use them. */
	{ __LINE__, FLT_RCPT, { TRUSTED,
	  RCPT("<u%ext.example@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_RCPT, { TRUSTED,
	  RCPT("<ext.example!u@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_RCPT, { TRUSTED,
	  RCPT("<\"u@ext.example\"@example.test>") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_RCPT, { C("2001:db8::2"),
	  RCPT("<u%ext.example@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, .auth = 1,
	  RCPT("<ext.example!u@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	/* The final destination decides, after a source route (stripped:
	 * the default). */
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<@ext.example:u@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", STRIP },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<@example.test:u@other.example>") }, FLT_REJECT, 550,
	  DENIED("u@other.example"), "relay", "", STRIP },
	/* Only RCPT is checked. */
	{ __LINE__, FLT_MAIL, { UNTRUSTED, FROM("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_CONNECT, { UNTRUSTED }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
};

/* reject_code: 554, and only example.test itself local. */
static const struct fcase relay554_cases[] = {
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@other.example>") },
	  FLT_REJECT, 554, DENIED("u@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@mx.example.test>") },
	  FLT_REJECT, 554, DENIED("u@mx.example.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@example.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<u%ext.example@example.test>") }, FLT_REJECT, 554, NULL,
	  "relay", "", 0 },
};

/* relay: {}: the check is on with both lists empty. */
static const struct fcase relay_empty_cases[] = {
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@example.test>") },
	  FLT_REJECT, 550, DENIED("u@example.test"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { C("127.0.0.1"), RCPT("<u@example.test>") },
	  FLT_REJECT, 550, NULL, "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<Postmaster>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, .auth = 1,
	  RCPT("<u@example.test>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
};

/* No relay section: the backend alone decides. */
static const struct fcase relay_none_cases[] = {
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<u%ext.example@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@[192.0.2.1]>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
};

static void
test_relay(void)
{
	RUN_TABLE(RELAY_POLICY, relay_cases);
	RUN_TABLE("relay:\n"
	    "  local_domains: [example.test]\n"
	    "  reject_code: 554\n", relay554_cases);
	RUN_TABLE("relay: {}\n", relay_empty_cases);
	RUN_TABLE("", relay_none_cases);
	RUN_TABLE("# comments only\n", relay_none_cases);
}

/* ---- source_routes ------------------------------------------------------- */

#define ROUTED_FROM	"<@a.example,@b.example:u@c.example>"
#define ROUTED_RCPT	"<@a.example:u@example.test>"
#define NOT_ACCEPTED	": Source routes are not accepted"

static const struct fcase strip_cases[] = {
	{ __LINE__, FLT_MAIL, { FROM(ROUTED_FROM) }, FLT_CONTINUE, 0, NULL,
	  "", "", STRIP },
	{ __LINE__, FLT_RCPT, { FROM("<s@x.example>"), RCPT(ROUTED_RCPT) },
	  FLT_CONTINUE, 0, NULL, "", "", STRIP },
	/* A routed sender does not make the RCPT stage strip. */
	{ __LINE__, FLT_RCPT, { FROM(ROUTED_FROM), RCPT("<u@example.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<u@c.example>") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<>") }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
	{ __LINE__, FLT_RCPT, { RCPT("<Postmaster>") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
};

static const struct fcase reject_cases[] = {
	{ __LINE__, FLT_MAIL, { FROM(ROUTED_FROM) }, FLT_REJECT, 501,
	  "5.1.0 " ROUTED_FROM NOT_ACCEPTED, "source_routes", "", 0 },
	{ __LINE__, FLT_RCPT, { FROM("<s@x.example>"), RCPT(ROUTED_RCPT) },
	  FLT_REJECT, 550, "5.7.1 " ROUTED_RCPT NOT_ACCEPTED, "source_routes",
	  "", 0 },
	{ __LINE__, FLT_RCPT, { C("127.0.0.1"), RCPT("<@a.example:u@b>") },
	  FLT_REJECT, 550, "5.7.1 <@a.example:u@b>" NOT_ACCEPTED,
	  "source_routes", "", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<u@c.example>") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_RCPT, { RCPT("<u@example.test>") }, FLT_CONTINUE, 0,
	  NULL, "", "", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<>") }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
};

static const struct fcase keep_cases[] = {
	{ __LINE__, FLT_MAIL, { FROM(ROUTED_FROM) }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_RCPT, { RCPT(ROUTED_RCPT) }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
};

static void
test_srcroute(void)
{
	RUN_TABLE("source_routes: strip\n", strip_cases);
	RUN_TABLE("", strip_cases);	/* the default */
	RUN_TABLE("source_routes: reject\n", reject_cases);
	RUN_TABLE("source_routes: keep\n", keep_cases);
}

/* ---- refuse -------------------------------------------------------------- */

#define REFUSED(addr)	"5.7.1 " addr ": Client host rejected: Access denied"

static const struct fcase refuse_cases[] = {
	{ __LINE__, FLT_CONNECT, { C("192.0.2.7") }, FLT_REFUSE, 554,
	  REFUSED("192.0.2.7"), "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.2.255") }, FLT_REFUSE, 554,
	  REFUSED("192.0.2.255"), "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.3.0") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.1.255") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("2001:db8::5") }, FLT_REFUSE, 554,
	  REFUSED("2001:db8::5"), "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("2001:db8:0:ffff::1") }, FLT_REFUSE, 554,
	  NULL, "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("2001:db8:1::1") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("::ffff:192.0.2.7") }, FLT_REFUSE, 554,
	  REFUSED("::ffff:192.0.2.7"), "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("127.0.0.5") }, FLT_REFUSE, 554,
	  REFUSED("127.0.0.5"), "refuse", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("127.0.0.6") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	/* Only at connect. */
	{ __LINE__, FLT_HELO, { C("192.0.2.7"), .helo = "x" }, FLT_CONTINUE, 0,
	  NULL, "", "", 0 },
	{ __LINE__, FLT_MAIL, { C("192.0.2.7"), FROM("<a@b.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
};

static const struct fcase refuse_none_cases[] = {
	{ __LINE__, FLT_CONNECT, { C("192.0.2.7") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	{ __LINE__, FLT_CONNECT, { C("::") }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
};

static void
test_refuse(void)
{
	RUN_TABLE("refuse_clients: [192.0.2.0/24, \"2001:db8::/48\", "
	    "127.0.0.5]\n", refuse_cases);
	RUN_TABLE("", refuse_none_cases);
	RUN_TABLE("refuse_clients: []\n", refuse_none_cases);
}

/* ---- rules --------------------------------------------------------------- */

static const char rules_policy[] =
	"rules:\n"
	"  - name: net-tempfail\n"
	"    match: { client: [198.51.100.0/24, \"2001:db8:bad::/48\"] }\n"
	"    action: tempfail\n"
	"  - name: re-client\n"
	"    match: { client: '/^203\\.0\\.113\\./' }\n"
	"    action: refuse\n"
	"  - name: rdns\n"
	"    match: { client_name: '/\\.dynamic\\.example$/' }\n"
	"    action: reject\n"
	"    reply: \"554 5.7.1 Dynamic address\"\n"
	"  - name: helo-any\n"
	"    match: { helo: '/^/' }\n"
	"    action: warn\n"
	"  - name: helo-lit\n"
	"    match: { helo: Bad.Example }\n"
	"    action: reject\n"
	"  - name: helo-and-net\n"
	"    match: { client: 10.0.0.0/8, helo: '/^x\\./' }\n"
	"    action: reject\n"
	"    reply: \"550 5.7.1 helo x from ten\"\n"
	"  - name: helo-refuse\n"
	"    match: { helo: '/^evil\\./' }\n"
	"    action: refuse\n"
	"  - name: sender-accept\n"
	"    match: { sender: '/@good\\.example$/' }\n"
	"    action: accept\n"
	"  - name: sender-reject\n"
	"    match: { sender: '/@(good|spam)\\.example$/' }\n"
	"    action: reject\n"
	"    reply: \"550 5.7.1 Sender rejected\"\n"
	"  - name: null-sender\n"
	"    match: { sender: \"\" }\n"
	"    action: tempfail\n"
	"    reply: \"450 4.7.1 No bounces now\"\n"
	"  - name: pair\n"
	"    match: { sender: s@pair.example, recipient: '/^r@/' }\n"
	"    action: reject\n"
	"    reply: \"550 5.7.1 Pair rejected\"\n"
	"  - name: trap\n"
	"    match: { recipient: trap@example.test }\n"
	"    action: refuse\n"
	"    reply: \"554 5.7.1 Trapped\"\n"
	"  - name: rcpt-tempfail\n"
	"    match: { recipient: '/^later@/' }\n"
	"    action: tempfail\n"
	"  - name: hdr-warn\n"
	"    match: { header: '/^X-Mailer: spamtool/' }\n"
	"    action: warn\n"
	"  - name: hdr\n"
	"    match: { header: '/^Subject: .*viagra/i' }\n"
	"    action: reject\n"
	"    reply: \"550 5.7.1 Message content rejected\"\n"
	"  - name: hdr-refuse\n"
	"    match: { header: '/^X-Evil: yes$/' }\n"
	"    action: refuse\n";

#define DEFAULT_REJECT	"5.7.1 Rejected by policy"
#define DEFAULT_TEMP	"4.7.1 Try again later"
#define DEFAULT_REFUSE	"5.7.1 Access denied"

static const struct fcase rules_cases[] = {
	/* connect: client CIDR list (v4, v6), client regex, reverse name. */
	{ __LINE__, FLT_CONNECT, { C("198.51.100.9") }, FLT_TEMPFAIL, 451,
	  DEFAULT_TEMP, "rules", "net-tempfail", 0 },
	{ __LINE__, FLT_CONNECT, { C("2001:db8:bad::1") }, FLT_TEMPFAIL, 451,
	  DEFAULT_TEMP, "rules", "net-tempfail", 0 },
	{ __LINE__, FLT_CONNECT, { C("2001:db8:bae::1") }, FLT_CONTINUE, 0,
	  NULL, "", "", 0 },
	{ __LINE__, FLT_CONNECT, { C("203.0.113.5") }, FLT_REFUSE, 554,
	  DEFAULT_REFUSE, "rules", "re-client", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.2.1"),
	  .name = "host-1.Dynamic.Example" }, FLT_CONTINUE, 0, NULL, "", "",
	  0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.2.1"),
	  .name = "host-1.dynamic.example" }, FLT_REJECT, 554,
	  "5.7.1 Dynamic address", "rules", "rdns", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.2.1") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
	/* A rule with helo and client waits for HELO. */
	{ __LINE__, FLT_CONNECT, { C("10.1.2.3"), .helo = "x.y" },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* helo: literal (whole value, any case), regex, AND with client. */
	{ __LINE__, FLT_HELO, { .helo = "BAD.example" }, FLT_REJECT, 550,
	  DEFAULT_REJECT, "rules", "helo-lit", 0 },
	{ __LINE__, FLT_HELO, { .helo = "bad.example.org" }, FLT_CONTINUE, 0,
	  NULL, "", NULL, 0 },
	{ __LINE__, FLT_HELO, { C("10.1.2.3"), .helo = "x.y" }, FLT_REJECT, 550,
	  "5.7.1 helo x from ten", "rules", "helo-and-net", 0 },
	{ __LINE__, FLT_HELO, { C("11.1.2.3"), .helo = "x.y" }, FLT_CONTINUE,
	  0, NULL, "", NULL, 0 },
	{ __LINE__, FLT_HELO, { C("10.1.2.3"), .helo = "y.x" }, FLT_CONTINUE,
	  0, NULL, "", NULL, 0 },
	{ __LINE__, FLT_HELO, { .helo = "evil.example" }, FLT_REFUSE, 554,
	  DEFAULT_REFUSE, "rules", "helo-refuse", 0 },
	/* Connect rules do not run again at HELO.  (helo-any, a warn,
	 * matched every HELO above that continued; the stage's result does
	 * not carry its name, which filter.h promises for struct flt_result:
	 * not checked here, see test_rules_warn.) */
	{ __LINE__, FLT_HELO, { C("198.51.100.9"), .helo = "fine" },
	  FLT_CONTINUE, 0, NULL, "", NULL, 0 },
	/* sender: accept ends the stage before a later matching reject. */
	{ __LINE__, FLT_MAIL, { FROM("<a@good.example>") }, FLT_ACCEPT, 0,
	  NULL, "rules", "sender-accept", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<a@spam.example>") }, FLT_REJECT, 550,
	  "5.7.1 Sender rejected", "rules", "sender-reject", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<@relay.example:a@spam.example>") },
	  FLT_REJECT, 550, "5.7.1 Sender rejected", "rules", "sender-reject",
	  STRIP },
	{ __LINE__, FLT_MAIL, { FROM("<a@spam.example.org>") }, FLT_CONTINUE,
	  0, NULL, "", "", 0 },
	{ __LINE__, FLT_MAIL, { FROM("<>") }, FLT_TEMPFAIL, 450,
	  "4.7.1 No bounces now", "rules", "null-sender", 0 },
	/* A rule with a recipient waits for RCPT. */
	{ __LINE__, FLT_MAIL, { FROM("<s@pair.example>") }, FLT_CONTINUE, 0,
	  NULL, "", "", 0 },
	/* recipient, alone and with sender. */
	{ __LINE__, FLT_RCPT, { FROM("<S@Pair.Example>"),
	  RCPT("<r@example.test>") }, FLT_REJECT, 550, "5.7.1 Pair rejected",
	  "rules", "pair", 0 },
	{ __LINE__, FLT_RCPT, { FROM("<t@pair.example>"),
	  RCPT("<r@example.test>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { FROM("<s@pair.example>"),
	  RCPT("<x@example.test>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { FROM("<a@b.example>"),
	  RCPT("<TRAP@example.test>") }, FLT_REFUSE, 554, "5.7.1 Trapped",
	  "rules", "trap", 0 },
	{ __LINE__, FLT_RCPT, { FROM("<a@b.example>"),
	  RCPT("<later@example.test>") }, FLT_TEMPFAIL, 451, DEFAULT_TEMP,
	  "rules", "rcpt-tempfail", 0 },
	/* Sender rules do not run again at RCPT. */
	{ __LINE__, FLT_RCPT, { FROM("<a@spam.example>"),
	  RCPT("<u@example.test>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	/* header: anchored regex, ignoring case; a warn goes on to the
	 * next rule. */
	{ __LINE__, FLT_HEADER, { .header = "Subject: buy VIAGRA now" },
	  FLT_REJECT, 550, "5.7.1 Message content rejected", "rules", "hdr",
	  0 },
	{ __LINE__, FLT_HEADER, { .header = "subject: cheap \tViagra" },
	  FLT_REJECT, 550, NULL, "rules", "hdr", 0 },
	{ __LINE__, FLT_HEADER, { .header = "X-Subject: viagra" },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_HEADER, { .header = "Subject: hello" }, FLT_CONTINUE,
	  0, NULL, "", "", 0 },
	{ __LINE__, FLT_HEADER, { .header = "X-Evil: yes" }, FLT_REFUSE, 554,
	  DEFAULT_REFUSE, "rules", "hdr-refuse", 0 },
	{ __LINE__, FLT_HEADER, { .header = "X-Evil: yes!" }, FLT_CONTINUE, 0,
	  NULL, "", "", 0 },
	/* Rules run at no other stage. */
	{ __LINE__, FLT_DATA, { C("198.51.100.9"), .helo = "bad.example",
	  FROM("<a@spam.example>") }, FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_EOM, { C("203.0.113.5"), FROM("<>") }, FLT_CONTINUE,
	  0, NULL, "", "", 0 },
};

/* The rules filter's own answer for one stage (not through a run). */
static enum flt_verdict
rules_hook(const struct policy *pol, enum flt_stage st,
    const struct test_sess *s, struct flt_result *res)
{
	struct test_envbuf b;

	memset(res, 0, sizeof(*res));
	return flt_rules.hook(st, test_env(&b, pol, scratch, s), res);
}

/*
 * warn: the session goes on, and the rule is named in the rules filter's
 * answer.  (Through flt_run_stage() the stage's result of a warn-only
 * match has rule == NULL: flt_continue() drops a "continue" answer whole.)
 */
static void
test_rules_warn(void)
{
	struct policy		*pol = load("warn", rules_policy);
	struct flt_result	 r;
	struct test_sess		 helo = { .helo = "fine.example" };
	struct test_sess		 hdr = { .header = "X-Mailer: spamtool 2" };
	struct test_sess		 both = { .header = "Subject: viagra" };

	CHECK(rules_hook(pol, FLT_HELO, &helo, &r) == FLT_CONTINUE);
	CHECKF(r.rule != NULL && strcmp(r.rule, "helo-any") == 0, "rule %s",
	    r.rule ? r.rule : "NULL");
	CHECK(rules_hook(pol, FLT_HEADER, &hdr, &r) == FLT_CONTINUE);
	CHECKF(r.rule != NULL && strcmp(r.rule, "hdr-warn") == 0, "rule %s",
	    r.rule ? r.rule : "NULL");
	/* A rule that decides after a warn is the one named. */
	helo.helo = "bad.example";
	CHECK(rules_hook(pol, FLT_HELO, &helo, &r) == FLT_REJECT);
	CHECK(r.rule != NULL && strcmp(r.rule, "helo-lit") == 0);
	CHECK(rules_hook(pol, FLT_HEADER, &both, &r) == FLT_REJECT);
	CHECK(r.rule != NULL && strcmp(r.rule, "hdr") == 0);
	/* No match, no name. */
	hdr.header = "X-Mailer: mutt";
	CHECK(rules_hook(pol, FLT_HEADER, &hdr, &r) == FLT_CONTINUE);
	CHECK(r.rule == NULL);
	policy_unref(pol);
}

/* The header is env->header[0..headerlen): not NUL-terminated. */
static void
test_rules_headerlen(void)
{
	struct policy		*pol = load("headerlen", rules_policy);
	struct flt_result	 r;
	struct test_envbuf	 b;
	struct test_sess		 s = { .header = "Subject: x" };
	const struct flt_env	*env = test_env(&b, pol, scratch, &s);
	const char		 field[] = "Subject: no pills; viagra";
	struct flt_env		 e = *env;

	e.header = field;
	e.headerlen = strlen("Subject: no pills");
	memset(&r, 0, sizeof(r));
	CHECK(flt_rules.hook(FLT_HEADER, &e, &r) == FLT_CONTINUE);
	e.headerlen = strlen(field);
	memset(&r, 0, sizeof(r));
	CHECK(flt_rules.hook(FLT_HEADER, &e, &r) == FLT_REJECT);
	policy_unref(pol);
}

static void
test_rules(void)
{
	RUN_TABLE(rules_policy, rules_cases);
	test_rules_warn();
	test_rules_headerlen();
}

/* ---- The filters: order ------------------------------------------------ */

#define ORDER_BODY							\
	"refuse_clients: [192.0.2.7]\n"					\
	"relay: { local_domains: [example.test] }\n"			\
	"rules:\n"							\
	"  - name: partner\n"						\
	"    match: { recipient: '/@partner\\.example$/' }\n"		\
	"    action: accept\n"						\
	"  - name: blocked\n"						\
	"    match: { recipient: '/^blocked@/' }\n"			\
	"    action: reject\n"						\
	"    reply: \"550 5.7.1 Blocked by rule\"\n"			\
	"  - name: spam\n"						\
	"    match: { sender: '/@spam\\.example$/' }\n"			\
	"    action: reject\n"

/* Default order: relay before rules. */
static const struct fcase order_default_cases[] = {
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@partner.example>") },
	  FLT_REJECT, 550, DENIED("u@partner.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<blocked@other.example>") },
	  FLT_REJECT, 550, DENIED("blocked@other.example"), "relay", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<blocked@example.test>") },
	  FLT_REJECT, 550, "5.7.1 Blocked by rule", "rules", "blocked", 0 },
	{ __LINE__, FLT_CONNECT, { C("192.0.2.7") }, FLT_REFUSE, 554, NULL,
	  "refuse", "", 0 },
};

/* filters: [rules, relay]: the rules first; accept skips relay. */
static const struct fcase order_rules_first_cases[] = {
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@partner.example>") },
	  FLT_ACCEPT, 0, NULL, "rules", "partner", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<blocked@other.example>") },
	  FLT_REJECT, 550, "5.7.1 Blocked by rule", "rules", "blocked", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@other.example>") },
	  FLT_REJECT, 550, DENIED("u@other.example"), "relay", "", 0 },
	/* refuse and source_routes are left out: they do not run. */
	{ __LINE__, FLT_CONNECT, { C("192.0.2.7") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED,
	  RCPT("<@a.example:u@example.test>") }, FLT_CONTINUE, 0, NULL, "",
	  "", 0 },
};

/* filters: [relay]: no rules. */
static const struct fcase order_relay_only_cases[] = {
	{ __LINE__, FLT_MAIL, { UNTRUSTED, FROM("<a@spam.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<blocked@example.test>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@partner.example>") },
	  FLT_REJECT, 550, DENIED("u@partner.example"), "relay", "", 0 },
};

/* filters: []: nothing runs. */
static const struct fcase order_none_cases[] = {
	{ __LINE__, FLT_CONNECT, { C("192.0.2.7") }, FLT_CONTINUE, 0, NULL,
	  "", "", 0 },
	{ __LINE__, FLT_MAIL, { UNTRUSTED, FROM("<a@spam.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
	{ __LINE__, FLT_RCPT, { UNTRUSTED, RCPT("<u@other.example>") },
	  FLT_CONTINUE, 0, NULL, "", "", 0 },
};

/* Loads text, which must fail with one error starting with want (after
 * "FILE:") and containing also. */
static void
check_load_error(const char *name, const char *text, const char *want,
    const char *also)
{
	struct policy	*pol;
	char		*errs = NULL, *nl;
	size_t		 plen = strlen(polfile);

	write_policy(text);
	pol = policy_load(polfile, &errs);
	CHECKF(pol == NULL && errs != NULL, "%s: loaded", name);
	policy_unref(pol);
	if (errs == NULL)
		return;
	nl = strchr(errs, '\n');
	CHECKF(strncmp(errs, polfile, plen) == 0 && errs[plen] == ':' &&
	    strncmp(errs + plen + 1, want, strlen(want)) == 0 &&
	    strstr(errs, also) != NULL && nl != NULL && nl[1] == '\0',
	    "%s: got \"%s\", want \"FILE:%s...%s...\"", name, errs, want,
	    also);
	free(errs);
}

static void
test_order(void)
{
	struct policy *pol;

	RUN_TABLE(ORDER_BODY, order_default_cases);
	RUN_TABLE("filters: [rules, relay]\n" ORDER_BODY,
	    order_rules_first_cases);
	RUN_TABLE(ORDER_BODY "filters:\n  - rules\n  - relay\n",
	    order_rules_first_cases);
	RUN_TABLE("filters: [relay]\n" ORDER_BODY, order_relay_only_cases);
	RUN_TABLE("filters: []\n" ORDER_BODY, order_none_cases);

	pol = load("order", "filters: [rules, source_routes, relay]\n");
	CHECK(pol->nfilters == 3 && pol->filters != NULL);
	if (pol->nfilters == 3)
		CHECK(pol->filters[0] == &flt_rules &&
		    pol->filters[1] == &flt_srcroute &&
		    pol->filters[2] == &flt_relay);
	policy_unref(pol);

	check_load_error("unknown filter", "filters: [rules, nope]\n",
	    "1:18: ", "unknown filter \"nope\"");
	check_load_error("unknown filter, block list",
	    "relay: {}\nfilters:\n  - relay\n  - rule\n", "4:5: ",
	    "unknown filter \"rule\"");
	check_load_error("filter twice", "filters: [relay, rules, relay]\n",
	    "1:25: ", "\"relay\" listed twice");
	check_load_error("filters not a list", "filters: { a: b }\n", "1:10: ",
	    "filters");
}

/* ---- Running a stage, and answering later -------------------------------- */

/* A filter that always asks someone else: counts its calls and keeps the
 * handle in async_call. */
static struct flt_call	*async_call;
static int		 async_calls;

static enum flt_verdict
async_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	(void)st;
	(void)res;
	async_calls++;
	async_call = flt_defer(env);
	return FLT_PENDING;
}

static const struct flt_def flt_async = {
	.name = "test-async",
	.stages = FLT_STAGE(FLT_MAIL) | FLT_STAGE(FLT_RCPT),
	.hook = async_hook,
};

/* A second one, to go pending twice in one stage. */
static const struct flt_def flt_async2 = {
	.name = "test-async2",
	.stages = FLT_STAGE(FLT_RCPT),
	.hook = async_hook,
};

/* A filter that rejects everything it sees at RCPT, counting its calls
 * and the recipient it saw last. */
static int	tail_calls;
static char	tail_rcpt[256];

static enum flt_verdict
tail_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	(void)st;
	tail_calls++;
	snprintf(tail_rcpt, sizeof(tail_rcpt), "%.*s",
	    env->rcpt ? (int)env->rcpt->mailboxlen : 0,
	    env->rcpt ? env->rcpt->mailbox : "");
	return flt_answer(res, FLT_REJECT, 554, "5.7.1 tail says no");
}

static const struct flt_def flt_tail = {
	.name = "test-tail",
	.stages = FLT_STAGE(FLT_RCPT),
	.hook = tail_hook,
};

/* The session's side: counts run->resumed calls. */
struct owner {
	int		 resumed;	/* run->resumed calls */
	struct flt_run	*run;		/* its run */
	int		 state;		/* run->state when resumed */
};

static void
owner_resumed(void *arg)
{
	struct owner *o = arg;

	o->resumed++;
	o->state = o->run->state;
}

/* *p becomes a copy of base running the n filters of order. */
static void
policy_with(struct policy *p, const struct policy *base,
    const struct flt_def *const *order, size_t n)
{
	memcpy(p, base, sizeof(*p));
	p->filters = order;
	p->nfilters = n;
}

static void
run_init(struct flt_run *run, struct owner *o)
{
	memset(run, 0, sizeof(*run));
	memset(o, 0, sizeof(*o));
	run->owner = o;
	run->resumed = owner_resumed;
	o->run = run;
}

static void
async_reset(void)
{
	async_call = NULL;
	async_calls = tail_calls = 0;
	tail_rcpt[0] = '\0';
}

static struct flt_result
answer(enum flt_verdict v, int code, const char *text, unsigned rewrite)
{
	struct flt_result r;

	memset(&r, 0, sizeof(r));
	if (text != NULL)
		flt_answer(&r, v, code, "%s", text);
	r.verdict = v;
	r.filter = "test-async";
	r.rewrite = rewrite;
	return r;
}

/* Pending, then rejected: the next run of the stage returns the verdict. */
static void
test_async_reject(const struct policy *base)
{
	static const struct flt_def *const order[] = {
		&flt_srcroute, &flt_async, &flt_tail
	};
	struct policy		 pol;
	struct flt_run		 run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct flt_result	 r;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>"),
				     RCPT("<@x.example:u@example.test>") };
	struct flt_call		*call;

	policy_with(&pol, base, order, NELEM(order));
	run_init(&run, &o);
	async_reset();
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	CHECK(async_calls == 1 && tail_calls == 0 && o.resumed == 0);
	CHECK(run.state == FLT_RUN_PENDING && run.call != NULL &&
	    run.call == async_call && run.stage == FLT_RCPT);
	/* Asked again before the answer: still pending, not run again. */
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	CHECK(async_calls == 1 && o.resumed == 0);

	call = async_call;
	r = answer(FLT_REJECT, 550, "5.7.1 Looked up: no", 0);
	r.rule = "lookup";
	CHECK(flt_resume(call, &r) == 1);
	CHECK(o.resumed == 1 && o.state == FLT_RUN_DONE);
	CHECK(run.call == NULL);

	/* The verdict, without running any filter again. */
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_REJECT);
	CHECK(run.res.verdict == FLT_REJECT && run.res.code == 550 &&
	    strcmp(run.res.reply, "5.7.1 Looked up: no") == 0);
	CHECK(run.res.filter != NULL &&
	    strcmp(run.res.filter, "test-async") == 0);
	CHECK(run.res.rule != NULL && strcmp(run.res.rule, "lookup") == 0);
	/* source_routes ran before it: its rewrite is kept. */
	CHECK(run.res.rewrite == STRIP);
	CHECK(async_calls == 1 && tail_calls == 0 && o.resumed == 1);
	flt_run_reset(&run);
	CHECK(run.state == FLT_RUN_IDLE);
}

/* Pending, then "continue": the next run goes on with the next filter. */
static void
test_async_continue(const struct policy *base)
{
	static const struct flt_def *const order[] = {
		&flt_async, &flt_tail
	};
	struct policy		 pol;
	struct flt_run		 run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct flt_result	 r;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>"),
				     RCPT("<u@example.test>") };
	struct test_sess		 fresh = s;

	policy_with(&pol, base, order, NELEM(order));
	run_init(&run, &o);
	async_reset();
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	r = answer(FLT_CONTINUE, 0, NULL, STRIP);
	CHECK(flt_resume(async_call, &r) == 1);
	CHECK(o.resumed == 1 && o.state == FLT_RUN_RESUME && run.call == NULL);
	CHECK(tail_calls == 0);	/* not from inside flt_resume() */

	/* A fresh env: the remaining filters see it. */
	fresh.rcpt = "<v@example.test>";
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &fresh)) ==
	    FLT_REJECT);
	CHECK(async_calls == 1 && tail_calls == 1);
	CHECK(strcmp(tail_rcpt, "v@example.test") == 0);
	CHECK(run.res.code == 554 &&
	    strcmp(run.res.reply, "5.7.1 tail says no") == 0 &&
	    run.res.filter != NULL && strcmp(run.res.filter, "test-tail") == 0);
	/* The rewrite bits of the answer are kept. */
	CHECK(run.res.rewrite == STRIP);
	CHECK(o.resumed == 1);
	flt_run_reset(&run);
}

/* "continue" from the last filter: the stage's verdict is continue. */
static void
test_async_continue_last(const struct policy *base)
{
	static const struct flt_def *const order[] = { &flt_async };
	struct policy		 pol;
	struct flt_run		 run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct flt_result	 r;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>") };

	policy_with(&pol, base, order, NELEM(order));
	run_init(&run, &o);
	async_reset();
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	r = answer(FLT_CONTINUE, 0, NULL, 0);
	CHECK(flt_resume(async_call, &r) == 1 && o.resumed == 1);
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_CONTINUE);
	CHECK(run.state == FLT_RUN_DONE && run.res.verdict == FLT_CONTINUE &&
	    async_calls == 1);
	/* Asked again: the same verdict, no filter run. */
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_CONTINUE && async_calls == 1);
	flt_run_reset(&run);
	/* After the reset the stage runs anew. */
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING && async_calls == 2);
	r = answer(FLT_ACCEPT, 0, NULL, 0);
	CHECK(flt_resume(async_call, &r) == 1 && o.resumed == 2);
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_ACCEPT);
	flt_run_reset(&run);
}

/* Two pending filters in one stage: pending, pending again, verdict. */
static void
test_async_twice(const struct policy *base)
{
	static const struct flt_def *const order[] = {
		&flt_async, &flt_async2, &flt_tail
	};
	struct policy		 pol;
	struct flt_run		 run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct flt_result	 r;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>"),
				     RCPT("<u@example.test>") };

	policy_with(&pol, base, order, NELEM(order));
	run_init(&run, &o);
	async_reset();
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	r = answer(FLT_CONTINUE, 0, NULL, 0);
	CHECK(flt_resume(async_call, &r) == 1 && o.resumed == 1);
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	CHECK(async_calls == 2 && tail_calls == 0 &&
	    run.state == FLT_RUN_PENDING);
	r = answer(FLT_TEMPFAIL, 451, "4.7.1 Later", 0);
	CHECK(flt_resume(async_call, &r) == 1 && o.resumed == 2 &&
	    o.state == FLT_RUN_DONE);
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_TEMPFAIL);
	CHECK(run.res.code == 451 && tail_calls == 0);
	flt_run_reset(&run);
}

/* A verdict nobody acted on does not stick to the next stage. */
static void
test_stage_change(const struct policy *base)
{
	static const struct flt_def *const order[] = { &flt_tail };
	struct policy		 pol;
	struct flt_run		 run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>"),
				     RCPT("<u@example.test>") };

	policy_with(&pol, base, order, NELEM(order));
	run_init(&run, &o);
	async_reset();
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_CONTINUE);
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_REJECT && tail_calls == 1);
	CHECK(flt_run_stage(&run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
	    FLT_REJECT && tail_calls == 1);
	CHECK(flt_run_stage(&run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_CONTINUE && run.stage == FLT_MAIL);
	flt_run_reset(&run);
	CHECK(o.resumed == 0);
}

/* The session goes away while a filter owes an answer. */
static void
test_async_abandon(const struct policy *base)
{
	static const struct flt_def *const order[] = {
		&flt_async, &flt_tail
	};
	struct policy		 pol;
	struct flt_run		*run;
	struct owner		 o;
	struct test_envbuf	 b;
	struct flt_result	 r;
	struct test_sess		 s = { UNTRUSTED, FROM("<a@b.example>"),
				     RCPT("<u@example.test>") };
	struct flt_call		*call;
	int			 i;

	policy_with(&pol, base, order, NELEM(order));
	/* Each verdict an answer may carry. */
	for (i = 0; i < 3; i++) {
		if ((run = malloc(sizeof(*run))) == NULL)
			exit(2);
		run_init(run, &o);
		async_reset();
		CHECK(flt_run_stage(run, FLT_RCPT, test_env(&b, &pol, scratch, &s)) ==
		    FLT_PENDING);
		call = async_call;
		CHECK(flt_call_waiting(call));
		flt_run_abandon(run);
		CHECK(run->call == NULL && run->state == FLT_RUN_IDLE);
		/* What the session pointed to must not be used now. */
		CHECK(!flt_call_waiting(call));
		/* The session is freed: under ASan, any use of it by the
		 * late answer is a heap-use-after-free. */
		free(run);
		r = i == 0 ? answer(FLT_REJECT, 550, "5.7.1 No", 0) :
		    i == 1 ? answer(FLT_CONTINUE, 0, NULL, STRIP) :
		    answer(FLT_REFUSE, 554, "5.7.1 Go away", 0);
		CHECK(flt_resume(call, &r) == 0);
		CHECK(o.resumed == 0 && tail_calls == 0);
	}

	/* Abandoning a run that owes nothing is harmless. */
	if ((run = malloc(sizeof(*run))) == NULL)
		exit(2);
	run_init(run, &o);
	flt_run_abandon(run);
	CHECK(run->state == FLT_RUN_IDLE && run->call == NULL);
	CHECK(flt_run_stage(run, FLT_MAIL, test_env(&b, &pol, scratch, &s)) ==
	    FLT_PENDING);
	CHECK(flt_call_waiting(async_call));
	r = answer(FLT_REJECT, 550, "5.7.1 No", 0);
	CHECK(flt_resume(async_call, &r) == 1 && o.resumed == 1);
	flt_run_abandon(run);	/* with a verdict nobody acted on */
	CHECK(run->state == FLT_RUN_IDLE);
	free(run);
}

static void
test_async(void)
{
	struct policy *base = load("async", "relay: { local_domains: "
	    "[example.test] }\n");

	test_async_reject(base);
	test_async_continue(base);
	test_async_continue_last(base);
	test_async_twice(base);
	test_stage_change(base);
	test_async_abandon(base);
	policy_unref(base);
}

int
main(void)
{
	log_set_level(LOG_LVL_ERROR);	/* the filters' info lines */
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(polfile, sizeof(polfile), "%s/policy.yaml", tmpdir);
	if ((scratch = pattern_scratch_new()) == NULL)
		return 2;

	test_table();
	test_answer();
	test_relay();
	test_srcroute();
	test_refuse();
	test_rules();
	test_order();
	test_async();

	pattern_scratch_free(scratch);
	unlink(polfile);
	if (rmdir(tmpdir) != 0)
		perror(tmpdir);
	TEST_DONE();
}
