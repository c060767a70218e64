/*
 * metrics.c: the per-worker counters, their Prometheus text, and the HTTP
 * endpoint (the only file that includes libmicrohttpd).
 *
 * A shard is written by one thread only, the worker it was bound to, so
 * an increment is a relaxed load and a relaxed store of its own counter:
 * no lock and no locked instruction on the hot path.  The HTTP thread
 * reads the same counters with relaxed loads; each value it reads is one
 * the worker wrote, never a torn one.  Shards are cache-line aligned so
 * that two workers never write the same line.
 *
 * The filter verdicts are keyed by names known only at run time (the
 * policy's rules), so each shard keeps them in a table of its own: open
 * addressing, insert-only.  Its worker fills a free slot's key and then
 * publishes it with a release store of `used`; the reader takes a slot
 * only after an acquire load of `used` saw it set, and a key never
 * changes once published.  A full table counts further keys in
 * verdicts_untracked instead.
 *
 * Histograms keep one counter per bucket (not cumulative) and the sum of
 * the observations in nanoseconds.  A scrape adds the buckets up, so the
 * cumulative counts it shows never decrease from one bucket to the next,
 * and _count is the +Inf bucket of that same reading.
 */
#include <errno.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <uv.h>

#include "backend.h"
#include "config.h"
#include "filter.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"

#define MX_VT_SIZE	1024	/* slots of a shard's verdict table (2^n) */
#define MX_VT_MAX	768	/* keys it takes; later ones go untracked */
#define MX_FILTER_MAX	24	/* a filter's name, NUL included */
#define MX_RULE_MAX	64	/* a rule's name kept, NUL included (longer
				 * ones are cut) */
#define MX_HTTP_CONNS	16	/* scrapes served at once */
#define MX_HTTP_TIMEOUT	10	/* seconds an idle HTTP connection stays */

/* Latency buckets, in seconds: from a loopback connect to a slow queue. */
static const double mx_bounds[] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
	0.25, 0.5, 1, 2.5, 5, 10, 30, 60
};
#define MX_NBOUNDS	(sizeof(mx_bounds) / sizeof(mx_bounds[0]))

/* Transaction outcomes, by the class of the reply to the data. */
enum mx_tx { MX_TX_ACCEPTED, MX_TX_TEMPFAILED, MX_TX_REJECTED, MX_TX_ABORTED,
	MX_TX__COUNT };
static const char *const mx_tx_names[MX_TX__COUNT] = {
	"accepted", "tempfailed", "rejected", "aborted"
};

static const char *const mx_cmd_names[MX_CMD__COUNT] = {
	"mail", "rcpt", "data", "dot", "other"
};

#define MX_NFAIL	(BE_FAIL_TLS + 1)
static const char *const mx_fail_names[MX_NFAIL] = {
	[BE_FAIL_CONN] = "connect",
	[BE_FAIL_SETUP] = "setup",
	[BE_FAIL_PROTO] = "protocol",
	[BE_FAIL_CLOSED] = "closed",
	[BE_FAIL_TIMEOUT] = "timeout",
	[BE_FAIL_TLS] = "tls",
};

/* The verdict= label of each enum flt_verdict counted. */
static const char *const mx_verdict_names[] = {
	[FLT_CONTINUE] = "warn",
	[FLT_ACCEPT] = "accept",
	[FLT_REJECT] = "reject",
	[FLT_TEMPFAIL] = "tempfail",
	[FLT_REFUSE] = "refuse",
};
#define MX_NVERDICTS	(sizeof(mx_verdict_names) / sizeof(mx_verdict_names[0]))

typedef atomic_uint_fast64_t mx_counter;

struct mx_hist {
	mx_counter	 bucket[MX_NBOUNDS + 1];	/* observations per
						 * bucket, the last one +Inf
						 * (not cumulative) */
	mx_counter	 sum_ns;		/* their sum, nanoseconds */
};

