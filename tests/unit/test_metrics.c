/*
 * test_metrics.c: unit tests for proxy/metrics.c (the counters and their
 * Prometheus text) and for the metrics: key of policy/config.c.
 *
 * The text is checked line by line: every line a comment or a sample
 * "name{labels} value", every family typed before its samples, and the
 * samples the hooks should have moved have the values the table says.
 * Threads bound to shards of their own count concurrently while the main
 * thread renders; the sums must come out exact.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "backend.h"
#include "config.h"
#include "filter.h"
#include "metrics.h"
#include "ratelimit.h"
#include "test.h"

#define VT_MAX	768	/* MX_VT_MAX of metrics.c: keys a shard tracks */

static const char *const listeners[] = { "127.0.0.1:25", "[::1]:587" };

/* Returns the value of the sample line "series value" in text (series
 * spelled exactly as rendered), or -1 when it is missing. */
static double
sample(const char *text, const char *series)
{
	const char	*p = text;
	size_t		 n = strlen(series);

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	return -1;
}

/* Checks the form of every line of text; returns the number of samples. */
static int
check_format(const char *text, size_t len)
{
	char	 typed[64][80], name[80];
	size_t	 ntyped = 0, i, k;
	int	 nsamples = 0, ok;
	const char *line = text, *end, *sp;

	CHECK(len > 0 && text[len - 1] == '\n');
	CHECK(strlen(text) == len);
	for (; line < text + len; line = end + 1) {
		end = strchr(line, '\n');
		if (end == NULL)
			break;
		if (strncmp(line, "# TYPE ", 7) == 0) {
			sp = strchr(line + 7, ' ');
			k = (size_t)(sp - line - 7);
			if (ntyped < 64 && k < sizeof(typed[0])) {
				memcpy(typed[ntyped], line + 7, k);
				typed[ntyped++][k] = '\0';
			}
			ok = sp != NULL && (strncmp(sp, " counter\n", 9) == 0 ||
			    strncmp(sp, " gauge\n", 7) == 0 ||
			    strncmp(sp, " histogram\n", 11) == 0);
			CHECKF(ok, "%.*s", (int)(end - line), line);
			continue;
		}
		if (strncmp(line, "# HELP ", 7) == 0)
			continue;
		/* A sample: name, optional {labels}, a space, a number. */
		k = strspn(line, "abcdefghijklmnopqrstuvwxyz_");
		CHECKF(k > 0 && k < sizeof(name) && (line[k] == '{' ||
		    line[k] == ' '), "%.*s", (int)(end - line), line);
		if (k == 0 || k >= sizeof(name))
			continue;
		memcpy(name, line, k);
		name[k] = '\0';
		for (ok = 0, i = 0; i < ntyped && !ok; i++)
			ok = strcmp(name, typed[i]) == 0 ||
			    (strncmp(name, typed[i], strlen(typed[i])) == 0 &&
			    (strcmp(name + strlen(typed[i]), "_bucket") == 0 ||
			    strcmp(name + strlen(typed[i]), "_sum") == 0 ||
			    strcmp(name + strlen(typed[i]), "_count") == 0));
		CHECKF(ok, "%s: sample before its TYPE", name);
		sp = end;
		while (sp > line && sp[-1] != ' ')
			sp--;
		CHECKF(sp > line && strspn(sp, "0123456789.+-eInf") ==
		    (size_t)(end - sp), "%.*s", (int)(end - line), line);
		nsamples++;
	}
	return nsamples;
}

static char *
render(struct metrics *m, size_t *len)
{
	char *t = metrics_render(m, len);

	if (t == NULL) {
		fprintf(stderr, "metrics_render failed\n");
		exit(2);
	}
	check_format(t, *len);
	return t;
}

