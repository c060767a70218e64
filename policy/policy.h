/*
 * policy.h: policy files (YAML), compiled into one immutable snapshot.
 *
 * policy_load() parses a file (and the files it includes), validates it and
 * compiles every matcher once: CIDR sets, domain sets, PCRE2 patterns (JIT
 * where available).  The snapshot is shared read-only by every worker
 * thread; a reload builds a new one and sessions keep the one they started
 * with (policy_ref / policy_unref).
 */
#ifndef SMTPGATE_POLICY_H
#define SMTPGATE_POLICY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct flt_def;

/* ---- Matchers ------------------------------------------------------------ */

/* A set of IPv4/IPv6 networks ("10.0.0.0/8", "::1/128", "192.0.2.7"). */
struct cidr_set;

/* Nonzero when the address (AF_INET or AF_INET6 sockaddr) is in the set.
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches as IPv4. */
int cidr_set_match(const struct cidr_set *set, const struct sockaddr *sa);

/* One network, as cidr_parse() reads it. */
struct cidr {
	int		 family;	/* AF_INET or AF_INET6 */
	unsigned char	 addr[16];	/* network address, network byte
					 * order; AF_INET uses the first 4 */
	unsigned	 prefix;	/* prefix length: 0-32 or 0-128 */
};

/*
 * Parses "192.0.2.0/24", "2001:db8::/32" or a bare address (/32, /128)
 * into *c.  An IPv4-mapped IPv6 network (::ffff:0:0/96 or longer) becomes
 * the IPv4 network it maps, so that it matches IPv4 clients.  Returns NULL,
 * or why text is not a network (a static string); bits set past the prefix
 * ("10.0.0.1/8") are an error.
 */
const char *cidr_parse(const char *text, struct cidr *c);

/*
 * Returns a new set of the n networks of v (kept as sorted, merged address
 * ranges; v may overlap and is not kept), or NULL when out of memory.  The
 * caller frees it with cidr_set_free().  n may be 0: the empty set.
 */
struct cidr_set *cidr_set_new(const struct cidr *v, size_t n);

/* Frees a set; NULL is ignored. */
void cidr_set_free(struct cidr_set *set);

/*
 * A map from addresses to the sets of networks holding them: built from n
 * CIDR sets, the i-th known by ids[i], it answers with the ids of every
 * set holding an address in one binary search.
 */
struct cidr_map;

/*
 * Returns a new map of the n sets (not kept) with their ids (ascending),
 * or NULL when out of memory.  The caller frees it with cidr_map_free().
 */
struct cidr_map *cidr_map_new(const struct cidr_set *const *sets,
    const uint32_t *ids, size_t n);

/* Frees a map; NULL is ignored. */
void cidr_map_free(struct cidr_map *map);

/*
 * Returns how many of the map's sets hold the address sa (matching as
 * cidr_set_match() does) and points *ids at their ids, ascending; the
 * list is the map's own.  Returns 0 for a NULL map or address.
 */
size_t cidr_map_lookup(const struct cidr_map *map, const struct sockaddr *sa,
    const uint32_t **ids);

/* A set of domains: "example.test" matches that name exactly, and
 * ".example.test" any name below it (not example.test itself).  Matching
 * is case-insensitive; a trailing dot on the name is ignored. */
struct domain_set;

int domain_set_match(const struct domain_set *set, const char *name,
    size_t len);

/*
 * Returns a new set of the n entries of names ("example.test" or
 * ".example.test"; lowercased, a trailing dot dropped; the strings are
 * copied), or NULL when out of memory.  Entries are not validated here:
 * the policy loader checks them as host names first.  The caller frees
 * the set with domain_set_free().  n may be 0: the empty set.
 */
struct domain_set *domain_set_new(const char *const *names, size_t n);

/* Frees a set; NULL is ignored. */
void domain_set_free(struct domain_set *set);

/* A compiled pattern: '/regex/flags' (PCRE2; flags i, m, s, x) or a plain
 * string matched exactly, case-insensitively. */
struct pattern;

