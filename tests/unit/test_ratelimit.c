/*
 * test_ratelimit.c: unit tests for filters/ratelimit.c (GCRA) and
 * filters/rl_mem.c (the in-process store).
 *
 * rl_gcra() is table driven on a fake clock: a burst, refill after W,
 * partial refill after k * T, costs above 1, cost-0 queries, forced checks
 * and their penalty, T rounded down.  Every step also checks the TAT: it
 * moves to max(TAT, now) + c * T when counted and stays when not.
 *
 * The store runs on its real clock, with windows long enough (10 s) or
 * short enough (1 ms) for the answers not to depend on timing: counting,
 * all-or-nothing, forced checks on a deny, the same key twice in one call,
 * refused input, stats, expiry under a million distinct keys, and threads
 * sharing one key or adding distinct keys at once.
 */

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "rl_store.h"
#include "test.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define MAXSTEPS	16		/* steps in one GCRA case */
#define T0		UINT64_C(1000000000000)	/* the fake clock's start */
#define ANY		UINT64_MAX	/* any retry_us */
#define SEC		UINT64_C(1000000)	/* a second, µs */

/* ---- rl_gcra on a fake clock ------------------------------------------- */

/* One step of a GCRA case: times identical events at one instant. */
struct gcra_step {
	uint64_t	at;		/* µs since the case's start */
	int		times;		/* events; 0 ends the case */
	uint64_t	cost;		/* each event's cost */
	int		force;		/* forced */
	int		want;		/* rl_gcra()'s return for each */
	uint64_t	retry;		/* the *retry_us wanted, or ANY */
};