/* A fresh registry: every sample there, all zero. */
static void
test_empty(void)
{
	struct metrics	*m = metrics_new(2, listeners, 2);
	char		*t;
	size_t		 len;

	CHECK(m != NULL);
	t = render(m, &len);
	CHECK(sample(t, "smtpgate_build_info{version=\"" SMTPGATE_VERSION
	    "\"}") == 1);
	CHECK(sample(t, "smtpgate_workers") == 2);
	CHECK(sample(t, "smtpgate_start_time_seconds") > 1e9);
	CHECK(sample(t, "smtpgate_connections_total{listener=\"127.0.0.1:25\"}")
	    == 0);
	CHECK(sample(t, "smtpgate_connections_current{listener=\"[::1]:587\"}")
	    == 0);
	CHECK(sample(t, "smtpgate_transactions_total{outcome=\"aborted\"}") ==
	    0);
	CHECK(sample(t, "smtpgate_backend_reply_seconds_bucket{command=\"dot\","
	    "le=\"+Inf\"}") == 0);
	CHECK(sample(t, "smtpgate_backend_connect_seconds_count") == 0);
	CHECK(sample(t, "smtpgate_backend_connect_seconds_sum") == 0);
	CHECK(strstr(t, "smtpgate_filter_verdicts_total{") == NULL);
	free(t);

	/* Not bound: the hooks count nothing. */
	metrics_bind(NULL, 0);
	metrics_conn_open(0);
	metrics_tx_end(250);
	metrics_verdict("rules", "r", FLT_REJECT);
	t = render(m, &len);
	CHECK(sample(t, "smtpgate_connections_total{listener=\"127.0.0.1:25\"}")
	    == 0);
	CHECK(sample(t, "smtpgate_transactions_total{outcome=\"accepted\"}") ==
	    0);
	CHECK(strstr(t, "smtpgate_filter_verdicts_total{") == NULL);
	free(t);
	metrics_free(m);
	metrics_free(NULL);
}

/* One sample the hooks below must have set, in shard 0 and 1 together. */
static const struct want {
	const char	*series;
	double		 value;
} wants[] = {
	{ "smtpgate_connections_total{listener=\"127.0.0.1:25\"}", 3 },
	{ "smtpgate_connections_current{listener=\"127.0.0.1:25\"}", 2 },
	{ "smtpgate_connections_total{listener=\"[::1]:587\"}", 1 },
	{ "smtpgate_connections_current{listener=\"[::1]:587\"}", 1 },
	{ "smtpgate_transactions_total{outcome=\"accepted\"}", 2 },
	{ "smtpgate_transactions_total{outcome=\"rejected\"}", 1 },
	{ "smtpgate_transactions_total{outcome=\"tempfailed\"}", 1 },
	{ "smtpgate_transactions_total{outcome=\"aborted\"}", 1 },
	{ "smtpgate_replies_total{class=\"2xx\"}", 3 },
	{ "smtpgate_replies_total{class=\"3xx\"}", 1 },
	{ "smtpgate_replies_total{class=\"4xx\"}", 0 },
	{ "smtpgate_replies_total{class=\"5xx\"}", 1 },
	{ "smtpgate_backend_data_bytes_total", 1500 },
	{ "smtpgate_backend_failures_total{reason=\"timeout\"}", 1 },
	{ "smtpgate_backend_failures_total{reason=\"connect\"}", 0 },
	{ "smtpgate_redis_errors_total", 2 },
	{ "smtpgate_redis_timeouts_total", 1 },
	{ "smtpgate_config_reloads_total{result=\"success\"}", 2 },
	{ "smtpgate_config_reloads_total{result=\"failure\"}", 1 },
	{ "smtpgate_filter_verdicts_total{filter=\"rules\",rule=\"block-spam\","
	  "verdict=\"reject\"}", 3 },
	{ "smtpgate_filter_verdicts_total{filter=\"rules\",rule=\"block-spam\","
	  "verdict=\"tempfail\"}", 1 },
	{ "smtpgate_filter_verdicts_total{filter=\"rules\",rule=\"watch\","
	  "verdict=\"warn\"}", 1 },
	{ "smtpgate_filter_verdicts_total{filter=\"relay\",rule=\"\","
	  "verdict=\"reject\"}", 1 },
	{ "smtpgate_filter_verdicts_total{filter=\"odd\\\"na\\\\me\",rule=\"a\","
	  "verdict=\"refuse\"}", 1 },
	{ "smtpgate_filter_verdicts_total{filter=\"ratelimit\",rule=\""
	  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\","
	  "verdict=\"accept\"}", 2 },
	{ "smtpgate_filter_verdicts_untracked_total", 0 },
	/* 3 ms: in the 0.005 bucket and above; 20 ms from 0.025 on. */
	{ "smtpgate_backend_reply_seconds_bucket{command=\"dot\",le=\"0.0025\"}",
	  0 },
	{ "smtpgate_backend_reply_seconds_bucket{command=\"dot\",le=\"0.005\"}",
	  1 },
	{ "smtpgate_backend_reply_seconds_bucket{command=\"dot\",le=\"0.01\"}",
	  1 },
	{ "smtpgate_backend_reply_seconds_bucket{command=\"dot\",le=\"0.025\"}",
	  2 },
	{ "smtpgate_backend_reply_seconds_bucket{command=\"dot\",le=\"+Inf\"}",
	  2 },
	{ "smtpgate_backend_reply_seconds_count{command=\"dot\"}", 2 },
	{ "smtpgate_backend_reply_seconds_count{command=\"mail\"}", 0 },
	{ "smtpgate_backend_connect_seconds_count", 1 },
	{ "smtpgate_backend_ready_seconds_count", 1 },
	{ "smtpgate_backend_ready_seconds_bucket{le=\"60\"}", 0 },
	{ "smtpgate_backend_ready_seconds_bucket{le=\"+Inf\"}", 1 },
};