/*
 * Compiles text (len octets) into a pattern.  '/regex/flags' is a PCRE2
 * regex (UTF-8 mode when it is valid UTF-8, JIT-compiled where the library
 * can), searched for anywhere in the subject unless anchored; any other
 * text is a literal that must equal the whole subject, ignoring case (for
 * non-ASCII text too when it is UTF-8).  Returns the pattern, which the
 * caller frees with pattern_free(), or NULL with the reason in err
 * ("missing closing parenthesis at offset 3 of the regex").
 */
struct pattern *pattern_new(const char *text, size_t len, char *err,
    size_t errsize);

/* Frees a pattern; NULL is ignored. */
void pattern_free(struct pattern *p);

/* Returns the text of an ASCII literal pattern (its length in *len; not
 * NUL-terminated), or NULL for a regex (a non-ASCII literal is one). */
const char *pattern_literal(const struct pattern *p, size_t *len);

/*
 * Returns the line name of a regex, lowercased (its length in *len; not
 * NUL-terminated): N when the regex, written "^N:...", can only match
 * subjects that start with N and a colon, ignoring ASCII case (a header
 * line of field N); NULL when the regex is not certainly one, and for a
 * literal.
 */
const char *pattern_line_name(const struct pattern *p, size_t *len);

/*
 * Returns a regex matching every subject that one of the n regexes of v
 * matches: their alternative, each with its own flags (a prefilter: the
 * subjects it matches are those the regexes may match).  A failure to run
 * (a match limit) counts as a match.  Returns NULL when n is 0, when one
 * of v cannot be joined (a literal; a regex referring to its groups by
 * number or name, with verbs, callouts, \Q or comments to the end of the
 * line, or not in UTF-8 mode), or when the join does not compile.  The
 * caller frees it with pattern_free().
 */
struct pattern *pattern_join(const struct pattern *const *v, size_t n);

/* Nonzero when p is a regex that pattern_join() can join. */
int pattern_joinable(const struct pattern *p);

/* Scratch space for pattern_match(); one per thread (PCRE2 match data). */
struct pattern_scratch;

/* Returns new scratch space, or NULL when out of memory.  The caller frees
 * it with pattern_scratch_free() (NULL is ignored there). */
struct pattern_scratch *pattern_scratch_new(void);
void pattern_scratch_free(struct pattern_scratch *);

/* Nonzero when subject (len octets, need not be NUL-terminated; NULL when
 * len is 0) matches.  scratch is the calling thread's own.  A regex that
 * fails to run (e.g. its match limit) does not match. */
int pattern_match(const struct pattern *p, const char *subject, size_t len,
    struct pattern_scratch *scratch);

/* ---- The policy ---------------------------------------------------------- */

/* Where a rule is evaluated: the first stage at which all it matches on
 * is known. */
enum pol_stage {
	POL_CONNECT,	/* client address, reverse name */
	POL_HELO,	/* HELO/EHLO name */
	POL_MAIL,	/* sender */
	POL_RCPT,	/* each recipient */
	POL_HEADER,	/* each header line */
	POL__STAGES
};

enum pol_action {
	POL_REJECT,	/* refuse the command with the rule's reply (5xx) */
	POL_TEMPFAIL,	/* refuse it with the rule's reply (4xx) */
	POL_REFUSE,	/* refuse the whole session (554 greeting, then 503) */
	POL_ACCEPT,	/* stop evaluating rules for this stage: accepted */
	POL_WARN	/* log only: the dry run of a rule */
};

enum pol_srcroute {
	POL_SR_STRIP,	/* forward <@a,@b:u@c> as <u@c> (default) */
	POL_SR_REJECT,	/* refuse: 501 5.1.0 (MAIL) / 550 5.7.1 (RCPT) */
	POL_SR_KEEP	/* forward as received */
};

/* What a rule matches on; every field given must match (AND). */
struct pol_match {
	const struct cidr_set	*client_net;	/* client: CIDR list, or NULL */
	const struct pattern	*client;	/* client: '/re/' on the address
						 * text, or NULL */
	const struct pattern	*client_name;	/* reverse name, or NULL */
	const struct pattern	*helo;		/* HELO/EHLO name, or NULL */
	const struct pattern	*sender;	/* reverse path without <>, or NULL */
	const struct pattern	*recipient;	/* forward path without <>, or NULL */
	const struct pattern	*header;	/* one header line "Name: value"
						 * (unfolded, no CRLF), or NULL */
};