/* One GCRA case: a limit and the steps on one key, from a new key. */
static const struct gcra_case {
	const char	*name;		/* for failures */
	uint64_t	 interval;	/* T, µs */
	uint64_t	 window;	/* W, µs */
	struct gcra_step steps[MAXSTEPS];
} gcra_cases[] = {
	/* 10 per second: T = 100 ms. */
	{ "burst of N, then denied until T", 100000, SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 100000 },
		{ 1, 1, 1, 0, 0, 99999 },
		{ 99999, 1, 1, 0, 0, 1 },
		{ 100000, 1, 1, 0, 1, 0 },
		{ 100000, 1, 1, 0, 0, 100000 },
	} },
	{ "refill after W", 100000, SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ SEC, 10, 1, 0, 1, 0 },
		{ SEC, 1, 1, 0, 0, 100000 },
	} },
	{ "no more than N after a long idle", 100000, SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 50 * SEC, 10, 1, 0, 1, 0 },
		{ 50 * SEC, 1, 1, 0, 0, 100000 },
	} },
	{ "partial refill after 3 T", 100000, SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 300000, 3, 1, 0, 1, 0 },
		{ 300000, 1, 1, 0, 0, 100000 },
	} },
	{ "partial refill after 3.5 T", 100000, SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 350000, 3, 1, 0, 1, 0 },
		{ 350000, 1, 1, 0, 0, 50000 },
		{ 399999, 1, 1, 0, 0, 1 },
		{ 400000, 1, 1, 0, 1, 0 },
	} },
	{ "spread out: one per T forever", 100000, SEC, {
		{ 0, 1, 1, 0, 1, 0 },
		{ 100000, 1, 1, 0, 1, 0 },
		{ 200000, 1, 1, 0, 1, 0 },
		{ 300000, 1, 1, 0, 1, 0 },
	} },
	/* 1000 bytes per second: T = 1 ms a byte. */
	{ "costs in bytes", 1000, SEC, {
		{ 0, 1, 600, 0, 1, 0 },
		{ 0, 1, 400, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 1000 },
		{ 0, 1, 100, 0, 0, 100000 },
		{ 500000, 1, 501, 0, 0, 1000 },
		{ 500000, 1, 500, 0, 1, 0 },
		{ 500000, 1, 1, 0, 0, 1000 },
	} },
	{ "a cost over N never passes", 1000, SEC, {
		{ 0, 1, 1001, 0, 0, 1000 },
		{ 10 * SEC, 1, 1001, 0, 0, ANY },
		{ 10 * SEC, 1, 1000, 0, 1, 0 },
	} },
	{ "cost 0: a new key is not over", 100000, SEC, {
		{ 0, 3, 0, 0, 1, 0 },
		{ 0, 10, 1, 0, 1, 0 },
		/* Exactly at the limit is not over. */
		{ 0, 1, 0, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 100000 },
	} },
	{ "force counts when over; cost 0 denied for the penalty", 100000,
	    SEC, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 0, 1, 1, 1, 0, 0 },	/* TAT = now + 11 T */
		{ 0, 1, 0, 0, 0, 100000 },
		{ 0, 1, 1, 1, 0, 0 },	/* TAT = now + 12 T */
		{ 0, 1, 0, 0, 0, 200000 },
		{ 199999, 1, 0, 0, 0, 1 },
		{ 200000, 1, 0, 0, 1, 0 },
		{ 200000, 1, 1, 0, 0, 100000 },
		{ 300000, 1, 1, 0, 1, 0 },
	} },
	{ "force under the limit counts as usual", 100000, SEC, {
		{ 0, 9, 1, 1, 1, 0 },
		{ 0, 1, 1, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 100000 },
	} },
	{ "forced penalty decays at one T per T", 100000, SEC, {
		{ 0, 10, 1, 1, 1, 0 },
		{ 0, 20, 1, 1, 0, 0 },	/* 20 over: TAT = 30 T */
		{ 0, 1, 0, 0, 0, 2 * SEC },
		{ 2 * SEC, 1, 0, 0, 1, 0 },
		{ 2 * SEC, 1, 1, 0, 0, 100000 },
		{ 2 * SEC + 100000, 1, 1, 0, 1, 0 },
	} },
	/* 3 per 10 ms: T = 3333 (rounded down), 3 T = 9999 <= W < 4 T. */
	{ "T rounded down: still a burst of exactly N", 3333, 10000, {
		{ 0, 3, 1, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 3332 },
		{ 3331, 1, 1, 0, 0, 1 },
		{ 3332, 1, 1, 0, 1, 0 },
		{ 3332, 1, 1, 0, 0, 3333 },
		{ 6665, 1, 1, 0, 1, 0 },
	} },
	/* 100 per 10 µs: T = 0, taken as 1, so W caps the burst. */
	{ "T of 1 when N > W in µs", 1, 10, {
		{ 0, 10, 1, 0, 1, 0 },
		{ 0, 1, 1, 0, 0, 1 },
		{ 1, 1, 1, 0, 1, 0 },
	} },
};

/* Runs one GCRA case; failures name it and the step. */
static void
test_gcra_case(const struct gcra_case *gc)
{
	const struct gcra_step	*s;
	struct rl_check		 c;
	uint64_t		 tat = 0, old, now, retry, want_tat;
	size_t			 i;
	int			 k, times, got;

	memset(&c, 0, sizeof(c));
	c.interval_us = gc->interval;
	c.window_us = gc->window;
	for (i = 0; i < MAXSTEPS; i++) {
		s = &gc->steps[i];
		if ((times = s->times) == 0)
			break;
		now = T0 + s->at;
		c.cost = s->cost;
		c.force = s->force;
		for (k = 0; k < times; k++) {
			old = tat;
			retry = 12345;
			got = rl_gcra(&tat, now, &c, &retry);
			CHECKF(got == s->want, "%s: step %zu.%d: got %d",
			    gc->name, i, k, got);
			if (s->retry != ANY)
				CHECKF(retry == s->retry,
				    "%s: step %zu.%d: retry %" PRIu64
				    ", want %" PRIu64, gc->name, i, k, retry,
				    s->retry);
			if (got || s->force) {
				want_tat = (old > now ? old : now) +
				    s->cost * gc->interval;
				CHECKF(tat == want_tat, "%s: step %zu.%d: TAT "
				    "%" PRIu64 ", want %" PRIu64, gc->name, i,
				    k, tat - T0, want_tat - T0);
			} else
				CHECKF(tat == old, "%s: step %zu.%d: TAT moved "
				    "on a deny", gc->name, i, k);
			if (got)
				CHECKF(retry == 0, "%s: step %zu.%d: retry "
				    "on a pass", gc->name, i, k);
		}
	}
}

