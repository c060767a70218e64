/*
 * match.c: the policy's matchers, built once per policy and then shared
 * read-only by every worker thread.
 *
 * - A CIDR set is two arrays of address ranges, one for IPv4 and one for
 *   IPv6, each sorted and merged (overlapping or adjacent networks become
 *   one range), so a lookup is one binary search.
 * - A domain set is an open-addressing hash table of lowercased names, each
 *   marked "exact" and/or "suffix".  A lookup tries each suffix of the name
 *   that starts after a dot, then the whole name; the hash is computed from
 *   the last octet backwards, so every suffix's hash falls out of one pass.
 * - A pattern is a compiled PCRE2 regex (JIT where available), or for a
 *   plain ASCII string the string itself, compared ignoring case.
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH	8
#include <pcre2.h>

#include "policy.h"

#define DOMAIN_MAX	255		/* longest name looked up */
#define FNV_OFFSET	2166136261u	/* FNV-1a 32-bit offset basis */
#define FNV_PRIME	16777619u	/* FNV-1a 32-bit prime */
#define JIT_STACK_MIN	(32 * 1024)	/* JIT stack, first size */
#define JIT_STACK_MAX	(512 * 1024)	/* JIT stack, largest size */

/* Entry kinds of a domain set. */
#define DOM_EXACT	0x01		/* "example.test": that name */
#define DOM_SUFFIX	0x02		/* ".example.test": names below it */

/* A 128-bit address (IPv4 in lo only), ordered as an unsigned number. */
struct u128 {
	uint64_t	 hi;		/* first 8 octets of an IPv6 address */
	uint64_t	 lo;		/* last 8 octets, or the IPv4 address */
};

/* Every address from first to last, both included. */
struct cidr_range {
	struct u128	 first;		/* lowest address */
	struct u128	 last;		/* highest address */
};

/* Slot of each family in a cidr_set. */
enum { CIDR_V4, CIDR_V6, CIDR__SLOTS };

struct cidr_set {
	struct cidr_range *r[CIDR__SLOTS];	/* ranges per family: sorted,
						 * disjoint, not adjacent;
						 * inside this allocation */
	size_t		 n[CIDR__SLOTS];	/* entries in r[] */
};

/* One name of a domain set; an empty slot has a NULL name. */
struct domain_ent {
	const char	*name;		/* lowercased, no leading or trailing
					 * dot; in domain_set.names */
	size_t		 len;		/* its length */
	uint32_t	 hash;		/* dom_hash() of name */
	unsigned	 kinds;		/* DOM_EXACT | DOM_SUFFIX */
};

struct domain_set {
	struct domain_ent *tab;		/* the hash table; inside this
					 * allocation */
	size_t		 mask;		/* table size - 1 (a power of 2) */
	char		*names;		/* every name, NUL-terminated, one
					 * after another; inside this
					 * allocation */
};

struct pattern {
	pcre2_code	*re;		/* the regex (also a non-ASCII
					 * literal), or NULL for an ASCII
					 * literal */
	int		 jit;		/* re has JIT code: use the fast path */
	int		 fail_matches;	/* a failure to run (a match limit)
					 * counts as a match: a join */
	uint32_t	 opts;		/* regex: the flags it was compiled
					 * with (PCRE2_CASELESS, ...) */
	const char	*src;		/* regex that pattern_join() takes: its
					 * text, in lit after the line name;
					 * else NULL */
	size_t		 srclen;	/* its length */
	size_t		 len;		/* ASCII literal: its length; regex:
					 * the length of its line name, or 0 */
	char		 lit[];		/* ASCII literal: its text; regex: the
					 * line name (pattern_line_name()),
					 * lowercased, then src */
};

/* A network of one of a cidr_map's sets: the ranges' edges, swept. */
struct cidr_edge {
	struct u128	 at;		/* first address in, or first after */
	uint32_t	 id;		/* the set's id */
	int		 open;		/* 1: the range starts at at; 0: it
					 * ended just before */
};

/* Addresses from first up to the next segment's first (or the top): the
 * ids of the sets holding each of them. */
struct cidr_seg {
	struct u128	 first;		/* the segment's lowest address */
	uint32_t	 off;		/* its ids: cidr_map.ids[off ...] */
	uint32_t	 n;		/* how many (0: none) */
};

