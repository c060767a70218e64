/*
 * ruleindex.c: the rules of each stage, filed so that a stage finds the
 * few that may match a session instead of trying a thousand.
 *
 * Each rule is filed once, under the first of these that it has:
 *   - an ASCII literal on the header, recipient, sender, HELO name or
 *     reverse name: in one hash table of (stage, key, lowercased literal)
 *     -> the rules' indexes; a literal matches its whole subject, ignoring
 *     ASCII case, so only the rules filed under the subject's own text can
 *     match;
 *   - a client network list: in the stage's cidr_map, which gives the
 *     rules whose networks hold the client's address;
 *   - a header regex that can only match lines of one field name
 *     ("/^Subject:.../"): in the hash table under (stage, header name,
 *     that name), where the regexes of one name are joined as below;
 *   - otherwise: in the stage's list of rules tried at every turn; but
 *     the rules with a regex on the same key (the first of the header,
 *     recipient, sender, HELO name and reverse name that has one it can
 *     join) are tried in groups of up to IDX_JOIN_MAX, each with the join
 *     of their regexes on that key (pattern_join()): when it does not
 *     match, none of the group can, and it is left out.  One regex run
 *     instead of up to 32 is what keeps a hundred regexes cheap.
 * The rest of a rule's matchers are the caller's business: it runs them
 * all on each rule it tries.  Every list is in rule (file) order.
 */

#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "yamlutil.h"

#define FNV_OFFSET	2166136261u	/* FNV-1a 32-bit offset basis */
#define FNV_PRIME	16777619u	/* FNV-1a 32-bit prime */

#define IDX_JOIN_MAX	32		/* regexes in one join */

/* How a rule is filed, besides the keys (enum pol_key). */
#define IDX_NETS	POL_KEY__COUNT		/* under its networks */
#define IDX_LINEAR	(POL_KEY__COUNT + 1)	/* not: always tried */

/* One (stage, key, text) of the hash table; an empty slot has NULL text. */
struct idx_ent {
	const char	*text;		/* the key's text, lowercased; in
					 * pol_index.pool */
	uint32_t	 hash;		/* idx_hash() of stage, key and text */
	uint32_t	 len;		/* length of text */
	uint32_t	 off;		/* its rules: pol_index.ids[off ...] */
	uint32_t	 n;		/* how many */
	uint8_t		 stage;		/* enum pol_stage */
	uint8_t		 key;		/* enum pol_key */
	struct pattern	*join;		/* POL_KEY_HEADER_NAME: the join of
					 * its rules' header regexes (the
					 * rules are left out when it does
					 * not match), or NULL */
};

/* A group of the rules tried at every turn, and the join of their
 * regexes on one key. */
struct idx_join {
	struct pattern		*join;		/* matches what one of their
						 * regexes on key may */
	unsigned		 key;		/* enum pol_key */
	const uint32_t		*ids;		/* the rules, in pol_index.ids */
	size_t			 n;		/* how many */
};

/* What a stage looks up. */
struct idx_stage {
	unsigned		 keys;		/* 1 << POL_KEY_*: the keys some
						 * rule of the stage is filed
						 * under */
	const uint32_t		*linear;	/* the rules tried at every turn,
						 * in pol_index.ids */
	size_t			 nlinear;	/* how many */
	struct cidr_map		*nets;		/* the rules filed under their
						 * networks (ids: the rules'
						 * indexes), or NULL */
	struct idx_join		 joins[POL_JOINS_MAX];	/* the groups of the
						 * rules tried at every turn */
	size_t			 njoins;	/* entries used in joins */
};

struct pol_index {
	struct idx_stage	 st[POL__STAGES];	/* per stage */
	struct idx_ent		*tab;		/* the hash table */
	size_t			 mask;		/* its size - 1 (a power of 2) */
	uint32_t		*ids;		/* the rule lists, one after
						 * another */
	char			*pool;		/* the keys' texts */
};

/* Returns c lowercased if it is an ASCII capital, else c. */
static unsigned char
idx_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Returns the hash of stage st, key k and s (len octets), lowercased. */
static uint32_t
idx_hash(unsigned st, unsigned k, const char *s, size_t len)
{
	uint32_t	 h = (FNV_OFFSET ^ (st << 3 | k)) * FNV_PRIME;
	size_t		 i;

	for (i = 0; i < len; i++)
		h = (h ^ idx_lower((unsigned char)s[i])) * FNV_PRIME;
	return h;
}