/* ---- The in-process store ----------------------------------------------- */

/* Fills c for key with a limit of n per window_us, cost 1, not forced. */
static void
mk(struct rl_check *c, const char *key, uint64_t n, uint64_t window_us)
{
	memset(c, 0, sizeof(*c));
	c->keylen = strlen(key);
	memcpy(c->key, key, c->keylen);
	c->window_us = window_us;
	c->interval_us = window_us / n > 0 ? window_us / n : 1;
	c->cost = 1;
}

/* Counts done() calls in *arg; the in-process store must never make one. */
static void
done_cb(void *arg, const struct rl_result *res)
{
	(void)res;
	(*(unsigned *)arg)++;
}

/* Returns the status of rl_check() on the n checks, res filled; checks
 * that the answer came at once. */
static enum rl_status
run(struct rl_store *st, const struct rl_check *c, size_t n,
    struct rl_result *res)
{
	unsigned	ndone = 0;
	int		r;

	memset(res, 0xa5, sizeof(*res));
	r = rl_check(st, c, n, res, done_cb, &ndone);
	CHECK(r == 0);
	CHECK(ndone == 0);
	return res->status;
}

/* Counting on one key: N pass, the next is denied with the right retry. */
static void
test_mem_basic(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c;
	struct rl_result	 res;
	int			 i;

	mk(&c, "basic", 3, 10 * SEC);
	for (i = 0; i < 3; i++)
		CHECK(run(st, &c, 1, &res) == RL_ALLOW);
	CHECK(run(st, &c, 1, &res) == RL_DENY);
	CHECK(res.denied == 0);
	/* 4 T - W = 3333.332 ms, less the time gone by; rounded up. */
	CHECKF(res.retry_ms > 3000 && res.retry_ms <= 3334, "retry_ms %"
	    PRIu64, res.retry_ms);
	/* Another key is independent; a prefix of the key too. */
	mk(&c, "basi", 3, 10 * SEC);
	CHECK(run(st, &c, 1, &res) == RL_ALLOW);
	CHECK(rl_mem_nkeys(st) == 2);
	rl_store_free(st);
}

/* A deny counts nothing, but the forced checks. */
static void
test_mem_all_or_nothing(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c[3];
	struct rl_result	 res;
	int			 i;

	mk(&c[0], "aon:a", 5, 10 * SEC);
	mk(&c[1], "aon:b", 1, 10 * SEC);
	CHECK(run(st, c, 2, &res) == RL_ALLOW);
	CHECK(run(st, c, 2, &res) == RL_DENY);
	CHECK(res.denied == 1);
	CHECK(res.retry_ms > 9000 && res.retry_ms <= 10000);
	/* a was counted once: 4 left. */
	for (i = 0; i < 4; i++)
		CHECK(run(st, &c[0], 1, &res) == RL_ALLOW);
	CHECK(run(st, &c[0], 1, &res) == RL_DENY);

	/* The first over is reported, in the caller's order. */
	mk(&c[2], "aon:c", 1, 10 * SEC);
	CHECK(run(st, &c[2], 1, &res) == RL_ALLOW);
	c[0] = c[2];
	mk(&c[1], "aon:d", 1, 10 * SEC);
	mk(&c[2], "aon:b", 1, 10 * SEC);
	CHECK(run(st, c, 3, &res) == RL_DENY);
	CHECK(res.denied == 0);
	/* d was not counted. */
	CHECK(run(st, &c[1], 1, &res) == RL_ALLOW);
	rl_store_free(st);
}