/* One (filter, rule, verdict) key of a shard's table, and its count. */
struct mx_verdict {
	atomic_uint	 used;		/* 1 once the key is written (release) */
	uint32_t	 hash;		/* of the key, to skip strcmp */
	int		 verdict;	/* enum flt_verdict */
	char		 filter[MX_FILTER_MAX];	/* the filter's name */
	char		 rule[MX_RULE_MAX];	/* the rule's, "" for none */
	mx_counter	 n;		/* times decided */
};

/* The counters one worker writes. */
struct mx_shard {
	alignas(64) mx_counter conn_total[CFG_MAX_LISTEN];	/* accepted,
						 * by listener */
	mx_counter	 conn_open[CFG_MAX_LISTEN];	/* open now (wraps
						 * below 0 never: the same
						 * thread opens and closes) */
	mx_counter	 tx[MX_TX__COUNT];	/* transactions by outcome */
	mx_counter	 replies[6];		/* replies by class, 0..5 */
	mx_counter	 data_bytes;		/* message data to the backend */
	mx_counter	 be_fail[MX_NFAIL];	/* backend failures by kind */
	mx_counter	 redis_errors;		/* checks Redis did not answer */
	mx_counter	 redis_timeouts;	/* ... because they timed out */
	mx_counter	 verdicts_untracked;	/* verdicts past MX_VT_MAX keys */
	struct mx_hist	 be_connect;		/* TCP connect to a backend */
	struct mx_hist	 be_ready;		/* connect to ready for MAIL */
	struct mx_hist	 be_reply[MX_CMD__COUNT];	/* command to reply */
	struct mx_verdict *vt;			/* MX_VT_SIZE slots */
	unsigned	 vt_keys;		/* slots used (the worker's
						 * own count: not read by the
						 * HTTP thread) */
};

struct metrics {
	struct mx_shard	*shards;		/* nshards of them */
	unsigned	 nshards;		/* one per worker */
	char		 listeners[CFG_MAX_LISTEN][80];	/* the listener=
						 * labels */
	unsigned	 nlisteners;
	double		 start_time;		/* Unix time of metrics_new() */
	atomic_uint_fast64_t reloads_ok;	/* SIGHUP reloads that worked */
	atomic_uint_fast64_t reloads_failed;	/* ... that were refused */
};

struct metrics_http {
	struct MHD_Daemon	*daemon;	/* its thread and socket */
	struct metrics		*m;		/* what it serves */
};

/*
 * The shard of this thread, set by metrics_bind(): per thread, so that
 * the hooks of every module reach their worker's counters without each
 * carrying a pointer for them.
 */
static _Thread_local struct mx_shard *mx_self;

/* Adds n to a counter only the calling thread writes. */
static inline void
mx_add(mx_counter *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) +
	    n, memory_order_relaxed);
}

static inline uint64_t
mx_get(const mx_counter *c)
{
	return atomic_load_explicit((mx_counter *)c, memory_order_relaxed);
}

struct metrics *
metrics_new(unsigned nworkers, const char *const *listeners,
    unsigned nlisteners)
{
	struct metrics	*m;
	struct timespec	 ts;
	unsigned	 i;

	if ((m = calloc(1, sizeof(*m))) == NULL)
		return NULL;
	m->nshards = nworkers > 0 ? nworkers : 1;
	m->shards = aligned_alloc(alignof(struct mx_shard),
	    m->nshards * sizeof(*m->shards));
	if (m->shards == NULL) {
		free(m);
		return NULL;
	}
	memset(m->shards, 0, m->nshards * sizeof(*m->shards));
	for (i = 0; i < m->nshards; i++)
		/* Untouched pages of calloc'd memory cost nothing. */
		if ((m->shards[i].vt = calloc(MX_VT_SIZE,
		    sizeof(struct mx_verdict))) == NULL) {
			metrics_free(m);
			return NULL;
		}
	m->nlisteners = nlisteners < CFG_MAX_LISTEN ? nlisteners :
	    CFG_MAX_LISTEN;
	for (i = 0; i < m->nlisteners; i++)
		snprintf(m->listeners[i], sizeof(m->listeners[i]), "%s",
		    listeners[i]);
	clock_gettime(CLOCK_REALTIME, &ts);
	m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	return m;
}