static void
test_hooks(void)
{
	struct metrics	*m = metrics_new(2, listeners, 2);
	char		 longrule[200];
	char		*t;
	size_t		 len, i;
	double		 v, sum;

	memset(longrule, 'x', sizeof(longrule) - 1);
	longrule[sizeof(longrule) - 1] = '\0';

	metrics_bind(m, 0);
	metrics_conn_open(0);
	metrics_conn_open(0);
	metrics_conn_close(0);
	metrics_conn_open(CFG_MAX_LISTEN);	/* ignored */
	metrics_tx_end(250);
	metrics_tx_end(554);
	metrics_tx_end(0);
	metrics_reply(2);
	metrics_reply(3);
	metrics_reply(5);
	metrics_reply(9);			/* ignored */
	metrics_data_bytes(1000);
	metrics_be_fail(BE_FAIL_TIMEOUT);
	metrics_be_fail(99);			/* ignored */
	metrics_redis_answer(RL_ERROR);
	metrics_redis_answer(RL_DENY);		/* not an error */
	metrics_redis_timeout();
	metrics_verdict("rules", "block-spam", FLT_REJECT);
	metrics_verdict("rules", "block-spam", FLT_REJECT);
	metrics_verdict("rules", "block-spam", FLT_TEMPFAIL);
	metrics_verdict("rules", "watch", FLT_CONTINUE);
	metrics_verdict("rules", NULL, FLT_CONTINUE);	/* no rule: not a warn */
	metrics_verdict("rules", "x", FLT_PENDING);	/* ignored */
	metrics_verdict("relay", NULL, FLT_REJECT);
	metrics_verdict("odd\"na\\me", "a", FLT_REFUSE);
	metrics_verdict("ratelimit", longrule, FLT_ACCEPT);
	metrics_be_reply(MX_CMD_DOT, uv_hrtime() - 3000000);
	metrics_be_connect(uv_hrtime());
	metrics_be_ready(uv_hrtime() - 61000000000ull);

	metrics_bind(m, 1);
	metrics_conn_open(0);
	metrics_conn_open(1);
	metrics_tx_end(250);
	metrics_tx_end(421);
	metrics_reply(2);
	metrics_reply(2);
	metrics_data_bytes(500);
	metrics_data_bytes(0);
	metrics_redis_answer(RL_ERROR);
	metrics_verdict("rules", "block-spam", FLT_REJECT);
	/* Cut to the same 63 characters: the same key. */
	longrule[100] = '\0';
	metrics_verdict("ratelimit", longrule, FLT_ACCEPT);
	metrics_be_reply(MX_CMD_DOT, uv_hrtime() - 20000000);
	metrics_bind(NULL, 0);

	metrics_reloaded(m, 1);
	metrics_reloaded(m, 1);
	metrics_reloaded(m, 0);
	metrics_reloaded(NULL, 1);

	t = render(m, &len);
	for (i = 0; i < sizeof(wants) / sizeof(wants[0]); i++) {
		v = sample(t, wants[i].series);
		CHECKF(v == wants[i].value, "%s: %g, want %g", wants[i].series,
		    v, wants[i].value);
	}
	/* Each key once, though two shards counted it. */
	CHECK(strstr(strstr(t, "rule=\"block-spam\",verdict=\"reject\"") + 1,
	    "rule=\"block-spam\",verdict=\"reject\"") == NULL);
	sum = sample(t, "smtpgate_backend_reply_seconds_sum{command=\"dot\"}");
	CHECKF(sum >= 0.023 && sum < 0.5, "sum %g", sum);
	free(t);
	metrics_free(m);
}