struct pol_rule {
	const char		*name;		/* shown in logs */
	struct pol_match	 match;		/* what it matches */
	enum pol_action		 action;	/* what it does */
	enum pol_stage		 stage;		/* where it is evaluated */
	int			 code;		/* reply code (reject/tempfail/refuse) */
	const char		*reply;		/* reply text after the code,
						 * enhanced code first: "5.7.1
						 * Sender rejected" */
};

/* ---- The rule index ------------------------------------------------------ */

/*
 * The policy finds the rules of a stage that may match a session without
 * trying each one.  A rule with an ASCII literal on a field is filed under
 * that field and the literal (lowercased); a rule with a client network
 * list under its networks; a header rule whose regex can only match lines
 * of one field name ("^Subject:...") under that name; every other rule is
 * tried at each turn of its stage.  A lookup gives sorted lists of rule
 * indexes (no rule in two of them) which the caller merges, to try the
 * rules in file order.  What is filed is only where a rule can match: the
 * caller still runs every matcher of each rule it tries.
 */

/* What rules are filed under. */
enum pol_key {
	POL_KEY_CLIENT_NAME,	/* the reverse name */
	POL_KEY_HELO,		/* the HELO/EHLO name */
	POL_KEY_SENDER,		/* the sender's mailbox ("" for <>) */
	POL_KEY_RECIPIENT,	/* the recipient's mailbox */
	POL_KEY_HEADER,		/* the header line */
	POL_KEY_HEADER_NAME,	/* the header line's field name: what comes
				 * before its first ':' */
	POL_KEY__COUNT
};

/* The session as the rules see it, each text with its length. */
struct pol_subject {
	const struct sockaddr	*addr;		/* client address, or NULL */
	const char		*addr_text;	/* ... as text (never NULL) */
	size_t			 addr_textlen;
	const char		*v[POL_KEY__COUNT];	/* each key's text; NULL
						 * when the session has none yet
						 * (no rule on it can match) */
	size_t			 len[POL_KEY__COUNT];	/* their lengths */
};

/* A sorted list of rule indexes. */
struct pol_list {
	const uint32_t	*v;		/* the indexes, ascending */
	size_t		 n;		/* how many */
};

/* The most joins of regexes a stage has (see pol_index_lookup). */
#define POL_JOINS_MAX	16

/* The most lists a lookup gives: one per key, the networks', the rules
 * that are not filed and each join's. */
#define POL_LISTS_MAX	(POL_KEY__COUNT + 2 + POL_JOINS_MAX)

struct pol_index;

/*
 * Returns the index of the nrules rules; stage_rules[s] holds the
 * nstage_rules[s] indexes of stage s's rules, ascending.  Aborts when out
 * of memory.  The caller frees it with pol_index_free().
 */
struct pol_index *pol_index_new(const struct pol_rule *rules, size_t nrules,
    const size_t *const *stage_rules, const size_t *nstage_rules);

/* Frees an index; NULL is ignored. */
void pol_index_free(struct pol_index *ix);

/*
 * Fills lists (POL_LISTS_MAX entries) with the rules of stage st that may
 * match subj, and returns how many lists it filled (none empty).  Every
 * rule of the stage that matches subj is in one of them.  The lists are
 * the index's own.  The rules that are not filed are tried in groups: the
 * rules with a regex on the same key, up to 32 of them, have their
 * regexes joined (pattern_join()), and the group is left out when the
 * join does not match; so are the header regexes filed under one line
 * name.  scratch is for running the joins.
 */
size_t pol_index_lookup(const struct pol_index *ix, enum pol_stage st,
    const struct pol_subject *subj, struct pattern_scratch *scratch,
    struct pol_list *lists);