void
metrics_free(struct metrics *m)
{
	unsigned i;

	if (m == NULL)
		return;
	for (i = 0; i < m->nshards; i++)
		free(m->shards[i].vt);
	free(m->shards);
	free(m);
}

void
metrics_bind(struct metrics *m, unsigned worker)
{
	mx_self = m != NULL && worker < m->nshards ? &m->shards[worker] : NULL;
}

/* ---- Hooks --------------------------------------------------------------- */

void
metrics_conn_open(unsigned idx)
{
	if (mx_self == NULL || idx >= CFG_MAX_LISTEN)
		return;
	mx_add(&mx_self->conn_total[idx], 1);
	mx_add(&mx_self->conn_open[idx], 1);
}

void
metrics_conn_close(unsigned idx)
{
	if (mx_self == NULL || idx >= CFG_MAX_LISTEN)
		return;
	mx_add(&mx_self->conn_open[idx], UINT64_MAX);	/* minus one */
}

void
metrics_tx_end(int status)
{
	enum mx_tx t;

	if (mx_self == NULL)
		return;
	switch (status / 100) {
	case 2:
		t = MX_TX_ACCEPTED;
		break;
	case 4:
		t = MX_TX_TEMPFAILED;
		break;
	case 5:
		t = MX_TX_REJECTED;
		break;
	default:
		t = MX_TX_ABORTED;
		break;
	}
	mx_add(&mx_self->tx[t], 1);
}

void
metrics_reply(int cls)
{
	if (mx_self != NULL && cls >= 0 && cls <= 5)
		mx_add(&mx_self->replies[cls], 1);
}

void
metrics_data_bytes(uint64_t n)
{
	if (mx_self != NULL && n > 0)
		mx_add(&mx_self->data_bytes, n);
}

/* Counts the time since t0 (uv_hrtime()) into h. */
static void
mx_observe(struct mx_hist *h, uint64_t t0)
{
	uint64_t	 now = uv_hrtime(), ns = now > t0 ? now - t0 : 0;
	double		 s = (double)ns / 1e9;
	size_t		 i;

	for (i = 0; i < MX_NBOUNDS && s > mx_bounds[i]; i++)
		;
	mx_add(&h->bucket[i], 1);
	mx_add(&h->sum_ns, ns);
}

void
metrics_be_connect(uint64_t t0)
{
	if (mx_self != NULL)
		mx_observe(&mx_self->be_connect, t0);
}

void
metrics_be_ready(uint64_t t0)
{
	if (mx_self != NULL)
		mx_observe(&mx_self->be_ready, t0);
}

void
metrics_be_reply(enum metrics_cmd cmd, uint64_t t0)
{
	if (mx_self != NULL && (unsigned)cmd < MX_CMD__COUNT)
		mx_observe(&mx_self->be_reply[cmd], t0);
}

void
metrics_be_fail(int why)
{
	if (mx_self != NULL && why >= 0 && why < (int)MX_NFAIL)
		mx_add(&mx_self->be_fail[why], 1);
}

/* FNV-1a over s and its NUL, continuing from h. */
static uint32_t
mx_hash(uint32_t h, const char *s)
{
	do {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	} while (*s++ != '\0');
	return h;
}