struct cidr_map {
	struct cidr_seg	*seg[CIDR__SLOTS];	/* per family, ascending; the
						 * addresses below the first
						 * segment are in no set */
	size_t		 nseg[CIDR__SLOTS];	/* entries in seg[] */
	uint32_t	*ids;		/* every segment's ids, ascending
					 * within a segment */
};

struct pattern_scratch {
	pcre2_match_data	*md;	/* one ovector pair: we only need
					 * match or no match */
	pcre2_match_context	*mctx;	/* points at stack, if any */
	pcre2_jit_stack		*stack;	/* JIT stack larger than the default
					 * 32 KiB, or NULL (no JIT) */
};

/* Returns c lowercased if it is an ASCII capital, else c. */
static unsigned char
m_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* ---- CIDR sets ---------------------------------------------------------- */

/* Returns -1, 0 or 1 as a is below, equal to or above b. */
static int
u128_cmp(struct u128 a, struct u128 b)
{
	if (a.hi != b.hi)
		return a.hi < b.hi ? -1 : 1;
	return a.lo < b.lo ? -1 : a.lo > b.lo;
}

/* Returns the first n octets of p as a number, network order. */
static uint64_t
u64_be(const unsigned char *p, size_t n)
{
	uint64_t	 v = 0;
	size_t		 i;

	for (i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* Returns the address of octets a (4 for IPv4, else 16) as a number. */
static struct u128
u128_addr(const unsigned char *a, int v4)
{
	struct u128	 u;

	if (v4) {
		u.hi = 0;
		u.lo = u64_be(a, 4);
	} else {
		u.hi = u64_be(a, 8);
		u.lo = u64_be(a + 8, 8);
	}
	return u;
}

/* Returns a mask of the low "bits" bits (0 to 128). */
static struct u128
u128_low_bits(unsigned bits)
{
	struct u128	 m;

	m.lo = bits >= 64 ? UINT64_MAX : bits ? (UINT64_C(1) << bits) - 1 : 0;
	m.hi = bits >= 128 ? UINT64_MAX :
	    bits > 64 ? (UINT64_C(1) << (bits - 64)) - 1 : 0;
	return m;
}

const char *
cidr_parse(const char *text, struct cidr *c)
{
	static const unsigned char	 mapped[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};
	char		 host[INET6_ADDRSTRLEN];
	const char	*slash, *p;
	struct u128	 a, m;
	size_t		 hlen;
	unsigned	 max;

	memset(c, 0, sizeof(*c));
	slash = strchr(text, '/');
	hlen = slash ? (size_t)(slash - text) : strlen(text);
	if (hlen == 0 || hlen >= sizeof(host))
		return "not an IPv4 or IPv6 address";
	memcpy(host, text, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, c->addr) == 1)
		c->family = AF_INET;
	else if (inet_pton(AF_INET6, host, c->addr) == 1)
		c->family = AF_INET6;
	else
		return "not an IPv4 or IPv6 address";
	max = c->family == AF_INET ? 32 : 128;
	c->prefix = max;
	if (slash != NULL) {
		c->prefix = 0;
		for (p = slash + 1; *p >= '0' && *p <= '9' && p - slash <= 3;
		    p++)
			c->prefix = c->prefix * 10 + (unsigned)(*p - '0');
		if (p == slash + 1 || *p != '\0' || c->prefix > max)
			return c->family == AF_INET ? "the prefix length must "
			    "be a number from 0 to 32" : "the prefix length "
			    "must be a number from 0 to 128";
	}
	a = u128_addr(c->addr, c->family == AF_INET);
	m = u128_low_bits(max - c->prefix);
	if ((a.hi & m.hi) != 0 || (a.lo & m.lo) != 0)
		return "address bits are set past the prefix length";

	if (c->family == AF_INET6 && c->prefix >= 96 &&
	    memcmp(c->addr, mapped, sizeof(mapped)) == 0) {
		memmove(c->addr, c->addr + 12, 4);
		memset(c->addr + 4, 0, 12);
		c->family = AF_INET;
		c->prefix -= 96;
	}
	return NULL;
}

/* qsort() order of ranges: by first address. */
static int
cidr_range_cmp(const void *a, const void *b)
{
	const struct cidr_range	*x = a, *y = b;

	return u128_cmp(x->first, y->first);
}

/*
 * Sorts the n ranges of r and merges overlapping and adjacent ones in
 * place.  Returns how many are left.
 */
static size_t
cidr_merge(struct cidr_range *r, size_t n)
{
	struct u128	 next;
	size_t		 i, out;

	if (n == 0)
		return 0;
	qsort(r, n, sizeof(*r), cidr_range_cmp);
	for (i = 1, out = 0; i < n; i++) {
		/* The address after r[out].last, unless that is the top. */
		next = r[out].last;
		if (++next.lo == 0)
			next.hi++;
		if ((next.hi != 0 || next.lo != 0) &&
		    u128_cmp(r[i].first, next) > 0) {
			r[++out] = r[i];
			continue;
		}
		if (u128_cmp(r[i].last, r[out].last) > 0)
			r[out].last = r[i].last;
	}
	return out + 1;
}

struct cidr_set *
cidr_set_new(const struct cidr *v, size_t n)
{
	struct cidr_set		*set;
	struct cidr_range	*r;
	size_t			 i, n4 = 0, k[CIDR__SLOTS];
	int			 s;
	unsigned		 bits;

	for (i = 0; i < n; i++)
		n4 += v[i].family == AF_INET;
	if ((set = calloc(1, sizeof(*set) + n * sizeof(*r))) == NULL)
		return NULL;
	set->r[CIDR_V4] = (struct cidr_range *)(set + 1);
	set->r[CIDR_V6] = set->r[CIDR_V4] + n4;
	k[CIDR_V4] = k[CIDR_V6] = 0;
	for (i = 0; i < n; i++) {
		s = v[i].family == AF_INET ? CIDR_V4 : CIDR_V6;
		bits = (s == CIDR_V4 ? 32 : 128) - v[i].prefix;
		r = &set->r[s][k[s]++];
		r->first = u128_addr(v[i].addr, s == CIDR_V4);
		r->last = u128_low_bits(bits);
		r->last.hi |= r->first.hi;
		r->last.lo |= r->first.lo;
	}
	for (s = 0; s < CIDR__SLOTS; s++)
		set->n[s] = cidr_merge(set->r[s], k[s]);
	return set;
}

void
cidr_set_free(struct cidr_set *set)
{
	free(set);
}

/*
 * Sets *key to the address of sa as a number and returns its family's
 * slot (CIDR_V4 for an IPv4-mapped IPv6 address too), or -1 when sa is
 * NULL or of another family.
 */
static int
cidr_key(const struct sockaddr *sa, struct u128 *key)
{
	const struct sockaddr_in6	*sin6;
	const struct sockaddr_in	*sin;
	const unsigned char		*a;
	int				 s;

	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		sin = (const struct sockaddr_in *)sa;
		key->hi = 0;
		key->lo = ntohl(sin->sin_addr.s_addr);
		return CIDR_V4;
	}
	if (sa->sa_family != AF_INET6)
		return -1;
	sin6 = (const struct sockaddr_in6 *)sa;
	a = sin6->sin6_addr.s6_addr;
	s = IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) ? CIDR_V4 : CIDR_V6;
	*key = u128_addr(s == CIDR_V4 ? a + 12 : a, s == CIDR_V4);
	return s;
}