/* Forced checks are counted on a deny, and denied themselves when over. */
static void
test_mem_force(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c[2], q;
	struct rl_result	 res;

	mk(&c[0], "force:fail", 2, 10 * SEC);
	c[0].force = 1;
	mk(&c[1], "force:msg", 1, 10 * SEC);
	CHECK(run(st, &c[1], 1, &res) == RL_ALLOW);
	/* msg is over: the forced check is counted all the same. */
	CHECK(run(st, c, 2, &res) == RL_DENY);
	CHECK(res.denied == 1);
	q = c[0];
	q.force = 0;
	CHECK(run(st, &q, 1, &res) == RL_ALLOW);
	CHECK(run(st, &q, 1, &res) == RL_DENY);
	/* Forced over its own limit: denied, counted (TAT = now + 15 s), and
	 * the retry is when the same check would pass: TAT + T - W = 10 s. */
	CHECK(run(st, &c[0], 1, &res) == RL_DENY);
	CHECK(res.denied == 0);
	CHECKF(res.retry_ms > 9000 && res.retry_ms <= 10000,
	    "retry_ms %" PRIu64, res.retry_ms);
	/* A query is denied while the penalty lasts (one T). */
	q.cost = 0;
	CHECK(run(st, &q, 1, &res) == RL_DENY);
	CHECKF(res.retry_ms > 4000 && res.retry_ms <= 5000,
	    "retry_ms %" PRIu64, res.retry_ms);
	rl_store_free(st);
}

/* A key named twice in one call: the second sees the first's count. */
static void
test_mem_same_key(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c[3];
	struct rl_result	 res;

	mk(&c[0], "dup", 2, 10 * SEC);
	c[1] = c[0];
	c[2] = c[0];
	CHECK(run(st, c, 3, &res) == RL_DENY);
	CHECK(res.denied == 2);
	CHECK(rl_mem_nkeys(st) == 0);
	CHECK(run(st, c, 2, &res) == RL_ALLOW);
	CHECK(rl_mem_nkeys(st) == 1);
	CHECK(run(st, c, 1, &res) == RL_DENY);
	rl_store_free(st);
}

/* Input outside the interface is RL_ERROR and counts nothing. */
static void
test_mem_refused(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c[RL_CHECKS_MAX + 1], bad;
	struct rl_result	 res;
	struct rl_stats		 stats;
	size_t			 i;

	for (i = 0; i < NELEM(c); i++)
		mk(&c[i], "refused", 100, 10 * SEC);
	CHECK(run(st, c, 0, &res) == RL_ERROR);
	CHECK(run(st, c, RL_CHECKS_MAX + 1, &res) == RL_ERROR);
	CHECK(run(st, c, RL_CHECKS_MAX, &res) == RL_ALLOW);
	bad = c[0];
	bad.keylen = RL_KEY_MAX + 1;
	CHECK(run(st, &bad, 1, &res) == RL_ERROR);
	bad = c[0];
	bad.interval_us = 0;
	CHECK(run(st, &bad, 1, &res) == RL_ERROR);
	bad = c[0];
	bad.cost = UINT64_MAX / 2;
	CHECK(run(st, &bad, 1, &res) == RL_ERROR);
	/* The longest key is fine. */
	bad = c[0];
	memset(bad.key, 'k', RL_KEY_MAX);
	bad.keylen = RL_KEY_MAX;
	CHECK(run(st, &bad, 1, &res) == RL_ALLOW);
	CHECK(run(st, &c[0], 1, &res) == RL_ALLOW);
	CHECK(rl_mem_nkeys(st) == 2);

	rl_store_stats(st, &stats);
	CHECK(stats.checks == 8);
	CHECK(stats.denied == 0);
	CHECK(stats.errors == 5);
	CHECK(stats.outages == 0);
	rl_store_free(st);
}

