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
#include <sys/socket.h>

struct flt_def;

/* ---- Matchers ------------------------------------------------------------ */

/* A set of IPv4/IPv6 networks ("10.0.0.0/8", "::1/128", "192.0.2.7"). */
struct cidr_set;

/* Nonzero when the address (AF_INET or AF_INET6 sockaddr) is in the set.
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches as IPv4. */
int cidr_set_match(const struct cidr_set *set, const struct sockaddr *sa);

/* A set of domains: "example.test" matches that name exactly, and
 * ".example.test" any name below it (not example.test itself).  Matching
 * is case-insensitive; a trailing dot on the name is ignored. */
struct domain_set;

int domain_set_match(const struct domain_set *set, const char *name,
    size_t len);

/* A compiled pattern: '/regex/flags' (PCRE2; flags i, m, s, x) or a plain
 * string matched exactly, case-insensitively. */
struct pattern;

/* Scratch space for pattern_match(); one per thread (PCRE2 match data). */
struct pattern_scratch;

struct pattern_scratch *pattern_scratch_new(void);
void pattern_scratch_free(struct pattern_scratch *);

/* Nonzero when subject matches. */
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

struct policy {
	atomic_int		 refs;		/* references; freed at zero */
	const char		*path;		/* the file it was loaded from */
	int			 relay;		/* a relay: section was given; without
						 * one the backend alone decides */
	const struct cidr_set	*trusted_networks;	/* relay: (never NULL) */
	const struct domain_set	*local_domains;		/* relay: (never NULL) */
	enum pol_srcroute	 source_routes;	/* source_routes: */
	int			 relay_reject_code;	/* relay: reject_code:
						 * 550 (RFC 5321 3.6.2, default)
						 * or 554 */
	const struct flt_def *const *filters;	/* filters: the order they run
						 * in, or NULL for the default */
	size_t			 nfilters;
	const struct cidr_set	*refuse_clients;	/* refuse_clients: (never
							 * NULL, may be empty) */
	const struct pol_rule	*rules;		/* rules:, in file order */
	size_t			 nrules;
	/* For each stage, the indexes into rules of the rules evaluated
	 * there, in file order. */
	const size_t		*stage_rules[POL__STAGES];
	size_t			 nstage_rules[POL__STAGES];
};

/*
 * Loads and compiles the policy file at path.  On success returns a policy
 * with refs == 1 and sets *errors to NULL.  On failure returns NULL and sets
 * *errors to a malloc'd text, one "FILE:LINE:COL: message\n" line per
 * error, every error found (the caller frees it).
 */
struct policy *policy_load(const char *path, char **errors);

/* The policy of a config without one: no relay section (the backend
 * decides), no refusals, no rules, source routes stripped.  refs == 1. */
struct policy *policy_empty(void);

struct policy *policy_ref(struct policy *);
void policy_unref(struct policy *);

#endif /* SMTPGATE_POLICY_H */