/* Past VT_MAX distinct keys in a shard, verdicts go untracked. */
static void
test_verdict_overflow(void)
{
	struct metrics	*m = metrics_new(1, listeners, 1);
	char		 rule[32], series[128];
	char		*t;
	size_t		 len;
	int		 i;

	metrics_bind(m, 0);
	for (i = 0; i < VT_MAX + 32; i++) {
		snprintf(rule, sizeof(rule), "rule-%d", i);
		metrics_verdict("rules", rule, FLT_REJECT);
		metrics_verdict("rules", rule, FLT_REJECT);
	}
	metrics_bind(NULL, 0);
	t = render(m, &len);
	CHECK(sample(t, "smtpgate_filter_verdicts_untracked_total") == 64);
	snprintf(series, sizeof(series), "smtpgate_filter_verdicts_total{filter="
	    "\"rules\",rule=\"rule-%d\",verdict=\"reject\"}", VT_MAX - 1);
	CHECK(sample(t, series) == 2);
	snprintf(series, sizeof(series), "smtpgate_filter_verdicts_total{filter="
	    "\"rules\",rule=\"rule-%d\",verdict=\"reject\"}", VT_MAX);
	CHECK(sample(t, series) == -1);
	free(t);
	metrics_free(m);
}

#define NTHREADS	3
#define NROUNDS		200000

struct counter_arg {
	struct metrics	*m;
	unsigned	 shard;
};

static void
counter_thread(void *p)
{
	struct counter_arg	*a = p;
	char			 rule[16];
	int			 i;

	metrics_bind(a->m, a->shard);
	for (i = 0; i < NROUNDS; i++) {
		metrics_conn_open(0);
		metrics_data_bytes(3);
		metrics_be_reply(MX_CMD_RCPT, uv_hrtime());
		if (i % 1000 == 0) {
			snprintf(rule, sizeof(rule), "r%d", i / 1000 % 50);
			metrics_verdict("rules", rule, FLT_REJECT);
		}
		metrics_conn_close(0);
	}
}

/* Workers count while the main thread scrapes: no torn sums, counters
 * never go back, and the end result is exact. */
static void
test_threads(void)
{
	struct metrics		*m = metrics_new(NTHREADS, listeners, 1);
	struct counter_arg	 args[NTHREADS];
	uv_thread_t		 th[NTHREADS];
	char			*t, series[128];
	size_t			 len;
	double			 last = 0, v, cur;
	unsigned		 i;
	int			 j, mono = 1, nonneg = 1;

	for (i = 0; i < NTHREADS; i++) {
		args[i].m = m;
		args[i].shard = i;
		uv_thread_create(&th[i], counter_thread, &args[i]);
	}
	for (j = 0; j < 50; j++) {
		t = render(m, &len);
		v = sample(t, "smtpgate_connections_total{listener="
		    "\"127.0.0.1:25\"}");
		cur = sample(t, "smtpgate_connections_current{listener="
		    "\"127.0.0.1:25\"}");
		mono &= v >= last;
		nonneg &= cur >= 0 && cur <= NTHREADS;
		last = v;
		free(t);
	}
	for (i = 0; i < NTHREADS; i++)
		uv_thread_join(&th[i]);
	CHECK(mono);
	CHECK(nonneg);
	t = render(m, &len);
	CHECK(sample(t, "smtpgate_connections_total{listener=\"127.0.0.1:25\"}")
	    == (double)NTHREADS * NROUNDS);
	CHECK(sample(t, "smtpgate_connections_current{listener=\"127.0.0.1:25\"}")
	    == 0);
	CHECK(sample(t, "smtpgate_backend_data_bytes_total") ==
	    3.0 * NTHREADS * NROUNDS);
	CHECK(sample(t, "smtpgate_backend_reply_seconds_count{command=\"rcpt\"}")
	    == (double)NTHREADS * NROUNDS);
	/* 200 verdicts a thread over 50 rules: 4 each, times the threads. */
	snprintf(series, sizeof(series), "smtpgate_filter_verdicts_total{filter="
	    "\"rules\",rule=\"r7\",verdict=\"reject\"}");
	CHECK(sample(t, series) == 4.0 * NTHREADS);
	free(t);
	metrics_free(m);
}