/*
 * Returns the slot of (st, k, s) (len octets, any case; hash h), or the
 * empty slot where it would go.
 */
static struct idx_ent *
idx_slot(const struct pol_index *ix, unsigned st, unsigned k, const char *s,
    size_t len, uint32_t h)
{
	struct idx_ent	*e;
	size_t		 i, j;

	for (i = h & ix->mask; ; i = (i + 1) & ix->mask) {
		e = &ix->tab[i];
		if (e->text == NULL)
			return e;
		if (e->hash != h || e->len != len || e->stage != st ||
		    e->key != k)
			continue;
		for (j = 0; j < len; j++)
			if (idx_lower((unsigned char)s[j]) !=
			    (unsigned char)e->text[j])
				break;
		if (j == len)
			return e;
	}
}

/*
 * Returns how rule r is filed: a key (with its text in *text, *len
 * octets), IDX_NETS or IDX_LINEAR.
 */
static unsigned
idx_file(const struct pol_rule *r, const char **text, size_t *len)
{
	const struct pol_match	*m = &r->match;
	const struct {
		const struct pattern	*p;
		enum pol_key		 key;
	} lits[] = {
		/* The fields that vary most first: the most selective. */
		{ m->header, POL_KEY_HEADER },
		{ m->recipient, POL_KEY_RECIPIENT },
		{ m->sender, POL_KEY_SENDER },
		{ m->helo, POL_KEY_HELO },
		{ m->client_name, POL_KEY_CLIENT_NAME },
	};
	size_t			 i;

	for (i = 0; i < sizeof(lits) / sizeof(lits[0]); i++)
		if ((*text = pattern_literal(lits[i].p, len)) != NULL)
			return lits[i].key;
	if (m->client_net != NULL)
		return IDX_NETS;
	if ((*text = pattern_line_name(m->header, len)) != NULL)
		return POL_KEY_HEADER_NAME;
	return IDX_LINEAR;
}

/* The pattern of m on key k (not POL_KEY_HEADER_NAME). */
static const struct pattern *
idx_pattern(const struct pol_match *m, unsigned k)
{
	switch (k) {
	case POL_KEY_CLIENT_NAME:
		return m->client_name;
	case POL_KEY_HELO:
		return m->helo;
	case POL_KEY_SENDER:
		return m->sender;
	case POL_KEY_RECIPIENT:
		return m->recipient;
	case POL_KEY_HEADER:
		return m->header;
	}
	return NULL;
}

/* The keys a rule's regex is joined on, in the order they are chosen. */
static const unsigned idx_join_keys[] = {
	POL_KEY_HEADER, POL_KEY_RECIPIENT, POL_KEY_SENDER, POL_KEY_HELO,
	POL_KEY_CLIENT_NAME,
};

/* Returns the key whose regex of r is joined, or IDX_LINEAR for none. */
static unsigned
idx_join_key(const struct pol_rule *r)
{
	size_t	 i;

	for (i = 0; i < sizeof(idx_join_keys) / sizeof(idx_join_keys[0]); i++)
		if (pattern_joinable(idx_pattern(&r->match, idx_join_keys[i])))
			return idx_join_keys[i];
	return IDX_LINEAR;
}

/*
 * Files the n rules of lin (stage st's rules tried at every turn, in file
 * order; rules as in pol_index_new()) into ix's groups where their regexes
 * join.  lin then holds first the rules left, then each group's, one group
 * after another.  Returns how many rules are left.
 */