/* Stats count checks and denies; a query creates no key. */
static void
test_mem_stats(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c;
	struct rl_result	 res;
	struct rl_stats		 stats;
	struct rl_store		 other = { 0 };
	int			 i;

	mk(&c, "stats", 2, 10 * SEC);
	c.cost = 0;
	CHECK(run(st, &c, 1, &res) == RL_ALLOW);
	CHECK(rl_mem_nkeys(st) == 0);
	c.cost = 1;
	for (i = 0; i < 5; i++)
		(void)run(st, &c, 1, &res);
	rl_store_stats(st, &stats);
	CHECK(stats.checks == 6);
	CHECK(stats.denied == 3);
	CHECK(stats.errors == 0);
	CHECK(rl_mem_nkeys(st) == 1);
	/* Not the in-process store: no keys. */
	CHECK(rl_mem_nkeys(&other) == 0);
	rl_store_free(st);
}

/*
 * Expiry: a million distinct keys, each live for 1 ms, never pile up; when
 * traffic goes on with one key, the dead ones all go; a key still live
 * stays through the sweeps and resizes.
 */
static void
test_mem_expiry(void)
{
	struct rl_store		*st = rl_mem_new();
	struct rl_check		 c, keep, q;
	struct rl_result	 res;
	size_t			 nk, peak = 0;
	unsigned		 i, nallow = 0, ndone = 0;

	mk(&keep, "expiry:keep", 1, 60 * SEC);
	CHECK(run(st, &keep, 1, &res) == RL_ALLOW);
	for (i = 0; i < 1000000; i++) {
		mk(&c, "", 1, 1000);
		c.keylen = (size_t)snprintf(c.key, sizeof(c.key),
		    "expiry:%u", i);
		/* Not run(): two million CHECKs would drown the count. */
		nallow += rl_check(st, &c, 1, &res, done_cb, &ndone) == 0 &&
		    res.status == RL_ALLOW;
		if (i % 1000 == 0 && (nk = rl_mem_nkeys(st)) > peak)
			peak = nk;
	}
	CHECK(nallow == 1000000);
	CHECK(ndone == 0);
	CHECKF(peak < 100000, "peak of %zu keys", peak);

	/* 2 ms later every churned key is dead; queries sweep them out. */
	uv_sleep(2);
	mk(&q, "expiry:query", 1, 1000);
	q.cost = 0;
	for (i = 0; i < 1000000 && rl_mem_nkeys(st) > 1; i++)
		(void)rl_check(st, &q, 1, &res, done_cb, &ndone);
	CHECKF(rl_mem_nkeys(st) == 1, "%zu keys left after %u queries",
	    rl_mem_nkeys(st), i);
	CHECK(run(st, &keep, 1, &res) == RL_DENY);
	printf("expiry: peak %zu keys, %u queries to sweep\n", peak, i);
	rl_store_free(st);
}

/* What a thread of the concurrency tests does. */
struct worker {
	struct rl_store	*st;		/* shared */
	uv_barrier_t	*start;		/* all threads start at once */
	unsigned	 id;		/* 0, 1, ... */
	unsigned	 n;		/* checks to make */
	int		 distinct;	/* each check on its own key, else all
					 * on "shared" */
	uint64_t	 limit;		/* N per window_us */
	uint64_t	 window_us;	/* W */
	unsigned	 allowed;	/* out: RL_ALLOW answers */
	unsigned	 other;		/* out: RL_ERROR, or not at once */
	unsigned	 ndone;		/* out: done() calls (none wanted) */
};

/* Makes w->n checks, counting the answers. */
static void
worker_main(void *arg)
{
	struct worker		*w = arg;
	struct rl_check		 c;
	struct rl_result	 res;
	unsigned		 i;

	mk(&c, "shared", w->limit, w->window_us);
	uv_barrier_wait(w->start);
	for (i = 0; i < w->n; i++) {
		if (w->distinct)
			c.keylen = (size_t)snprintf(c.key, sizeof(c.key),
			    "distinct:%u:%u", w->id, i);
		if (rl_check(w->st, &c, 1, &res, done_cb, &w->ndone) != 0)
			w->other++;
		else if (res.status == RL_ALLOW)
			w->allowed++;
		else if (res.status != RL_DENY)
			w->other++;
	}
}

/* Runs nthread (at most 8) workers making n checks each, on distinct keys
 * or not, with a limit of limit per window_us; returns the elapsed µs. */