void
metrics_verdict(const char *filter, const char *rule, int verdict)
{
	struct mx_shard		*sh = mx_self;
	struct mx_verdict	*e;
	char			 f[MX_FILTER_MAX], r[MX_RULE_MAX];
	uint32_t		 h;
	unsigned		 i;

	if (sh == NULL || verdict < 0 || verdict >= (int)MX_NVERDICTS ||
	    mx_verdict_names[verdict] == NULL ||
	    (verdict == FLT_CONTINUE && rule == NULL))
		return;
	/* The key as stored: cut to size, so that it compares equal. */
	snprintf(f, sizeof(f), "%s", filter != NULL ? filter : "");
	snprintf(r, sizeof(r), "%s", rule != NULL ? rule : "");
	h = mx_hash(mx_hash(2166136261u ^ (uint32_t)verdict, f), r);
	for (i = h & (MX_VT_SIZE - 1);; i = (i + 1) & (MX_VT_SIZE - 1)) {
		e = &sh->vt[i];
		/* Only this thread writes used: a plain read is its own. */
		if (!atomic_load_explicit(&e->used, memory_order_relaxed))
			break;
		if (e->hash == h && e->verdict == verdict &&
		    strcmp(e->filter, f) == 0 && strcmp(e->rule, r) == 0) {
			mx_add(&e->n, 1);
			return;
		}
	}
	if (sh->vt_keys >= MX_VT_MAX) {
		mx_add(&sh->verdicts_untracked, 1);
		return;
	}
	e->hash = h;
	e->verdict = verdict;
	memcpy(e->filter, f, sizeof(f));
	memcpy(e->rule, r, sizeof(r));
	atomic_store_explicit(&e->n, 1, memory_order_relaxed);
	atomic_store_explicit(&e->used, 1, memory_order_release);
	sh->vt_keys++;
}

void
metrics_redis_answer(int status)
{
	if (mx_self != NULL && status == RL_ERROR)
		mx_add(&mx_self->redis_errors, 1);
}

void
metrics_redis_timeout(void)
{
	if (mx_self != NULL)
		mx_add(&mx_self->redis_timeouts, 1);
}

void
metrics_reloaded(struct metrics *m, int ok)
{
	if (m != NULL)
		atomic_fetch_add(ok ? &m->reloads_ok : &m->reloads_failed, 1);
}

/* ---- The text format ----------------------------------------------------- */