static size_t
idx_group(struct pol_index *ix, unsigned st, const struct pol_rule *rules,
    uint32_t *lin, size_t n)
{
	struct idx_stage	 *si = &ix->st[st];
	struct idx_join		 *g;
	const struct pattern	**pats;
	unsigned		 *keys, k;
	uint32_t		 *grouped, *out;
	size_t			  i, j, c, left = 0, ni, first = si->njoins;
	char			 *joined;

	if ((pats = calloc(n + 1, sizeof(*pats))) == NULL ||
	    (keys = calloc(n + 1, sizeof(*keys))) == NULL ||
	    (joined = calloc(n + 1, 1)) == NULL ||
	    (grouped = calloc(n + 1, sizeof(*grouped))) == NULL)
		yu_oom();
	out = grouped;
	for (i = 0; i < n; i++)
		keys[i] = idx_join_key(&rules[lin[i]]);
	for (k = 0; k < sizeof(idx_join_keys) / sizeof(idx_join_keys[0]);
	    k++) {
		/* The rules of this key, IDX_JOIN_MAX at a time. */
		for (i = 0; i < n && si->njoins < POL_JOINS_MAX; i = j) {
			for (j = i, c = 0; j < n && c < IDX_JOIN_MAX; j++)
				if (keys[j] == idx_join_keys[k])
					pats[c++] = idx_pattern(
					    &rules[lin[j]].match, keys[j]);
			if (c < 2)	/* one regex: nothing to save */
				break;
			g = &si->joins[si->njoins];
			if ((g->join = pattern_join(pats, c)) == NULL)
				continue;
			g->key = idx_join_keys[k];
			g->ids = out;
			for (ni = i; ni < j; ni++)
				if (keys[ni] == idx_join_keys[k]) {
					*out++ = lin[ni];
					joined[ni] = 1;
				}
			g->n = c;
			si->njoins++;
		}
	}
	for (i = 0; i < n; i++)
		if (!joined[i])
			lin[left++] = lin[i];
	/* The groups' rules after them, where the ids now live. */
	memcpy(lin + left, grouped, (size_t)(out - grouped) * sizeof(*out));
	for (i = first; i < si->njoins; i++)
		si->joins[i].ids = lin + left + (si->joins[i].ids - grouped);
	free(pats);
	free(keys);
	free(joined);
	free(grouped);
	return left;
}

/*
 * Joins the header regexes of each header name's rules (rules as in
 * pol_index_new()), for the names with two of them to IDX_JOIN_MAX.
 */
static void
idx_join_names(struct pol_index *ix, const struct pol_rule *rules)
{
	const struct pattern	*pats[IDX_JOIN_MAX];
	struct idx_ent		*e;
	size_t			 i, j;

	for (i = 0; i <= ix->mask; i++) {
		e = &ix->tab[i];
		if (e->text == NULL || e->key != POL_KEY_HEADER_NAME ||
		    e->n < 2 || e->n > IDX_JOIN_MAX)
			continue;
		for (j = 0; j < e->n; j++)
			pats[j] = rules[ix->ids[e->off + j]].match.header;
		/* NULL (one cannot be joined): the rules are always tried. */
		e->join = pattern_join(pats, e->n);
	}
}

