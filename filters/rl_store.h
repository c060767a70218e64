/*
 * rl_store.h: what a rate-limit store implements (private to the stores).
 */
#ifndef SMTPGATE_RL_STORE_H
#define SMTPGATE_RL_STORE_H

#include "ratelimit.h"

struct rl_store_ops {
	/* As rl_check(); updates st->stats (under the store's own lock when
	 * it is shared between threads). */
	int	(*check)(struct rl_store *st, const struct rl_check *c,
		    size_t n, struct rl_result *res, rl_done_fn done,
		    void *arg);
	/* As rl_store_free(). */
	void	(*free)(struct rl_store *st);
};

/* The common head of every store; each embeds it first. */
struct rl_store {
	const struct rl_store_ops	*ops;	/* the implementation */
	struct rl_stats			 stats;	/* counters, kept by the store */
};

#endif /* SMTPGATE_RL_STORE_H */