/* Writes s as a label value: backslash, quote and newline escaped. */
static void
mx_label(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(f, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void
mx_head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Sums counter c, found at the same offset off in every shard. */
static uint64_t
mx_sum(const struct metrics *m, size_t off)
{
	uint64_t	v = 0;
	unsigned	i;

	for (i = 0; i < m->nshards; i++)
		v += mx_get((const mx_counter *)((const char *)&m->shards[i] +
		    off));
	return v;
}

#define MX_SUM(m, field)	mx_sum((m), offsetof(struct mx_shard, field))

/*
 * Writes one histogram's series: name_bucket{labels,le=...}, _sum and
 * _count, summed over the shards (labels: "" or `key="value"`).
 */
static void
mx_hist_out(FILE *f, const struct metrics *m, const char *name,
    const char *labels, size_t off)
{
	uint64_t	 b[MX_NBOUNDS + 1] = { 0 }, sum = 0, cum = 0;
	const struct mx_hist *h;
	unsigned	 i;
	size_t		 j;

	for (i = 0; i < m->nshards; i++) {
		h = (const struct mx_hist *)((const char *)&m->shards[i] + off);
		for (j = 0; j <= MX_NBOUNDS; j++)
			b[j] += mx_get(&h->bucket[j]);
		sum += mx_get(&h->sum_ns);
	}
	for (j = 0; j <= MX_NBOUNDS; j++) {
		cum += b[j];
		if (j < MX_NBOUNDS)
			fprintf(f, "%s_bucket{%s%sle=\"%g\"} %llu\n", name,
			    labels, *labels ? "," : "", mx_bounds[j],
			    (unsigned long long)cum);
		else
			fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name,
			    labels, *labels ? "," : "",
			    (unsigned long long)cum);
	}
	fprintf(f, "%s_sum%s%s%s %.9f\n", name, *labels ? "{" : "", labels,
	    *labels ? "}" : "", (double)sum / 1e9);
	fprintf(f, "%s_count%s%s%s %llu\n", name, *labels ? "{" : "", labels,
	    *labels ? "}" : "", (unsigned long long)cum);
}

/* qsort() order of verdict slots: filter, rule, verdict. */
static int
mx_verdict_cmp(const void *a, const void *b)
{
	const struct mx_verdict *x = *(const struct mx_verdict *const *)a;
	const struct mx_verdict *y = *(const struct mx_verdict *const *)b;
	int r;

	if ((r = strcmp(x->filter, y->filter)) != 0 ||
	    (r = strcmp(x->rule, y->rule)) != 0)
		return r;
	return (x->verdict > y->verdict) - (x->verdict < y->verdict);
}

/* Writes the filter verdicts: the shards' tables merged by key.  Returns
 * -1 when out of memory. */
static int
mx_verdicts_out(FILE *f, const struct metrics *m)
{
	const struct mx_verdict	**v, *e;
	size_t			  n = 0, i, j;
	uint64_t		  sum;
	unsigned		  s, k;

	if ((v = malloc((size_t)m->nshards * MX_VT_SIZE * sizeof(*v))) == NULL)
		return -1;
	for (s = 0; s < m->nshards; s++)
		for (k = 0; k < MX_VT_SIZE; k++) {
			e = &m->shards[s].vt[k];
			if (atomic_load_explicit((atomic_uint *)&e->used,
			    memory_order_acquire))
				v[n++] = e;
		}
	qsort(v, n, sizeof(*v), mx_verdict_cmp);
	mx_head(f, "smtpgate_filter_verdicts_total", "counter", "Decisions of "
	    "the filters, by filter, rule and verdict (warn: a warn rule "
	    "matched).");
	for (i = 0; i < n; i = j) {
		sum = 0;
		for (j = i; j < n && mx_verdict_cmp(&v[i], &v[j]) == 0; j++)
			sum += mx_get(&v[j]->n);
		fputs("smtpgate_filter_verdicts_total{filter=\"", f);
		mx_label(f, v[i]->filter);
		fputs("\",rule=\"", f);
		mx_label(f, v[i]->rule);
		fprintf(f, "\",verdict=\"%s\"} %llu\n",
		    mx_verdict_names[v[i]->verdict], (unsigned long long)sum);
	}
	free(v);
	mx_head(f, "smtpgate_filter_verdicts_untracked_total", "counter",
	    "Filter decisions not counted by key: too many distinct keys.");
	fprintf(f, "smtpgate_filter_verdicts_untracked_total %llu\n",
	    (unsigned long long)MX_SUM(m, verdicts_untracked));
	return 0;
}

char *
metrics_render(struct metrics *m, size_t *len)
{
	static const char *const classes[] = { "2xx", "3xx", "4xx", "5xx" };
	FILE		*f;
	char		*buf = NULL, labels[64];
	size_t		 size = 0;
	unsigned	 i;
	int		 err;

	if ((f = open_memstream(&buf, &size)) == NULL)
		return NULL;
	mx_head(f, "smtpgate_build_info", "gauge", "The running build; the "
	    "value is always 1.");
	fprintf(f, "smtpgate_build_info{version=\"%s\"} 1\n", SMTPGATE_VERSION);
	mx_head(f, "smtpgate_start_time_seconds", "gauge", "When the process "
	    "started, in seconds since the Unix epoch.");
	fprintf(f, "smtpgate_start_time_seconds %.3f\n", m->start_time);
	mx_head(f, "smtpgate_workers", "gauge", "Worker threads.");
	fprintf(f, "smtpgate_workers %u\n", m->nshards);
	mx_head(f, "smtpgate_config_reloads_total", "counter", "SIGHUP "
	    "reloads, by result (failure: the old configuration was kept).");
	fprintf(f, "smtpgate_config_reloads_total{result=\"success\"} %llu\n"
	    "smtpgate_config_reloads_total{result=\"failure\"} %llu\n",
	    (unsigned long long)atomic_load(&m->reloads_ok),
	    (unsigned long long)atomic_load(&m->reloads_failed));

	mx_head(f, "smtpgate_connections_current", "gauge", "Client "
	    "connections open now, by listener.");
	for (i = 0; i < m->nlisteners; i++) {
		fputs("smtpgate_connections_current{listener=\"", f);
		mx_label(f, m->listeners[i]);
		fprintf(f, "\"} %lld\n", (long long)MX_SUM(m, conn_open[i]));
	}
	mx_head(f, "smtpgate_connections_total", "counter", "Client "
	    "connections accepted, by listener.");
	for (i = 0; i < m->nlisteners; i++) {
		fputs("smtpgate_connections_total{listener=\"", f);
		mx_label(f, m->listeners[i]);
		fprintf(f, "\"} %llu\n",
		    (unsigned long long)MX_SUM(m, conn_total[i]));
	}
	mx_head(f, "smtpgate_transactions_total", "counter", "Mail "
	    "transactions relayed to the backend, by outcome.");
	for (i = 0; i < MX_TX__COUNT; i++)
		fprintf(f, "smtpgate_transactions_total{outcome=\"%s\"} %llu\n",
		    mx_tx_names[i], (unsigned long long)MX_SUM(m, tx[i]));
	mx_head(f, "smtpgate_replies_total", "counter", "Replies sent to "
	    "clients, by class.");
	for (i = 0; i < 4; i++)
		fprintf(f, "smtpgate_replies_total{class=\"%s\"} %llu\n",
		    classes[i], (unsigned long long)MX_SUM(m, replies[i + 2]));
	if (mx_verdicts_out(f, m) < 0) {
		fclose(f);
		free(buf);
		return NULL;
	}

	mx_head(f, "smtpgate_backend_data_bytes_total", "counter", "Message "
	    "data written to the backend, in bytes.");
	fprintf(f, "smtpgate_backend_data_bytes_total %llu\n",
	    (unsigned long long)MX_SUM(m, data_bytes));
	mx_head(f, "smtpgate_backend_failures_total", "counter", "Backend "
	    "connections that failed, by reason.");
	for (i = 0; i < MX_NFAIL; i++)
		fprintf(f, "smtpgate_backend_failures_total{reason=\"%s\"} "
		    "%llu\n", mx_fail_names[i],
		    (unsigned long long)MX_SUM(m, be_fail[i]));
	mx_head(f, "smtpgate_backend_connect_seconds", "histogram", "Time to "
	    "establish a TCP connection to a backend server.");
	mx_hist_out(f, m, "smtpgate_backend_connect_seconds", "",
	    offsetof(struct mx_shard, be_connect));
	mx_head(f, "smtpgate_backend_ready_seconds", "histogram", "Time from "
	    "connecting to a backend server to its being ready for MAIL "
	    "(greeting, EHLO, STARTTLS, XCLIENT).");
	mx_hist_out(f, m, "smtpgate_backend_ready_seconds", "",
	    offsetof(struct mx_shard, be_ready));
	mx_head(f, "smtpgate_backend_reply_seconds", "histogram", "Time from "
	    "sending a command to the backend to its reply, by command.");
	for (i = 0; i < MX_CMD__COUNT; i++) {
		snprintf(labels, sizeof(labels), "command=\"%s\"",
		    mx_cmd_names[i]);
		mx_hist_out(f, m, "smtpgate_backend_reply_seconds", labels,
		    offsetof(struct mx_shard, be_reply[i]));
	}
	mx_head(f, "smtpgate_redis_errors_total", "counter", "Rate-limit "
	    "checks the Redis store could not answer (down, timed out, an "
	    "error reply).");
	fprintf(f, "smtpgate_redis_errors_total %llu\n",
	    (unsigned long long)MX_SUM(m, redis_errors));
	mx_head(f, "smtpgate_redis_timeouts_total", "counter", "Rate-limit "
	    "checks that timed out waiting for Redis (counted in "
	    "smtpgate_redis_errors_total too).");
	fprintf(f, "smtpgate_redis_timeouts_total %llu\n",
	    (unsigned long long)MX_SUM(m, redis_timeouts));

	err = ferror(f);
	if (fclose(f) != 0 || err) {
		free(buf);
		return NULL;
	}
	*len = size;
	return buf;
}

/* ---- The HTTP endpoint --------------------------------------------------- */

static void
mx_http_log(void *cls, const char *fmt, va_list ap)
{
	char buf[256];

	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	log_warn("metrics: %s", buf);
}

/* Queues a response of code with body text (static) and its headers. */
static enum MHD_Result
mx_http_reply(struct MHD_Connection *c, unsigned code, const char *text,
    const char *allow)
{
	struct MHD_Response	*r;
	enum MHD_Result		 ret;

	r = MHD_create_response_from_buffer(strlen(text), (void *)text,
	    MHD_RESPMEM_PERSISTENT);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
	    "text/plain; charset=utf-8");
	if (allow != NULL)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	ret = MHD_queue_response(c, code, r);
	MHD_destroy_response(r);
	return ret;
}