struct pol_index *
pol_index_new(const struct pol_rule *rules, size_t nrules,
    const size_t *const *stage_rules, const size_t *nstage_rules)
{
	struct pol_index	 *ix;
	struct idx_ent		**where, *e;
	const struct cidr_set	**sets;
	const char		 *text;
	uint32_t		 *netids, *lin;
	size_t			  s, j, i, len, nkeyed = 0, pool = 0, size = 1;
	size_t			  n, off, nnets;
	uint32_t		  h;
	unsigned		  how;

	if ((ix = calloc(1, sizeof(*ix))) == NULL ||
	    (where = calloc(nrules + 1, sizeof(*where))) == NULL ||
	    (ix->ids = calloc(nrules + 1, sizeof(*ix->ids))) == NULL ||
	    (sets = calloc(nrules + 1, sizeof(*sets))) == NULL ||
	    (netids = calloc(nrules + 1, sizeof(*netids))) == NULL)
		yu_oom();
	for (s = 0; s < POL__STAGES; s++)
		for (j = 0; j < nstage_rules[s]; j++)
			if (idx_file(&rules[stage_rules[s][j]], &text, &len) <
			    POL_KEY__COUNT) {
				nkeyed++;
				pool += len + 1;
			}
	/* At most half full, so that probes stay short. */
	while (size < 2 * nkeyed + 2)
		size *= 2;
	if ((ix->tab = calloc(size, sizeof(*ix->tab))) == NULL ||
	    (ix->pool = malloc(pool + 1)) == NULL)
		yu_oom();
	ix->mask = size - 1;

	/* The keys, and how many rules each has. */
	pool = 0;
	for (s = 0; s < POL__STAGES; s++)
		for (j = 0; j < nstage_rules[s]; j++) {
			i = stage_rules[s][j];
			if ((how = idx_file(&rules[i], &text, &len)) >=
			    POL_KEY__COUNT)
				continue;
			h = idx_hash((unsigned)s, how, text, len);
			if ((e = idx_slot(ix, (unsigned)s, how, text, len,
			    h))->text == NULL) {
				for (n = 0; n < len; n++)
					ix->pool[pool + n] = (char)idx_lower(
					    (unsigned char)text[n]);
				ix->pool[pool + len] = '\0';
				e->text = ix->pool + pool;
				pool += len + 1;
				e->hash = h;
				e->len = (uint32_t)len;
				e->stage = (uint8_t)s;
				e->key = (uint8_t)how;
				ix->st[s].keys |= 1u << how;
			}
			e->n++;
			where[i] = e;
		}
	/* Each key's place in ids; n counts again as they are filled. */
	for (off = 0, j = 0; j < size; j++) {
		ix->tab[j].off = (uint32_t)off;
		off += ix->tab[j].n;
		ix->tab[j].n = 0;
	}
	/* Then each stage's rules: in file order, so each list is too. */
	for (s = 0; s < POL__STAGES; s++) {
		lin = ix->ids + off;
		nnets = 0;
		for (j = 0; j < nstage_rules[s]; j++) {
			i = stage_rules[s][j];
			if ((e = where[i]) != NULL)
				ix->ids[e->off + e->n++] = (uint32_t)i;
			else if (idx_file(&rules[i], &text, &len) == IDX_NETS) {
				sets[nnets] = rules[i].match.client_net;
				netids[nnets++] = (uint32_t)i;
			} else
				lin[ix->st[s].nlinear++] = (uint32_t)i;
		}
		/* The groups' rules end up after those left tried always. */
		ix->st[s].linear = lin;
		off += ix->st[s].nlinear;
		ix->st[s].nlinear = idx_group(ix, (unsigned)s, rules, lin,
		    ix->st[s].nlinear);
		if (nnets > 0 && (ix->st[s].nets = cidr_map_new(sets, netids,
		    nnets)) == NULL)
			yu_oom();
	}
	idx_join_names(ix, rules);
	free(where);
	free(sets);
	free(netids);
	return ix;
}

void
pol_index_free(struct pol_index *ix)
{
	size_t	 s, j;

	if (ix == NULL)
		return;
	for (s = 0; s < POL__STAGES; s++) {
		cidr_map_free(ix->st[s].nets);
		for (j = 0; j < ix->st[s].njoins; j++)
			pattern_free(ix->st[s].joins[j].join);
	}
	for (j = 0; j <= ix->mask; j++)
		pattern_free(ix->tab[j].join);
	free(ix->tab);
	free(ix->ids);
	free(ix->pool);
	free(ix);
}

size_t
pol_index_lookup(const struct pol_index *ix, enum pol_stage st,
    const struct pol_subject *subj, struct pattern_scratch *scratch,
    struct pol_list *lists)
{
	const struct idx_stage	*si = &ix->st[st];
	const struct idx_join	*g;
	const struct idx_ent	*e;
	const uint32_t		*ids;
	unsigned		 k, keys;
	size_t			 n = 0, c;

	if (si->nlinear > 0) {
		lists[n].v = si->linear;
		lists[n++].n = si->nlinear;
	}
	/* Without the key, no rule of a group can match (see flt_match()). */
	for (g = si->joins; g < si->joins + si->njoins; g++)
		if (subj->v[g->key] != NULL && pattern_match(g->join,
		    subj->v[g->key], subj->len[g->key], scratch)) {
			lists[n].v = g->ids;
			lists[n++].n = g->n;
		}
	for (k = 0, keys = si->keys; keys != 0; k++, keys >>= 1) {
		if (!(keys & 1) || subj->v[k] == NULL)
			continue;
		e = idx_slot(ix, st, k, subj->v[k], subj->len[k],
		    idx_hash(st, k, subj->v[k], subj->len[k]));
		if (e->text != NULL && (e->join == NULL ||
		    pattern_match(e->join, subj->v[POL_KEY_HEADER],
		    subj->len[POL_KEY_HEADER], scratch))) {
			lists[n].v = ix->ids + e->off;
			lists[n++].n = e->n;
		}
	}
	if (si->nets != NULL &&
	    (c = cidr_map_lookup(si->nets, subj->addr, &ids)) > 0) {
		lists[n].v = ids;
		lists[n++].n = c;
	}
	return n;
}
