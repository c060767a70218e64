/*
 * fuzz_policy.c: the YAML policy loader, policy_load() (policy/policy.c
 * with policy/yamlutil.c, match.c and ruleindex.c).
 *
 * The input is a policy file.  It is written to a file in a private
 * directory (the loader reads files: includes are named relative to the
 * including file, so "include: [policy.yaml]" is a cycle) and loaded.
 * Checked besides memory safety and leaks:
 *
 *  - a refused file gives error text of whole lines, "FILE:...: message",
 *    with no control character;
 *  - a loaded policy's rules are each filed under the stage they belong
 *    to, once;
 *  - the rule index (pol_index_lookup()) gives sorted lists of rules of
 *    the stage, no rule twice, and never leaves out a rule that matches,
 *    for a fixed session and for sessions made of the literals of the
 *    first rules (so that literal-filed rules are looked up).
 */
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "fuzz.h"
#include "policy.h"

/* Rules whose literals make a session each; bounds the time per input. */
#define LITERAL_RULES	8

static char			*polfile;	/* dir/policy.yaml */
static struct pattern_scratch	*scratch;	/* for pattern_match() */

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	polfile = fuzz_tmpfile("fuzz_policy", "policy.yaml");
	if ((scratch = pattern_scratch_new()) == NULL)
		abort();
	return 0;
}

/* Nonzero when pattern p matches key k of subj, as flt_rules.c has it. */
static int
match_key(const struct pattern *p, const struct pol_subject *subj,
    enum pol_key k)
{
	return subj->v[k] != NULL &&
	    pattern_match(p, subj->v[k], subj->len[k], scratch);
}

/* Nonzero when rule r matches subj (flt__match() in filters/filter.c). */
static int
rule_matches(const struct pol_rule *r, const struct pol_subject *subj)
{
	const struct pol_match	*m = &r->match;

	return (m->client_net == NULL ||
	    cidr_set_match(m->client_net, subj->addr)) &&
	    (m->client == NULL || pattern_match(m->client, subj->addr_text,
	    subj->addr_textlen, scratch)) &&
	    (m->client_name == NULL ||
	    match_key(m->client_name, subj, POL_KEY_CLIENT_NAME)) &&
	    (m->helo == NULL || match_key(m->helo, subj, POL_KEY_HELO)) &&
	    (m->sender == NULL || match_key(m->sender, subj,
	    POL_KEY_SENDER)) &&
	    (m->recipient == NULL || match_key(m->recipient, subj,
	    POL_KEY_RECIPIENT)) &&
	    (m->header == NULL || match_key(m->header, subj,
	    POL_KEY_HEADER));
}

/* Checks the index's answer for every stage against every rule. */
static void
check_lookup(const struct policy *pol, const struct pol_subject *subj,
    unsigned char *seen)
{
	struct pol_list	 lists[POL_LISTS_MAX];
	size_t		 n, i, j, k;
	int		 st;

	for (st = 0; st < POL__STAGES; st++) {
		memset(seen, 0, pol->nrules + 1);
		n = pol_index_lookup(pol->index, st, subj, scratch, lists);
		REQUIRE(n <= POL_LISTS_MAX);
		for (i = 0; i < n; i++) {
			REQUIRE(lists[i].n > 0 && lists[i].v != NULL);
			for (j = 0; j < lists[i].n; j++) {
				k = lists[i].v[j];
				REQUIRE(k < pol->nrules);
				REQUIRE(pol->rules[k].stage == (unsigned)st);
				REQUIRE(j == 0 || lists[i].v[j - 1] < k);
				REQUIRE(!seen[k]);
				seen[k] = 1;
			}
		}
		for (i = 0; i < pol->nstage_rules[st]; i++) {
			k = pol->stage_rules[st][i];
			REQUIRE(seen[k] || !rule_matches(&pol->rules[k], subj));
		}
	}
}

/* Sets key k of subj to s[0..len). */
static void
set_key(struct pol_subject *subj, enum pol_key k, const char *s, size_t len)
{
	subj->v[k] = s;
	subj->len[k] = len;
}

/* Sets the header line of subj, and its field name as filter.c does. */
static void
set_header(struct pol_subject *subj, const char *s, size_t len)
{
	const char	*colon = memchr(s, ':', len);

	set_key(subj, POL_KEY_HEADER, s, len);
	set_key(subj, POL_KEY_HEADER_NAME, colon ? s : NULL,
	    colon ? (size_t)(colon - s) : 0);
}