/* What a rate limit counts per. */
enum pol_rl_key {
	POL_RLK_CLIENT_IP,		/* the client's address */
	POL_RLK_CLIENT_NET,		/* its /24 (IPv4) or /64 (IPv6) */
	POL_RLK_HELO,			/* the HELO/EHLO name */
	POL_RLK_SENDER,			/* the sender's mailbox */
	POL_RLK_SENDER_DOMAIN,		/* its domain */
	POL_RLK_RECIPIENT,		/* each recipient's mailbox */
	POL_RLK_RECIPIENT_DOMAIN,	/* its domain */
	POL_RLK_AUTH_USER,		/* the SMTP AUTH user (none: not counted) */
	POL_RLK__COUNT
};

/* What a rate limit counts. */
enum pol_rl_count {
	POL_RLC_CONNECTIONS,	/* sessions, at connect (421 4.7.0) */
	POL_RLC_MESSAGES,	/* transactions, at MAIL (or at each RCPT when
				 * the key is a recipient's) */
	POL_RLC_RECIPIENTS,	/* recipients, at each RCPT */
	POL_RLC_BYTES,		/* message bytes, at the final dot */
	POL_RLC__COUNT
};

/* One entry of rate_limits:. */
struct pol_ratelimit {
	struct pol_rule		 rule;		/* name; match (optional: absent
						 * matches every session); action
						 * (POL_TEMPFAIL or POL_REJECT) */
	enum pol_rl_key		 key;		/* key: */
	enum pol_rl_count	 count;		/* count: */
	uint64_t		 limit;		/* limit: events per window */
	uint64_t		 window_ms;	/* window: */
};

struct policy {
	atomic_int		 refs;		/* references; freed at zero */
	const char		*path;		/* the file it was loaded from;
						 * NULL for policy_empty() */
	int			 relay;		/* a relay: section was given; without
						 * one the backend alone decides */
	const struct cidr_set	*trusted_networks;	/* relay: (never NULL) */
	const struct domain_set	*local_domains;		/* relay: (never NULL) */
	enum pol_srcroute	 source_routes;	/* source_routes: */
	int			 relay_reject_code;	/* relay: reject_code:
						 * 550 (RFC 5321 3.6.2, default)
						 * or 554 */
	const struct flt_def *const *filters;	/* filters: the order they run
						 * in, or NULL for the default
						 * (filter.c's flt_table) */
	size_t			 nfilters;	/* entries in filters */
	const struct cidr_set	*refuse_clients;	/* refuse_clients: (never
							 * NULL, may be empty) */
	const struct pol_rule	*rules;		/* rules:, in file order
						 * (included files' first) */
	size_t			 nrules;	/* entries in rules */
	const struct pol_ratelimit *ratelimits;	/* rate_limits:, in file
						 * order */
	size_t			 nratelimits;	/* entries in ratelimits */
	/* For each stage, the indexes into rules of the rules evaluated
	 * there, in file order.  Never NULL, even when empty. */
	const size_t		*stage_rules[POL__STAGES];
	size_t			 nstage_rules[POL__STAGES];	/* entries in
							 * stage_rules[] */
	const struct pol_index	*index;		/* the rules of each stage,
						 * filed for lookups (never
						 * NULL) */
};

/*
 * Loads and compiles the policy file at path.  On success returns a policy
 * with refs == 1 and sets *errors to NULL.  On failure returns NULL and sets
 * *errors to a malloc'd text, one "FILE:LINE:COL: message\n" line per
 * error, every error found (the caller frees it), sorted by file (in the
 * order they were opened), line and column; a file that cannot be read at
 * all gives "FILE: message\n".  The files it includes are named relative
 * to the including file, as that file's path was spelled.
 */
struct policy *policy_load(const char *path, char **errors);

/* The policy of a config without one: no relay section (the backend
 * decides), no refusals, no rules, source routes stripped.  refs == 1. */
struct policy *policy_empty(void);

/* Takes a reference; returns pol. */
struct policy *policy_ref(struct policy *pol);

/* Drops a reference; frees the policy and everything in it at zero.  NULL
 * is ignored. */
void policy_unref(struct policy *pol);

#endif /* SMTPGATE_POLICY_H */
