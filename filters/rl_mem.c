/*
 * rl_mem.c: the in-process rate-limit store.
 *
 * One store per process, shared by every worker thread: a chained hash
 * table from a key to its TAT, behind one mutex.  The TAT is also the
 * key's expiry: once TAT <= now the key is dead (a new key would behave
 * the same), so it can go.  Dead keys are removed lazily, so that memory
 * follows the live keys and not every key ever seen:
 *
 *   - a lookup unlinks the dead entries it walks past in its bucket;
 *   - every check sweeps a few buckets from a rotating cursor (more when it
 *     added keys), so each bucket is visited every nbucket / RL_MEM_SWEEP
 *     checks at most;
 *   - a resize, which visits every entry anyway, drops the dead ones and
 *     sizes the table for the live ones only; a table that the sweep finds
 *     mostly empty at the end of a round shrinks the same way.
 *
 * The critical section is short: keys are hashed before taking the lock,
 * and the entries unlinked under it are freed after releasing it.  The only
 * long one is a resize (O(entries), once per doubling or shrinking).
 *
 * The hash is SipHash-2-4 keyed with random bytes per store: keys carry
 * what clients send (addresses, names), and a client able to predict the
 * hash could put every key in one bucket, under the lock all workers share.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "rl_store.h"

#define RL_MEM_MIN_BUCKETS	64	/* the smallest table; a power of two */
#define RL_MEM_SWEEP		4	/* buckets swept by every check */
#define RL_MEM_SWEEP_ADDED	2	/* more buckets swept per key added */
#define RL_MEM_SPAN_MAX		(UINT64_C(1) << 48)	/* the largest W and
					 * c * T accepted, µs (8.9 years):
					 * TAT arithmetic cannot overflow */

/* One key and its TAT. */
struct rl_mem_ent {
	struct rl_mem_ent	*next;		/* the bucket's chain, or the
						 * list of entries to free */
	uint64_t		 hash;		/* of the key, kept to rehash */
	uint64_t		 tat;		/* TAT, µs on the store's clock;
						 * dead once <= now */
	size_t			 keylen;	/* bytes in key */
	char			 key[];		/* the key, not NUL-terminated */
};

/* The store. */
struct rl_mem {
	struct rl_store		  st;		/* the common head; first */
	uv_mutex_t		  lock;		/* guards the fields below and
						 * st.stats */
	struct rl_mem_ent	**bucket;	/* nbucket chains */
	size_t			  nbucket;	/* a power of two */
	size_t			  nkey;		/* entries, dead or not */
	size_t			  sweep;	/* the next bucket swept */
	uint64_t		  seed[2];	/* the SipHash key; set once,
						 * read without the lock */
};

static int	rl_mem_check(struct rl_store *, const struct rl_check *, size_t,
		    struct rl_result *, rl_done_fn, void *);
static void	rl_mem_free(struct rl_store *);

static const struct rl_store_ops rl_mem_ops = {
	.check = rl_mem_check,
	.free = rl_mem_free,
};