/* A session: the defaults, or with the literals of rule r where it has. */
static void
make_subject(struct pol_subject *subj, const struct pol_rule *r,
    const struct sockaddr *addr, const char *addr_text, char *hdr,
    size_t hdrsize)
{
	const struct pol_match	*m;
	const char		*lit;
	size_t			 len;

	memset(subj, 0, sizeof(*subj));
	subj->addr = addr;
	subj->addr_text = addr_text;
	subj->addr_textlen = strlen(addr_text);
	set_key(subj, POL_KEY_CLIENT_NAME, "mail.example.test", 17);
	set_key(subj, POL_KEY_HELO, "localhost", 9);
	set_key(subj, POL_KEY_SENDER, "a@spam.example", 14);
	set_key(subj, POL_KEY_RECIPIENT, "postmaster@example.test", 23);
	set_header(subj, "Subject: hello", 14);
	if (r == NULL)
		return;
	m = &r->match;
	if (m->client && (lit = pattern_literal(m->client, &len)) != NULL) {
		subj->addr_text = lit;
		subj->addr_textlen = len;
	}
	if (m->client_name &&
	    (lit = pattern_literal(m->client_name, &len)) != NULL)
		set_key(subj, POL_KEY_CLIENT_NAME, lit, len);
	if (m->helo && (lit = pattern_literal(m->helo, &len)) != NULL)
		set_key(subj, POL_KEY_HELO, lit, len);
	if (m->sender && (lit = pattern_literal(m->sender, &len)) != NULL)
		set_key(subj, POL_KEY_SENDER, lit, len);
	if (m->recipient &&
	    (lit = pattern_literal(m->recipient, &len)) != NULL)
		set_key(subj, POL_KEY_RECIPIENT, lit, len);
	if (m->header && (lit = pattern_literal(m->header, &len)) != NULL)
		set_header(subj, lit, len);
	else if (m->header &&
	    (lit = pattern_line_name(m->header, &len)) != NULL) {
		/* A line of the field the regex is filed under. */
		len = (size_t)snprintf(hdr, hdrsize, "%.*s: x", (int)len, lit);
		set_header(subj, hdr, len < hdrsize ? len : hdrsize - 1);
	}
}

/* Checks a loaded policy. */
static void
check_policy(const struct policy *pol)
{
	static const char *const addrs[] = {
		"192.0.2.1", "10.1.2.3", "::1", "2001:db8::25",
	};
	struct sockaddr_storage	 ss[4];
	struct sockaddr_in	*sin;
	struct sockaddr_in6	*sin6;
	struct pol_subject	 subj;
	unsigned char		*seen;
	char			 hdr[300];
	size_t			 i, total = 0;
	int			 st;

	REQUIRE(atomic_load(&pol->refs) == 1);
	REQUIRE(pol->trusted_networks != NULL && pol->local_domains != NULL &&
	    pol->refuse_clients != NULL && pol->index != NULL);
	for (st = 0; st < POL__STAGES; st++) {
		REQUIRE(pol->stage_rules[st] != NULL);
		for (i = 0; i < pol->nstage_rules[st]; i++) {
			REQUIRE(pol->stage_rules[st][i] < pol->nrules);
			REQUIRE(i == 0 || pol->stage_rules[st][i - 1] <
			    pol->stage_rules[st][i]);
			REQUIRE(pol->rules[pol->stage_rules[st][i]].stage ==
			    (unsigned)st);
		}
		total += pol->nstage_rules[st];
	}
	REQUIRE(total == pol->nrules);
	for (i = 0; i < pol->nrules; i++)
		REQUIRE(pol->rules[i].name != NULL);

	for (i = 0; i < 4; i++) {
		memset(&ss[i], 0, sizeof(ss[i]));
		sin = (struct sockaddr_in *)&ss[i];
		sin6 = (struct sockaddr_in6 *)&ss[i];
		if (inet_pton(AF_INET, addrs[i], &sin->sin_addr) == 1)
			sin->sin_family = AF_INET;
		else if (inet_pton(AF_INET6, addrs[i], &sin6->sin6_addr) == 1)
			sin6->sin6_family = AF_INET6;
	}
	seen = (unsigned char *)fuzz_alloc(pol->nrules + 1);
	for (i = 0; i < 4; i++) {
		make_subject(&subj, NULL, (struct sockaddr *)&ss[i], addrs[i],
		    hdr, sizeof(hdr));
		check_lookup(pol, &subj, seen);
	}
	for (i = 0; i < pol->nrules && i < LITERAL_RULES; i++) {
		make_subject(&subj, &pol->rules[i],
		    (struct sockaddr *)&ss[i % 4], addrs[i % 4], hdr,
		    sizeof(hdr));
		check_lookup(pol, &subj, seen);
	}
	free(seen);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct policy	*pol;
	char		*errs = NULL;

	fuzz_write(polfile, data, size);
	pol = policy_load(polfile, &errs);
	if (pol == NULL) {
		fuzz_check_errtext(errs);
		free(errs);
		return 0;
	}
	REQUIRE(errs == NULL);
	check_policy(pol);
	policy_unref(pol);
	return 0;
}
