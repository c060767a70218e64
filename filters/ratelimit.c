/*
 * ratelimit.c: GCRA and the dispatch to a store.
 */
#include "rl_store.h"

int
rl_gcra(uint64_t *tat, uint64_t now, const struct rl_check *c,
    uint64_t *retry_us)
{
	uint64_t t = *tat > now ? *tat : now;
	uint64_t next = t + c->cost * c->interval_us;

	if (next - now > c->window_us && !c->force) {
		/* It passes once TAT has come down to now + W - c * T. */
		*retry_us = next - now - c->window_us;
		return 0;
	}
	/* A forced check is counted even when over; its retry is 0 (the
	 * stores compute when the next one would pass). */
	*tat = next;
	*retry_us = 0;
	return next - now <= c->window_us;
}

int
rl_check(struct rl_store *st, const struct rl_check *c, size_t n,
    struct rl_result *res, rl_done_fn done, void *arg)
{
	return st->ops->check(st, c, n, res, done, arg);
}

void
rl_store_free(struct rl_store *st)
{
	if (st != NULL)
		st->ops->free(st);
}

void
rl_store_stats(const struct rl_store *st, struct rl_stats *out)
{
	*out = st->stats;
}