/*
 * libmicrohttpd's request handler: GET (and HEAD) /metrics, 404 for every
 * other path, 405 for every other method.  Answered at the first call,
 * before any request body is read.
 */
static enum MHD_Result
mx_http_cb(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **con_cls)
{
	struct metrics_http	*h = cls;
	struct MHD_Response	*r;
	enum MHD_Result		 ret;
	char			*text;
	size_t			 len;

	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)con_cls;
	if (strcmp(url, "/metrics") != 0)
		return mx_http_reply(c, MHD_HTTP_NOT_FOUND, "Not Found: the "
		    "metrics are at /metrics\n", NULL);
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return mx_http_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method "
		    "Not Allowed: use GET\n", "GET, HEAD");
	if ((text = metrics_render(h->m, &len)) == NULL)
		return mx_http_reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
		    "out of memory\n", NULL);
	r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
	    "text/plain; version=0.0.4; charset=utf-8");
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

/* A listening socket on a, or -errno. */
static int
mx_http_socket(const struct cfg_addr *a)
{
	int one = 1, s, e;

	s = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (s < 0)
		return -errno;
	if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (a->ss.ss_family == AF_INET6 && setsockopt(s, IPPROTO_IPV6,
	    IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(s, (const struct sockaddr *)&a->ss, a->sslen) < 0 ||
	    listen(s, 16) < 0) {
		e = errno;
		close(s);
		return -e;
	}
	return s;
}

struct metrics_http *
metrics_http_start(struct metrics *m, const struct cfg_addr *addr, char *err,
    size_t errsize)
{
	struct metrics_http	*h;
	unsigned		 flags;
	int			 s;

	if ((h = calloc(1, sizeof(*h))) == NULL) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	h->m = m;
	if ((s = mx_http_socket(addr)) < 0) {
		snprintf(err, errsize, "%s", strerror(-s));
		free(h);
		return NULL;
	}
	flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
	if (addr->ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* The logger first, so that it gets every message. */
	h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, mx_http_cb, h,
	    MHD_OPTION_EXTERNAL_LOGGER, mx_http_log, NULL,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)MX_HTTP_CONNS,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)MX_HTTP_TIMEOUT,
	    MHD_OPTION_END);
	if (h->daemon == NULL) {
		snprintf(err, errsize, "cannot start the HTTP server");
		close(s);
		free(h);
		return NULL;
	}
	return h;
}

void
metrics_http_stop(struct metrics_http *h)
{
	if (h == NULL)
		return;
	MHD_stop_daemon(h->daemon);
	free(h);
}
