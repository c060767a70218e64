/*
 * rulebench.c: microbenchmark of the filter chain (refuse, srcroute, relay,
 * rules, ratelimit) under a policy, as deploy/bench.sh's traffic meets it.
 *
 * Not built by CMake.  Build it by hand against the core library:
 *
 *   cmake -B build && cmake --build build -j2
 *   cc -O2 -Wall -Wextra -D_GNU_SOURCE -Iproxy -Ipolicy -Ifilters \
 *       deploy/bench/rulebench.c build/libsmtpgate_core.a \
 *       $(pkg-config --libs libuv yaml-0.1 libpcre2-8 hiredis) -lpthread \
 *       -o /tmp/rulebench
 *   python3 deploy/bench/genpolicy.py /tmp/bench-policy.yaml
 *   /tmp/rulebench /tmp/bench-policy.yaml
 *
 * Each "message" runs the stages one message of bench.sh goes through, in
 * order, each on a fresh env as smtp_filter() builds it: connect, HELO,
 * MAIL, RCPT, DATA, the four header lines smtp-source writes, and the
 * final dot.  The sender of the stages after MAIL is parsed once per
 * message, as the session keeps it.  Prints microseconds per message: warm
 * (the same message again and again: everything in cache) and cold (16 MiB
 * of other data read between messages, which is what a busy gateway's
 * caches look like; the eviction itself is not timed).  With "-" as the
 * policy, the empty policy (no rules): the chain's own cost.
 *
 * Usage: rulebench POLICY.yaml|- [MESSAGES]
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filter.h"
#include "log.h"
#include "smtp_parse.h"

#define EVICT_SIZE	(16u * 1024 * 1024)	/* larger than the L2 and L3 */
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* What deploy/bench.sh's smtp-source sends (genpolicy.py's defaults). */
static const char *const headers[] = {
	"From: <bench@sender.example>",
	"To: <bench@rcpt.example>",
	"Date: Sun, 22 Nov 2026 05:54:00 +0000 (UTC)",
	"Message-Id: <2c65.0003.0000@bench.example.test>",
};

static const char *const stage_names[] = {
	"connect", "helo", "mail", "rcpt", "data", "header", "eom"
};

/* Returns the monotonic clock in nanoseconds. */
static unsigned long long
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull +
	    (unsigned long long)ts.tv_nsec;
}

/* Runs stage st with env on run; adds its time to ns[st].  Exits when the
 * traffic is refused: the policy is not one the benchmark passes. */
static void
stage(struct flt_run *run, enum flt_stage st, const struct flt_env *env,
    unsigned long long *ns)
{
	unsigned long long	 t0 = now_ns();
	enum flt_verdict	 v;

	v = flt_run_stage(run, st, env);
	ns[st] += now_ns() - t0;
	if (v != FLT_CONTINUE && v != FLT_ACCEPT) {
		fprintf(stderr, "rulebench: stage %s refused (%d %s, rule %s)\n",
		    stage_names[st], run->res.code, run->res.reply,
		    run->res.rule ? run->res.rule : "-");
		exit(1);
	}
	flt_run_reset(run);
}

/* Runs one message's stages; adds each stage's time to ns[]. */
static void
message(const struct policy *pol, struct pattern_scratch *sc,
    const struct sockaddr *sa, unsigned long long *ns)
{
	struct smtp_mailrcpt	 from, rcpt;
	struct flt_run		 run;
	struct flt_env		 env;
	static const char	 fromarg[] = "FROM:<bench@sender.example>";
	static const char	 rcptarg[] = "TO:<bench@rcpt.example>";
	size_t			 i;

	memset(&run, 0, sizeof(run));
	memset(&env, 0, sizeof(env));
	env.pol = pol;
	env.scratch = sc;
	env.session = "bench";
	env.hostname = "gate.example.test";
	env.addr = sa;
	env.addr_text = "127.0.0.1";
	env.port = 40000;
	env.client_name = "localhost";
	env.helo = "";
	stage(&run, FLT_CONNECT, &env, ns);
	env.helo = "bench.example.test";
	stage(&run, FLT_HELO, &env, ns);
	if (smtp_mailrcpt_parse(fromarg, sizeof(fromarg) - 1, 0, &from) !=
	    SMTP_ARG_OK || smtp_mailrcpt_parse(rcptarg, sizeof(rcptarg) - 1,
	    1, &rcpt) != SMTP_ARG_OK)
		abort();
	env.sender = &from.path;
	stage(&run, FLT_MAIL, &env, ns);
	env.rcpt = &rcpt.path;
	stage(&run, FLT_RCPT, &env, ns);
	env.rcpt = NULL;
	stage(&run, FLT_DATA, &env, ns);
	for (i = 0; i < NELEM(headers); i++) {
		env.header = headers[i];
		env.headerlen = strlen(headers[i]);
		stage(&run, FLT_HEADER, &env, ns);
	}
	env.header = NULL;
	env.headerlen = 0;
	env.size = 2048;
	stage(&run, FLT_EOM, &env, ns);
}

/* Runs n messages, with evict (EVICT_SIZE bytes) read between them when
 * not NULL; prints the microseconds per message, total and per stage. */
static void
run(const char *what, const struct policy *pol, struct pattern_scratch *sc,
    const struct sockaddr *sa, unsigned n, volatile unsigned char *evict)
{
	unsigned long long	 ns[FLT__STAGES] = { 0 }, total = 0;
	unsigned		 i, sum = 0;
	size_t			 j;
	int			 s;

	for (i = 0; i < n; i++) {
		if (evict != NULL)
			for (j = 0; j < EVICT_SIZE; j += 64)
				sum += evict[j]++;
		message(pol, sc, sa, ns);
	}
	(void)sum;
	for (s = 0; s < FLT__STAGES; s++)
		total += ns[s];
	printf("%-8s %8.2f us/msg  (", what, (double)total / n / 1000.0);
	for (s = 0; s < FLT__STAGES; s++)
		printf("%s%s %.2f", s ? ", " : "", stage_names[s],
		    (double)ns[s] / n / 1000.0);
	printf(")\n");
}

int
main(int argc, char **argv)
{
	struct sockaddr_in	 sin;
	struct pattern_scratch	*sc;
	struct policy		*pol;
	unsigned char		*evict;
	char			*errs = NULL;
	unsigned		 n = argc > 2 ? (unsigned)atoi(argv[2]) : 20000;

	if (argc < 2 || n == 0) {
		fprintf(stderr, "usage: rulebench POLICY.yaml|- [MESSAGES]\n");
		return 2;
	}
	log_set_level(LOG_LVL_WARNING);
	if (strcmp(argv[1], "-") == 0)
		pol = policy_empty();
	else if ((pol = policy_load(argv[1], &errs)) == NULL) {
		fprintf(stderr, "%s", errs);
		return 1;
	}
	if ((sc = pattern_scratch_new()) == NULL ||
	    (evict = calloc(1, EVICT_SIZE)) == NULL)
		return 1;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);

	printf("%s: %zu rules\n", argv[1], pol->nrules);
	run("(warmup)", pol, sc, (struct sockaddr *)&sin, n / 10 + 1, NULL);
	run("warm", pol, sc, (struct sockaddr *)&sin, n, NULL);
	run("cold", pol, sc, (struct sockaddr *)&sin, n / 10 + 1, evict);
	pattern_scratch_free(sc);
	free(evict);
	policy_unref(pol);
	return 0;
}