static uint64_t
run_workers(struct rl_store *st, struct worker *w, unsigned nthread,
    unsigned n, int distinct, uint64_t limit, uint64_t window_us)
{
	uv_thread_t	tid[8];
	uv_barrier_t	start;
	uint64_t	t;
	unsigned	i;

	uv_barrier_init(&start, nthread + 1);
	for (i = 0; i < nthread; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].st = st;
		w[i].start = &start;
		w[i].id = i;
		w[i].n = n;
		w[i].distinct = distinct;
		w[i].limit = limit;
		w[i].window_us = window_us;
		CHECK(uv_thread_create(&tid[i], worker_main, &w[i]) == 0);
	}
	t = uv_hrtime();
	uv_barrier_wait(&start);
	for (i = 0; i < nthread; i++) {
		CHECK(uv_thread_join(&tid[i]) == 0);
		CHECK(w[i].other == 0);
		CHECK(w[i].ndone == 0);
	}
	t = (uv_hrtime() - t) / 1000;
	uv_barrier_destroy(&start);
	return t;
}

/*
 * Two threads, 10,000 checks each on one key limited to 1,000 per 10 s:
 * 1,000 allowed in all.  Should the run take longer than T = 10 ms, GCRA
 * rightly lets one more through per T gone by.
 */
static void
test_mem_threads_shared(void)
{
	struct rl_store		*st = rl_mem_new();
	struct worker		 w[2];
	struct rl_stats		 stats;
	uint64_t		 us, extra;
	unsigned		 allowed;

	us = run_workers(st, w, 2, 10000, 0, 1000, 10 * SEC);
	allowed = w[0].allowed + w[1].allowed;
	extra = us / 10000;
	if (extra == 0)
		CHECKF(allowed == 1000, "%u allowed", allowed);
	else
		CHECKF(allowed >= 1000 && allowed <= 1000 + extra,
		    "%u allowed in %" PRIu64 " us", allowed, us);
	rl_store_stats(st, &stats);
	CHECK(stats.checks == 20000);
	CHECK(stats.denied == 20000 - allowed);
	printf("threads: %u + %u = %u allowed in %" PRIu64 " us\n",
	    w[0].allowed, w[1].allowed, allowed, us);
	rl_store_free(st);

	/* The same with T = 1 s: exactly 1,000 unless the run takes 1 s. */
	st = rl_mem_new();
	us = run_workers(st, w, 2, 10000, 0, 1000, 1000 * SEC);
	allowed = w[0].allowed + w[1].allowed;
	CHECKF(allowed == 1000 + us / SEC, "%u allowed in %" PRIu64 " us",
	    allowed, us);
	rl_store_free(st);
}

/* Four threads adding distinct keys (1 per 60 s) at once, through many
 * resizes: every key is kept and counted, so a second pass is denied. */
static void
test_mem_threads_distinct(void)
{
	struct rl_store		*st = rl_mem_new();
	struct worker		 w[4];
	unsigned		 i, allowed = 0;

	(void)run_workers(st, w, 4, 25000, 1, 1, 60 * SEC);
	for (i = 0; i < 4; i++)
		allowed += w[i].allowed;
	CHECK(allowed == 100000);
	CHECK(rl_mem_nkeys(st) == 100000);
	(void)run_workers(st, w, 4, 25000, 1, 1, 60 * SEC);
	allowed = 0;
	for (i = 0; i < 4; i++)
		allowed += w[i].allowed;
	CHECK(allowed == 0);
	CHECK(rl_mem_nkeys(st) == 100000);
	rl_store_free(st);
}

int
main(void)
{
	size_t i;

	for (i = 0; i < NELEM(gcra_cases); i++)
		test_gcra_case(&gcra_cases[i]);
	test_mem_basic();
	test_mem_all_or_nothing();
	test_mem_force();
	test_mem_same_key();
	test_mem_refused();
	test_mem_stats();
	test_mem_expiry();
	test_mem_threads_shared();
	test_mem_threads_distinct();
	TEST_DONE();
}