int
cidr_set_match(const struct cidr_set *set, const struct sockaddr *sa)
{
	const struct cidr_range		*r;
	struct u128			 key;
	size_t				 lo, hi, mid;
	int				 s;

	if (set == NULL || (s = cidr_key(sa, &key)) == -1)
		return 0;

	/* The last range starting at or below key is the only candidate. */
	r = set->r[s];
	for (lo = 0, hi = set->n[s]; lo < hi; ) {
		mid = lo + (hi - lo) / 2;
		if (u128_cmp(r[mid].first, key) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && u128_cmp(key, r[lo - 1].last) <= 0;
}

/* ---- CIDR maps ---------------------------------------------------------- */

/* qsort() order of edges: by address. */
static int
cidr_edge_cmp(const void *a, const void *b)
{
	const struct cidr_edge	*x = a, *y = b;

	return u128_cmp(x->at, y->at);
}

/*
 * Builds the segments of one family from the n edges of e (sorted here):
 * between two edges the sets holding an address do not change.  Appends
 * each segment's ids to *ids (*nids used, *idcap allocated).  Returns the
 * segments (malloc'd; *nseg of them), or NULL when there are none.
 */
static struct cidr_seg *
cidr_map_sweep(struct cidr_edge *e, size_t n, uint32_t **ids, size_t *nids,
    size_t *idcap, size_t *nseg)
{
	struct cidr_seg	*seg = NULL, *tseg;
	uint32_t	*act, *tids;
	size_t		 i, j, k, nact = 0, segcap = 0;

	*nseg = 0;
	if (n == 0)
		return NULL;
	if ((act = malloc(n * sizeof(*act))) == NULL)
		return NULL;
	qsort(e, n, sizeof(*e), cidr_edge_cmp);
	for (i = 0; i < n; i = j) {
		/* Every edge at this address; a set's own ranges neither
		 * overlap nor touch, so an id opens or closes once here. */
		for (j = i; j < n && u128_cmp(e[j].at, e[i].at) == 0; j++) {
			for (k = 0; k < nact && act[k] < e[j].id; k++)
				;
			if (e[j].open) {
				memmove(act + k + 1, act + k,
				    (nact - k) * sizeof(*act));
				act[k] = e[j].id;
				nact++;
			} else if (k < nact && act[k] == e[j].id) {
				memmove(act + k, act + k + 1,
				    (nact - k - 1) * sizeof(*act));
				nact--;
			}
		}
		/* A new segment, unless the sets are those of the last. */
		if (*nseg > 0 ? seg[*nseg - 1].n == nact &&
		    memcmp(*ids + seg[*nseg - 1].off, act,
		    nact * sizeof(*act)) == 0 : nact == 0)
			continue;
		if (*nseg == segcap) {
			segcap = segcap ? 2 * segcap : 16;
			if ((tseg = realloc(seg, segcap * sizeof(*seg))) == NULL)
				goto fail;
			seg = tseg;
		}
		while (*nids + nact > *idcap) {
			*idcap = *idcap ? 2 * *idcap : 64;
			if ((tids = realloc(*ids, *idcap * sizeof(**ids))) ==
			    NULL)
				goto fail;
			*ids = tids;
		}
		seg[*nseg].first = e[i].at;
		seg[*nseg].off = (uint32_t)*nids;
		seg[*nseg].n = (uint32_t)nact;
		memcpy(*ids + *nids, act, nact * sizeof(*act));
		*nids += nact;
		(*nseg)++;
	}
	free(act);
	return seg;
fail:
	free(act);
	free(seg);
	*nseg = SIZE_MAX;
	return NULL;
}

struct cidr_map *
cidr_map_new(const struct cidr_set *const *sets, const uint32_t *ids,
    size_t n)
{
	struct cidr_map		*map;
	struct cidr_edge	*e[CIDR__SLOTS];
	const struct cidr_range	*r;
	size_t			 i, k, ne[CIDR__SLOTS] = { 0 };
	size_t			 nids = 0, idcap = 0;
	int			 s, ok = 1;

	if ((map = calloc(1, sizeof(*map))) == NULL)
		return NULL;
	for (s = 0; s < CIDR__SLOTS; s++) {
		for (i = k = 0; i < n; i++)
			k += sets[i]->n[s];
		if ((e[s] = malloc((2 * k + 1) * sizeof(*e[s]))) == NULL)
			ok = 0;
	}
	for (s = 0; ok && s < CIDR__SLOTS; s++) {
		for (i = 0; i < n; i++)
			for (k = 0; k < sets[i]->n[s]; k++) {
				r = &sets[i]->r[s][k];
				e[s][ne[s]].at = r->first;
				e[s][ne[s]].id = ids[i];
				e[s][ne[s]++].open = 1;
				/* It closes at last + 1, unless last is the
				 * family's top address. */
				e[s][ne[s]].at = r->last;
				if (s == CIDR_V4 ? r->last.lo == UINT32_MAX :
				    r->last.hi == UINT64_MAX &&
				    r->last.lo == UINT64_MAX)
					continue;
				if (++e[s][ne[s]].at.lo == 0)
					e[s][ne[s]].at.hi++;
				e[s][ne[s]].id = ids[i];
				e[s][ne[s]++].open = 0;
			}
		map->seg[s] = cidr_map_sweep(e[s], ne[s], &map->ids, &nids,
		    &idcap, &map->nseg[s]);
		if (map->nseg[s] == SIZE_MAX) {
			map->nseg[s] = 0;
			ok = 0;
		}
	}
	for (s = 0; s < CIDR__SLOTS; s++)
		free(e[s]);
	if (!ok) {
		cidr_map_free(map);
		return NULL;
	}
	return map;
}

void
cidr_map_free(struct cidr_map *map)
{
	int	 s;

	if (map == NULL)
		return;
	for (s = 0; s < CIDR__SLOTS; s++)
		free(map->seg[s]);
	free(map->ids);
	free(map);
}

size_t
cidr_map_lookup(const struct cidr_map *map, const struct sockaddr *sa,
    const uint32_t **ids)
{
	const struct cidr_seg	*seg;
	struct u128		 key;
	size_t			 lo, hi, mid;
	int			 s;

	*ids = NULL;
	if (map == NULL || (s = cidr_key(sa, &key)) == -1)
		return 0;
	/* The last segment starting at or below key holds it. */
	seg = map->seg[s];
	for (lo = 0, hi = map->nseg[s]; lo < hi; ) {
		mid = lo + (hi - lo) / 2;
		if (u128_cmp(seg[mid].first, key) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return 0;
	*ids = map->ids + seg[lo - 1].off;
	return seg[lo - 1].n;
}

/* ---- Domain sets -------------------------------------------------------- */

/* Returns the hash h extended by one more octet (FNV-1a, fed backwards). */
static uint32_t
dom_step(uint32_t h, unsigned char c)
{
	return (h ^ c) * FNV_PRIME;
}

/* Returns the hash of s (len octets, already lowercase), last octet first. */
static uint32_t
dom_hash(const char *s, size_t len)
{
	uint32_t	 h = FNV_OFFSET;

	while (len > 0)
		h = dom_step(h, (unsigned char)s[--len]);
	return h;
}

/*
 * Returns the slot of set holding name (len octets, hash h), or the empty
 * slot where it would go.
 */
static struct domain_ent *
dom_slot(const struct domain_set *set, const char *name, size_t len,
    uint32_t h)
{
	struct domain_ent	*e;
	size_t			 i;

	for (i = h & set->mask; ; i = (i + 1) & set->mask) {
		e = &set->tab[i];
		if (e->name == NULL || (e->hash == h && e->len == len &&
		    memcmp(e->name, name, len) == 0))
			return e;
	}
}

struct domain_set *
domain_set_new(const char *const *names, size_t n)
{
	struct domain_set	*set;
	struct domain_ent	*e;
	const char		*s;
	size_t			 i, j, len, size = 1, total = 0;
	uint32_t		 h;
	unsigned		 kind;
	char			*out;

	for (i = 0; i < n; i++)
		total += strlen(names[i]) + 1;
	/* At most half full, so that probes stay short. */
	while (size < 2 * n + 2)
		size *= 2;
	if ((set = calloc(1, sizeof(*set) + size * sizeof(*e) + total)) ==
	    NULL)
		return NULL;
	set->tab = (struct domain_ent *)(set + 1);
	set->mask = size - 1;
	set->names = out = (char *)(set->tab + size);
	for (i = 0; i < n; i++) {
		s = names[i];
		kind = DOM_EXACT;
		if (s[0] == '.') {
			kind = DOM_SUFFIX;
			s++;
		}
		len = strlen(s);
		if (len > 0 && s[len - 1] == '.')
			len--;
		for (j = 0; j < len; j++)
			out[j] = (char)m_lower((unsigned char)s[j]);
		out[len] = '\0';
		h = dom_hash(out, len);
		if ((e = dom_slot(set, out, len, h))->name == NULL) {
			e->name = out;
			e->len = len;
			e->hash = h;
			out += len + 1;
		}
		e->kinds |= kind;
	}
	return set;
}

void
domain_set_free(struct domain_set *set)
{
	free(set);
}

/* Nonzero when set holds name (len octets, hash h) with a kind in kinds. */
static int
dom_has(const struct domain_set *set, const char *name, size_t len,
    uint32_t h, unsigned kinds)
{
	const struct domain_ent	*e = dom_slot(set, name, len, h);

	return e->name != NULL && (e->kinds & kinds) != 0;
}

int
domain_set_match(const struct domain_set *set, const char *name, size_t len)
{
	char		 buf[DOMAIN_MAX];
	uint32_t	 h = FNV_OFFSET;
	size_t		 i;

	if (set == NULL || name == NULL)
		return 0;
	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > sizeof(buf))
		return 0;
	for (i = 0; i < len; i++)
		buf[i] = (char)m_lower((unsigned char)name[i]);

	/* Right to left: at each dot, the part after it is a suffix. */
	for (i = len; i-- > 0; ) {
		if (buf[i] == '.' &&
		    dom_has(set, buf + i + 1, len - i - 1, h, DOM_SUFFIX))
			return 1;
		h = dom_step(h, (unsigned char)buf[i]);
	}
	return dom_has(set, buf, len, h, DOM_EXACT);
}

/* ---- Patterns ----------------------------------------------------------- */

/* Nonzero when c may be part of a header field name in a line name. */
static int
pat_name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-';
}

/*
 * Returns the length of the line name of the regex re (len octets,
 * compiled with opts): the N of a regex "^N:..." that can match no subject
 * but one starting with "N:" (ASCII case aside), N being letters, digits
 * and '-'; 0 when the regex is not certainly one.  It is not when the
 * rest has an alternative at its top level ("^N:a|b" matches "b"), when
 * the ':' is quantified, or under the m flag (^ after any newline); a
 * literal (PCRE2_LITERAL) has none.  The scan of the rest is deliberately
 * simple: where it could be fooled (a '#' comment under x, \Q...\E,
 * (?#...), \c taking the next character, a '[' within a class) it gives
 * up, and so does an unbalanced regex.
 */
static size_t
pat_line_name(const char *re, size_t len, uint32_t opts)
{
	size_t		 i, name;
	long		 depth = 0;

	if (opts & (PCRE2_MULTILINE | PCRE2_EXTENDED | PCRE2_LITERAL) ||
	    len < 3 || re[0] != '^')
		return 0;
	for (i = 1; i < len && pat_name_char((unsigned char)re[i]); i++)
		;
	if (i == 1 || i == len || re[i] != ':')
		return 0;
	name = i - 1;
	if (++i < len && (re[i] == '?' || re[i] == '*' || re[i] == '+' ||
	    re[i] == '{'))
		return 0;
	for (; i < len; i++) {
		switch (re[i]) {
		case '\\':
			if (++i < len && (re[i] == 'Q' || re[i] == 'E' ||
			    re[i] == 'c'))
				return 0;
			break;
		case '[':
			/* A class: "]" first (after "^") is one of it. */
			if (++i < len && re[i] == '^')
				i++;
			if (i < len && re[i] == ']')
				i++;
			for (; i < len && re[i] != ']'; i++)
				if (re[i] == '[' || (re[i] == '\\' &&
				    (++i >= len || re[i] == 'Q' ||
				    re[i] == 'E' || re[i] == 'c')))
					return 0;
			if (i >= len)
				return 0;
			break;
		case '(':
			if (i + 2 < len && re[i + 1] == '?' && re[i + 2] == '#')
				return 0;
			depth++;
			break;
		case ')':
			if (--depth < 0)
				return 0;
			break;
		case '|':
			if (depth == 0)
				return 0;
			break;
		case '#':
			return 0;
		}
	}
	return depth == 0 ? name : 0;
}

/*
 * Returns nonzero when the regex re (len octets, compiled with opts) means
 * the same as an alternative "(?flags:re)" of a larger regex.  It does not
 * when it refers to groups by number or name, since they are numbered
 * anew there (backreferences, subroutine calls, conditions, named groups),
 * when it has verbs or start options ("(*"), which act on the whole match,
 * or callouts, or when it could run past its end: \Q, or '#' and the x
 * flag (comments to the end of the line).  The scan is deliberately
 * simple, so a few regexes that could are refused too.
 */
static int
pat_joinable(const char *re, size_t len, uint32_t opts)
{
	size_t	 i;

	if (opts & (PCRE2_EXTENDED | PCRE2_LITERAL))
		return 0;
	for (i = 0; i < len; i++) {
		if (re[i] == '#')
			return 0;
		if (re[i] == '\\') {
			if (++i < len && strchr("QE123456789gk", re[i]) != NULL &&
			    re[i] != '\0')
				return 0;
			continue;
		}
		if (re[i] != '(' || i + 1 >= len)
			continue;
		if (re[i + 1] == '*')
			return 0;
		if (re[i + 1] != '?' || i + 2 >= len)
			continue;
		if (strchr("P&R(C'0123456789+", re[i + 2]) != NULL &&
		    re[i + 2] != '\0')
			return 0;
		if ((re[i + 2] == '-' || re[i + 2] == '<') && i + 3 < len &&
		    re[i + 3] != '=' && re[i + 3] != '!' &&
		    (re[i + 2] == '<' || (re[i + 3] >= '0' && re[i + 3] <= '9')))
			return 0;
	}
	return 1;
}

/*
 * Returns a new pattern of the regex re (len octets) compiled with PCRE2
 * options opts, in UTF-8 mode when re is valid UTF-8, and JIT-compiled if
 * the library can.  Returns NULL with PCRE2's message and the offset in
 * err when it does not compile.  The caller frees it with pattern_free().
 */
static struct pattern *
pat_compile(const char *re, size_t len, uint32_t opts, char *err,
    size_t errsize)
{
	struct pattern	*p;
	PCRE2_UCHAR	 msg[160];
	PCRE2_SIZE	 off;
	size_t		 name = pat_line_name(re, len, opts), i;
	uint32_t	 args = 0;
	int		 ec, join = pat_joinable(re, len, opts);

	if ((p = calloc(1, sizeof(*p) + name + 1 + (join ? len + 1 : 0))) ==
	    NULL) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	for (i = 0; i < name; i++)
		p->lit[i] = (char)m_lower((unsigned char)re[1 + i]);
	p->len = name;
	p->opts = opts;
	/* MATCH_INVALID_UTF: subjects from the network may be any octets,
	 * and the JIT fast path does not check them. */
	p->re = pcre2_compile((PCRE2_SPTR)re, len,
	    opts | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
	if (p->re == NULL && ec <= PCRE2_ERROR_UTF8_ERR1 &&
	    ec >= PCRE2_ERROR_UTF8_ERR21)
		p->re = pcre2_compile((PCRE2_SPTR)re, len, opts, &ec, &off,
		    NULL);
	if (p->re == NULL) {
		if (pcre2_get_error_message(ec, msg, sizeof(msg)) < 0)
			snprintf((char *)msg, sizeof(msg), "error %d", ec);
		snprintf(err, errsize, "%s at offset %zu of the regex",
		    (const char *)msg, (size_t)off);
		free(p);
		return NULL;
	}
	/* No JIT (not built in, or no executable memory): interpreter. */
	p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
	/* A join is compiled in UTF-8 mode: only regexes that are. */
	if (join && pcre2_pattern_info(p->re, PCRE2_INFO_ARGOPTIONS, &args) ==
	    0 && (args & PCRE2_UTF)) {
		memcpy(p->lit + name + 1, re, len);
		p->src = p->lit + name + 1;
		p->srclen = len;
	}
	return p;
}

int
pattern_joinable(const struct pattern *p)
{
	return p != NULL && p->src != NULL;
}

struct pattern *
pattern_join(const struct pattern *const *v, size_t n)
{
	struct pattern	*p;
	char		*text, *t;
	size_t		 i, len = 0;
	PCRE2_SIZE	 off;
	int		 ec;

	for (i = 0; i < n; i++) {
		if (v[i] == NULL || v[i]->src == NULL)
			return NULL;
		len += v[i]->srclen + sizeof("|(?ims:)");
	}
	if (n == 0 || (text = malloc(len + 1)) == NULL)
		return NULL;
	/* "(?i:a)|(?:b)|...": each with its own flags, none leaking out. */
	for (i = 0, t = text; i < n; i++) {
		if (i > 0)
			*t++ = '|';
		t += sprintf(t, "(?%s%s%s:", v[i]->opts & PCRE2_CASELESS ? "i" :
		    "", v[i]->opts & PCRE2_MULTILINE ? "m" : "",
		    v[i]->opts & PCRE2_DOTALL ? "s" : "");
		memcpy(t, v[i]->src, v[i]->srclen);
		t += v[i]->srclen;
		*t++ = ')';
	}
	if ((p = calloc(1, sizeof(*p) + 1)) == NULL) {
		free(text);
		return NULL;
	}
	p->re = pcre2_compile((PCRE2_SPTR)text, (size_t)(t - text),
	    PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
	free(text);
	if (p->re == NULL) {
		free(p);
		return NULL;
	}
	p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
	p->fail_matches = 1;
	return p;
}

struct pattern *
pattern_new(const char *text, size_t len, char *err, size_t errsize)
{
	static const char	 flags[] = "imsx";
	static const uint32_t	 flagopts[] = {
		PCRE2_CASELESS, PCRE2_MULTILINE, PCRE2_DOTALL, PCRE2_EXTENDED
	};
	struct pattern		*p;
	const char		*end, *f;
	uint32_t		 opts = 0;
	size_t			 i;
	int			 ascii = 1;

	if (len > 0 && text[0] == '/') {
		for (end = text + len - 1; end > text && *end != '/'; end--)
			;
		if (end == text) {
			snprintf(err, errsize, "a regex needs a closing '/' "
			    "(write /regex/flags)");
			return NULL;
		}
		for (i = (size_t)(end - text) + 1; i < len; i++) {
			if (text[i] == '\0' ||
			    (f = strchr(flags, text[i])) == NULL) {
				snprintf(err, errsize, "unknown regex flag "
				    "'%c' (the flags are i, m, s and x)",
				    text[i] >= 0x20 && text[i] < 0x7f ?
				    text[i] : '?');
				return NULL;
			}
			opts |= flagopts[f - flags];
		}
		return pat_compile(text + 1, (size_t)(end - text) - 1, opts,
		    err, errsize);
	}

	for (i = 0; i < len; i++)
		ascii &= (unsigned char)text[i] < 0x80;
	if (!ascii)	/* Unicode case folding is PCRE2's business. */
		return pat_compile(text, len, PCRE2_LITERAL | PCRE2_CASELESS |
		    PCRE2_ANCHORED | PCRE2_ENDANCHORED, err, errsize);
	if ((p = calloc(1, sizeof(*p) + len + 1)) == NULL) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	memcpy(p->lit, text, len);
	p->len = len;
	return p;
}

const char *
pattern_literal(const struct pattern *p, size_t *len)
{
	if (p == NULL || p->re != NULL)
		return NULL;
	*len = p->len;
	return p->lit;
}

const char *
pattern_line_name(const struct pattern *p, size_t *len)
{
	if (p == NULL || p->re == NULL || p->len == 0)
		return NULL;
	*len = p->len;
	return p->lit;
}

void
pattern_free(struct pattern *p)
{
	if (p == NULL)
		return;
	pcre2_code_free(p->re);
	free(p);
}

struct pattern_scratch *
pattern_scratch_new(void)
{
	struct pattern_scratch	*sc;

	if ((sc = calloc(1, sizeof(*sc))) == NULL)
		return NULL;
	sc->md = pcre2_match_data_create(1, NULL);
	sc->mctx = pcre2_match_context_create(NULL);
	if (sc->md == NULL || sc->mctx == NULL) {
		pattern_scratch_free(sc);
		return NULL;
	}
	/* NULL without JIT support: the default stack is then unused. */
	if ((sc->stack = pcre2_jit_stack_create(JIT_STACK_MIN, JIT_STACK_MAX,
	    NULL)) != NULL)
		pcre2_jit_stack_assign(sc->mctx, NULL, sc->stack);
	return sc;
}

void
pattern_scratch_free(struct pattern_scratch *sc)
{
	if (sc == NULL)
		return;
	pcre2_match_data_free(sc->md);
	pcre2_match_context_free(sc->mctx);
	pcre2_jit_stack_free(sc->stack);
	free(sc);
}

int
pattern_match(const struct pattern *p, const char *subject, size_t len,
    struct pattern_scratch *sc)
{
	size_t	 i;
	int	 rc;

	if (p->re == NULL) {
		if (len != p->len)
			return 0;
		for (i = 0; i < len; i++)
			if (m_lower((unsigned char)subject[i]) !=
			    m_lower((unsigned char)p->lit[i]))
				return 0;
		return 1;
	}
	/* PCRE2 before 10.43 refuses a NULL subject even when empty. */
	if (subject == NULL)
		subject = "";
	if (p->jit)
		rc = pcre2_jit_match(p->re, (PCRE2_SPTR)subject, len, 0, 0,
		    sc->md, sc->mctx);
	else
		rc = pcre2_match(p->re, (PCRE2_SPTR)subject, len, 0, 0, sc->md,
		    sc->mctx);
	/* 0 would mean a match with too small an ovector: still a match. */
	return rc >= 0 || (p->fail_matches && rc != PCRE2_ERROR_NOMATCH);
}