/* Returns the 8 bytes at p as a little-endian number. */
static uint64_t
rl_mem__le64(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Returns x rotated left by b bits (0 < b < 64). */
static uint64_t
rl_mem__rotl(uint64_t x, int b)
{
	return x << b | x >> (64 - b);
}

/* One SipHash round on the state v. */
static void
rl_mem__sipround(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = rl_mem__rotl(v[1], 13);
	v[1] ^= v[0];
	v[0] = rl_mem__rotl(v[0], 32);
	v[2] += v[3];
	v[3] = rl_mem__rotl(v[3], 16);
	v[3] ^= v[2];
	v[0] += v[3];
	v[3] = rl_mem__rotl(v[3], 21);
	v[3] ^= v[0];
	v[2] += v[1];
	v[1] = rl_mem__rotl(v[1], 17);
	v[1] ^= v[2];
	v[2] = rl_mem__rotl(v[2], 32);
}

/* Returns SipHash-2-4 of the len bytes at p under the key k. */
static uint64_t
rl_mem__hash(const uint64_t k[2], const char *p, size_t len)
{
	const unsigned char	*s = (const unsigned char *)p;
	size_t			 tail = len & 7, end = len - tail, i;
	uint64_t		 v[4], m;

	v[0] = k[0] ^ UINT64_C(0x736f6d6570736575);
	v[1] = k[1] ^ UINT64_C(0x646f72616e646f6d);
	v[2] = k[0] ^ UINT64_C(0x6c7967656e657261);
	v[3] = k[1] ^ UINT64_C(0x7465646279746573);
	for (i = 0; i < end; i += 8) {
		m = rl_mem__le64(s + i);
		v[3] ^= m;
		rl_mem__sipround(v);
		rl_mem__sipround(v);
		v[0] ^= m;
	}
	/* The last block: the tail bytes, then the length in the top byte. */
	m = (uint64_t)len << 56;
	for (i = 0; i < tail; i++)
		m |= (uint64_t)s[end + i] << (8 * i);
	v[3] ^= m;
	rl_mem__sipround(v);
	rl_mem__sipround(v);
	v[0] ^= m;
	v[2] ^= 0xff;
	for (i = 0; i < 4; i++)
		rl_mem__sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/*
 * Returns 1 when the n checks are within what the store accepts: 1 to
 * RL_CHECKS_MAX checks, keys of at most RL_KEY_MAX bytes, T at least 1,
 * and W and c * T at most RL_MEM_SPAN_MAX.  Returns 0 otherwise.
 */
static int
rl_mem__valid(const struct rl_check *c, size_t n)
{
	size_t i;

	if (n == 0 || n > RL_CHECKS_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		if (c[i].keylen > RL_KEY_MAX || c[i].interval_us == 0 ||
		    c[i].window_us > RL_MEM_SPAN_MAX)
			return 0;
		if (c[i].cost > 0 &&
		    c[i].interval_us > RL_MEM_SPAN_MAX / c[i].cost)
			return 0;
	}
	return 1;
}

/*
 * Unlinks the dead entries of the chain at *pp (TAT <= now) and puts them
 * on *dead, for the caller to free after unlocking.  Called locked.
 */
static void
rl_mem__prune(struct rl_mem *m, struct rl_mem_ent **pp, uint64_t now,
    struct rl_mem_ent **dead)
{
	struct rl_mem_ent *e;

	while ((e = *pp) != NULL) {
		if (e->tat > now) {
			pp = &e->next;
			continue;
		}
		*pp = e->next;
		e->next = *dead;
		*dead = e;
		m->nkey--;
	}
}

/*
 * Returns the live entry of the key, or NULL; dead entries met on the way
 * go to *dead.  Called locked.
 */
static struct rl_mem_ent *
rl_mem__find(struct rl_mem *m, uint64_t hash, const char *key, size_t keylen,
    uint64_t now, struct rl_mem_ent **dead)
{
	struct rl_mem_ent **pp = &m->bucket[hash & (m->nbucket - 1)], *e;

	rl_mem__prune(m, pp, now, dead);
	for (e = *pp; e != NULL; e = e->next)
		if (e->hash == hash && e->keylen == keylen &&
		    memcmp(e->key, key, keylen) == 0)
			return e;
	return NULL;
}

/*
 * Drops every dead entry (to *dead), then moves the live ones to a table
 * of the smallest size, at least RL_MEM_MIN_BUCKETS, that keeps the load
 * factor at or under 1/2.  When that table cannot be allocated the old one
 * stays, pruned.  Called locked.
 */
static void
rl_mem__resize(struct rl_mem *m, uint64_t now, struct rl_mem_ent **dead)
{
	struct rl_mem_ent	**nb, *e, *next;
	size_t			  size, i, j;

	for (i = 0; i < m->nbucket; i++)
		rl_mem__prune(m, &m->bucket[i], now, dead);
	for (size = RL_MEM_MIN_BUCKETS; size / 2 < m->nkey; size *= 2)
		;
	if (size == m->nbucket ||
	    (nb = calloc(size, sizeof(*nb))) == NULL)
		return;
	for (i = 0; i < m->nbucket; i++) {
		for (e = m->bucket[i]; e != NULL; e = next) {
			next = e->next;
			j = e->hash & (size - 1);
			e->next = nb[j];
			nb[j] = e;
		}
	}
	free(m->bucket);
	m->bucket = nb;
	m->nbucket = size;
	m->sweep = 0;
}

/*
 * Prunes the next count buckets from the sweep cursor.  When the cursor
 * wraps and the table is mostly empty (load under 1/8), it shrinks.
 * Called locked.
 */
static void
rl_mem__sweep(struct rl_mem *m, size_t count, uint64_t now,
    struct rl_mem_ent **dead)
{
	while (count-- > 0) {
		rl_mem__prune(m, &m->bucket[m->sweep], now, dead);
		if (++m->sweep < m->nbucket)
			continue;
		m->sweep = 0;
		if (m->nbucket > RL_MEM_MIN_BUCKETS &&
		    m->nkey < m->nbucket / 8)
			rl_mem__resize(m, now, dead);
		return;
	}
}

/* Frees the entries of the list e (linked by next). */
static void
rl_mem__free_list(struct rl_mem_ent *e)
{
	struct rl_mem_ent *next;

	for (; e != NULL; e = next) {
		next = e->next;
		free(e);
	}
}

/*
 * The store's rl_check(): always answers at once (returns 0, never calls
 * done).  RL_ERROR means checks outside what rl_mem__valid() accepts, or
 * no memory for a new key; nothing is counted then.
 *
 * All-or-nothing: the checks run through rl_gcra() on copies of the TATs
 * (a key named twice in one call sees its first check's count), and the
 * copies are written back only when all pass.  Otherwise the copies are
 * reset and only the forced checks are applied and written back.
 */
static int
rl_mem_check(struct rl_store *st, const struct rl_check *c, size_t n,
    struct rl_result *res, rl_done_fn done, void *arg)
{
	struct rl_mem		*m = (struct rl_mem *)st;
	struct rl_mem_ent	*ent[RL_CHECKS_MAX];	/* per first check
							 * on a key: its entry,
							 * NULL if new */
	struct rl_mem_ent	*add[RL_CHECKS_MAX];	/* entries to insert */
	struct rl_mem_ent	*dead = NULL;		/* to free unlocked */
	struct rl_check		 q;
	uint64_t		 hash[RL_CHECKS_MAX], tat[RL_CHECKS_MAX];
	uint64_t		 now, retry = 0, r;
	size_t			 first[RL_CHECKS_MAX];	/* the first check on
							 * the same key */
	size_t			 i, j, k, denied, nadd = 0;

	(void)done;
	(void)arg;
	memset(res, 0, sizeof(*res));
	if (!rl_mem__valid(c, n)) {
		uv_mutex_lock(&m->lock);
		m->st.stats.checks++;
		m->st.stats.errors++;
		uv_mutex_unlock(&m->lock);
		res->status = RL_ERROR;
		return 0;
	}
	for (i = 0; i < n; i++) {
		hash[i] = rl_mem__hash(m->seed, c[i].key, c[i].keylen);
		first[i] = i;
		for (j = 0; j < i; j++) {
			if (first[j] == j && hash[j] == hash[i] &&
			    c[j].keylen == c[i].keylen &&
			    memcmp(c[j].key, c[i].key, c[i].keylen) == 0) {
				first[i] = j;
				break;
			}
		}
	}

	uv_mutex_lock(&m->lock);
	/* Read under the lock, so that commits see a clock that never goes
	 * back. */
	now = uv_hrtime() / 1000;
	m->st.stats.checks++;
	for (i = 0; i < n; i++) {
		if (first[i] != i)
			continue;
		ent[i] = rl_mem__find(m, hash[i], c[i].key, c[i].keylen, now,
		    &dead);
		tat[i] = ent[i] != NULL ? ent[i]->tat : 0;
	}

	for (denied = 0; denied < n; denied++)
		if (!rl_gcra(&tat[first[denied]], now, &c[denied], &retry))
			break;
	if (denied < n) {
		for (i = 0; i < n; i++)
			if (first[i] == i)
				tat[i] = ent[i] != NULL ? ent[i]->tat : 0;
		for (i = 0; i < n; i++)
			if (c[i].force)
				(void)rl_gcra(&tat[first[i]], now, &c[i], &r);
	}

	/* Allocate every new entry before changing anything, so that running
	 * out of memory counts nothing. */
	for (i = 0; i < n; i++) {
		if (first[i] != i || ent[i] != NULL || tat[i] <= now)
			continue;
		if ((add[nadd] = malloc(sizeof(*add[nadd]) +
		    c[i].keylen)) == NULL) {
			while (nadd > 0)
				free(add[--nadd]);
			m->st.stats.errors++;
			uv_mutex_unlock(&m->lock);
			rl_mem__free_list(dead);
			res->status = RL_ERROR;
			return 0;
		}
		add[nadd]->hash = hash[i];
		add[nadd]->tat = tat[i];
		add[nadd]->keylen = c[i].keylen;
		memcpy(add[nadd]->key, c[i].key, c[i].keylen);
		nadd++;
	}
	for (i = 0; i < n; i++)
		if (first[i] == i && ent[i] != NULL)
			ent[i]->tat = tat[i];
	for (k = 0; k < nadd; k++) {
		j = add[k]->hash & (m->nbucket - 1);
		add[k]->next = m->bucket[j];
		m->bucket[j] = add[k];
		m->nkey++;
	}

	if (denied < n) {
		m->st.stats.denied++;
		res->status = RL_DENY;
		res->denied = denied;
		if (c[denied].force) {
			/* rl_gcra() gives no retry for a forced check; it is
			 * when the same check would pass, now that it is
			 * counted. */
			q = c[denied];
			q.force = 0;
			r = tat[first[denied]];
			(void)rl_gcra(&r, now, &q, &retry);
		}
		/* Rounded up: a client waiting retry_ms passes. */
		res->retry_ms = (retry + 999) / 1000;
	} else
		res->status = RL_ALLOW;

	rl_mem__sweep(m, RL_MEM_SWEEP + RL_MEM_SWEEP_ADDED * nadd, now,
	    &dead);
	/* A resize leaves the pointers in ent[] stale: keep it last. */
	if (m->nkey > m->nbucket)
		rl_mem__resize(m, now, &dead);
	uv_mutex_unlock(&m->lock);

	rl_mem__free_list(dead);
	return 0;
}

/* The store's rl_store_free(): frees every entry, the table and st. */
static void
rl_mem_free(struct rl_store *st)
{
	struct rl_mem	*m = (struct rl_mem *)st;
	size_t		 i;

	for (i = 0; i < m->nbucket; i++)
		rl_mem__free_list(m->bucket[i]);
	free(m->bucket);
	uv_mutex_destroy(&m->lock);
	free(m);
}

/*
 * Returns a new, empty in-process store, to release with rl_store_free().
 * Never NULL: aborts when out of memory, as at startup nothing else could
 * be done.
 */
struct rl_store *
rl_mem_new(void)
{
	struct rl_mem	*m;
	unsigned char	 seed[16];

	if ((m = calloc(1, sizeof(*m))) == NULL ||
	    (m->bucket = calloc(RL_MEM_MIN_BUCKETS,
	    sizeof(*m->bucket))) == NULL ||
	    uv_mutex_init(&m->lock) != 0) {
		fprintf(stderr, "rl_mem_new: out of memory or mutexes\n");
		abort();
	}
	m->st.ops = &rl_mem_ops;
	m->nbucket = RL_MEM_MIN_BUCKETS;
	if (uv_random(NULL, NULL, seed, sizeof(seed), 0, NULL) == 0) {
		m->seed[0] = rl_mem__le64(seed);
		m->seed[1] = rl_mem__le64(seed + 8);
	} else {
		/* No entropy source: a weak key is still better than none. */
		m->seed[0] = uv_hrtime();
		m->seed[1] = (uint64_t)(uintptr_t)m ^ m->seed[0] << 17;
	}
	return &m->st;
}

/*
 * Returns the entries of an in-process store, counting the dead ones not
 * removed yet; 0 for another kind of store.
 */
size_t
rl_mem_nkeys(const struct rl_store *st)
{
	/* The lock is the only thing changed; the store stays as it was. */
	struct rl_mem	*m = (struct rl_mem *)(uintptr_t)st;
	size_t		 n;

	if (st->ops != &rl_mem_ops)
		return 0;
	uv_mutex_lock(&m->lock);
	n = m->nkey;
	uv_mutex_unlock(&m->lock);
	return n;
}
