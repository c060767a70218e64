/*
 * ratelimit.h: rate-limit stores.
 *
 * The algorithm is GCRA (the generic cell rate algorithm, a virtual
 * scheduling form of the leaky bucket).  A limit of N events per window W
 * has the emission interval T = W / N and the burst tolerance W - T; each
 * key keeps one number, its theoretical arrival time TAT.  An event of
 * cost c at time now is allowed when max(TAT, now) + c * T - now <= W, and
 * then TAT becomes max(TAT, now) + c * T.
 *
 * What that guarantees: a burst of N events passes and the next is refused
 * until T has gone by; after an idle W, N pass again; over any long span
 * the rate is at most N / W; any interval of length W admits at most
 * 2N - 1 events (a full burst at its start, then one per T).  No other
 * error: the arithmetic is exact (integer microseconds) and, in Redis, one
 * Lua script reads and writes every key of a check with the server's clock,
 * so several gateways sharing one Redis enforce the same limit exactly.
 *
 * A key is stored with a time to live of its TAT - now (at most W, or the
 * penalty of forced counts), so nothing lingers after traffic stops.
 */
#ifndef SMTPGATE_RATELIMIT_H
#define SMTPGATE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define RL_KEY_MAX	320	/* a key's length, prefix excluded */
#define RL_CHECKS_MAX	16	/* checks in one round trip */

/* One limit to check and count. */
struct rl_check {
	char		key[RL_KEY_MAX];	/* e.g. "msgs-per-ip:192.0.2.7" */
	size_t		keylen;
	uint64_t	interval_us;	/* T = W / N, at least 1 */
	uint64_t	window_us;	/* W */
	uint64_t	cost;		/* units of this event (1, or bytes); 0
					 * only asks whether the key is over */
	int		force;		/* count it even when over the limit
					 * (failed commands: the penalty grows) */
};

enum rl_status {
	RL_ALLOW,	/* every check passed, all were counted */
	RL_DENY,	/* one was over its limit: nothing was counted (but
			 * the forced checks) */
	RL_ERROR	/* the store could not answer (down, slow, refused) */
};

struct rl_result {
	enum rl_status	status;		/* the answer */
	size_t		denied;		/* RL_DENY: the first check over */
	uint64_t	retry_ms;	/* RL_DENY: when it would pass */
};

typedef void (*rl_done_fn)(void *arg, const struct rl_result *res);

struct rl_store;

/*
 * Checks and counts n (1..RL_CHECKS_MAX) events atomically: either all
 * pass and all are counted, or none but the forced ones is.  Returns 0
 * with *res filled when the answer is known at once (the in-process store;
 * Redis while it is down: RL_ERROR), or 1 when done(arg, res) will be
 * called later, exactly once, from the caller's loop and within the
 * store's timeout (RL_ERROR when the store fails or is too slow; a late
 * answer is then dropped).  done is never called from within rl_check().
 */
int rl_check(struct rl_store *st, const struct rl_check *c, size_t n,
    struct rl_result *res, rl_done_fn done, void *arg);

/* Releases the store (for Redis: closes the connection; what is pending
 * is answered RL_ERROR first). */
void rl_store_free(struct rl_store *st);

/* Statistics of a store, for logs and metrics. */
struct rl_stats {
	uint64_t	checks;		/* rl_check() calls */
	uint64_t	denied;		/* answered RL_DENY */
	uint64_t	errors;		/* answered RL_ERROR */
	uint64_t	outages;	/* times the store became unavailable */
};

void rl_store_stats(const struct rl_store *st, struct rl_stats *out);

/*
 * GCRA on one key: *tat is the key's TAT (0 when the key is new), now the
 * time.  Returns 1 and advances *tat when c passes (or is forced), 0 when
 * it is over (then *retry_us says when it would pass).  Shared by the
 * in-process store and the tests; the Redis script does the same.
 */
int rl_gcra(uint64_t *tat, uint64_t now, const struct rl_check *c,
    uint64_t *retry_us);

/* ---- The in-process store: one per process, shared by every worker. --- */

struct rl_store *rl_mem_new(void);

/* For tests and metrics: the keys an in-process store holds, counting the
 * expired ones it has not removed yet; 0 for another kind of store. */
size_t rl_mem_nkeys(const struct rl_store *st);

/* ---- The Redis store: one per worker loop. ------------------------------ */

struct rl_redis_params {
	const char	*host;		/* numeric address */
	int		 port;
	const char	*path;		/* or a Unix socket's path (then host
					 * and port are not used) */
	const char	*password;	/* AUTH, or NULL */
	int		 db;		/* SELECT when not 0 */
	const char	*prefix;	/* put before every key ("smtpgate:") */
	unsigned	 timeout_ms;	/* an answer slower than this is
					 * RL_ERROR */
	const char	*name;		/* for logs ("worker 0") */
};

/* Connects in the background (and reconnects with backoff); never NULL
 * (aborts when out of memory).  Checks made while it is down are answered
 * RL_ERROR at once (rl_check returns 0).  The loop must outlive it. */
struct rl_store *rl_redis_new(uv_loop_t *loop, const struct rl_redis_params *p);

/* For tests and metrics: nonzero when the Redis store is connected and
 * its script loaded, so that checks go to Redis (0 for other stores). */
int rl_redis_ready(const struct rl_store *st);

#endif /* SMTPGATE_RATELIMIT_H */