/* ---- The metrics: key ---------------------------------------------------- */

static char	tmpdir[] = "/tmp/test_metrics.XXXXXX";
static char	cfgfile[300];

#define BASE								\
	"listen:\n"							\
	"  - address: 127.0.0.1:2525\n"					\
	"backend:\n"							\
	"  servers: [127.0.0.1:10025]\n"

static const struct cfg_case {
	const char	*text;		/* the file */
	const char	*addr;		/* the address read, NULL: none */
	const char	*error;		/* the error after "FILE:", or NULL */
} cfg_cases[] = {
	{ BASE, NULL, NULL },
	{ BASE "metrics:\n  address: 127.0.0.1:9425\n", "127.0.0.1:9425",
	  NULL },
	{ BASE "metrics: { address: \"[::1]:9425\" }\n", "[::1]:9425", NULL },
	{ BASE "metrics:\n  address: \"*:9425\"\n", "*:9425", NULL },
	{ BASE "metrics:\n  address: 127.0.0.1:2525\n", NULL,
	  "6:12: metrics.address: 127.0.0.1:2525 is also listen[0]'s "
	  "address\n" },
	{ BASE "metrics:\n  address: localhost:9425\n", NULL,
	  "6:12: metrics.address: invalid address \"localhost:9425\": not a "
	  "numeric IP address (host names are not accepted)\n" },
	{ BASE "metrics:\n  address: 127.0.0.1:0\n", NULL,
	  "6:12: metrics.address: invalid address \"127.0.0.1:0\": the port "
	  "must be a number from 1 to 65535\n" },
	{ BASE "metrics: {}\n", NULL,
	  "5:10: metrics.address: required setting is missing\n" },
	{ BASE "metrics:\n  address: 127.0.0.1:9425\n  port: 1\n", NULL,
	  "7:3: metrics.port: unknown setting (known here: address)\n" },
	{ BASE "metrics: 127.0.0.1:9425\n", NULL,
	  "5:10: metrics: expected a map of settings, got \"127.0.0.1:9425\"\n" },
};

static void
test_config(void)
{
	const struct cfg_case	*k;
	struct config		*cfg;
	char			*errs, want[512];
	FILE			*f;
	size_t			 i;

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		exit(2);
	}
	snprintf(cfgfile, sizeof(cfgfile), "%s/smtpgate.yaml", tmpdir);
	for (i = 0; i < sizeof(cfg_cases) / sizeof(cfg_cases[0]); i++) {
		k = &cfg_cases[i];
		if ((f = fopen(cfgfile, "w")) == NULL ||
		    fputs(k->text, f) == EOF || fclose(f) != 0) {
			perror(cfgfile);
			exit(2);
		}
		errs = NULL;
		cfg = config_load(cfgfile, &errs);
		if (k->error == NULL) {
			CHECKF(cfg != NULL, "case %zu: %s", i, errs);
			if (cfg != NULL && k->addr == NULL)
				CHECKF(cfg->metrics_addr.sslen == 0, "case %zu",
				    i);
			else if (cfg != NULL)
				CHECKF(cfg->metrics_addr.sslen != 0 &&
				    strcmp(cfg->metrics_addr.text, k->addr) ==
				    0, "case %zu: %s", i,
				    cfg->metrics_addr.text);
		} else {
			snprintf(want, sizeof(want), "%s:%s", cfgfile,
			    k->error);
			CHECKF(cfg == NULL && errs != NULL &&
			    strncmp(errs, want, strlen(want)) == 0,
			    "case %zu: got %s, want %s", i, errs, want);
		}
		config_unref(cfg);
		free(errs);
	}
	unlink(cfgfile);
	rmdir(tmpdir);
}

int
main(void)
{
	test_empty();
	test_hooks();
	test_verdict_overflow();
	test_threads();
	test_config();
	TEST_DONE();
}
