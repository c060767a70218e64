/*
 * test_policy.c: unit tests for policy/policy.c, the policy loader.
 *
 * Valid cases are written to a file in a private mkdtemp() directory,
 * loaded, and the resulting struct checked.  Error cases check every line
 * of the error text, in order, against "FILE:LINE:COL: message" prefixes,
 * so a missing or an extra error fails the case.  The include tests use
 * the fixtures of data/policy/ (run from tests/unit, as ctest does).  The
 * issue's example is loaded as written, and so is deploy/policy.yaml; a
 * generated policy of 1,000 rules shows how long a large load takes.
 */

#include <sys/stat.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy.h"
#include "test.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define DEPLOY_POLICY	"../../deploy/policy.yaml"
#define DEPLOY_RATELIMITS "../../deploy/policy-ratelimits.yaml"
#define DATA		"data/policy/"

/* The example, byte for byte. */
#define POLICY_EXAMPLE							\
	"relay:\n"							\
	"  trusted_networks: [127.0.0.1/32, 10.0.0.0/8, \"::1/128\"]\n"	\
	"  local_domains: [example.test, .example.test]\n"		\
	"source_routes: strip\n"					\
	"refuse_clients: [192.0.2.0/24, 127.0.0.5/32]\n"		\
	"rules:\n"							\
	"  - name: block-spam-sender\n"					\
	"    match: { sender: '/@spam\\.example$/' }\n"			\
	"    action: reject\n"						\
	"    reply: \"550 5.7.1 Sender rejected\"\n"			\
	"  - name: watch-helo\n"					\
	"    match: { helo: '/^localhost$/i' }\n"			\
	"    action: warn\n"

static char	 tmpdir[] = "/tmp/test_policy.XXXXXX";	/* our files */
static char	 polfile[PATH_MAX];		/* tmpdir/policy.yaml */
static struct pattern_scratch *scratch;		/* for pattern_match() */

/* Replaces the file at path with text (len octets); exits on error. */
static void
write_file(const char *path, const char *text, size_t len)
{
	FILE	*f;

	if ((f = fopen(path, "w")) == NULL ||
	    fwrite(text, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(2);
	}
}

/* Returns the malloc'd contents of path and sets *len; exits on error. */
static char *
read_file(const char *path, size_t *len)
{
	FILE	*f;
	char	*text = NULL;
	size_t	 size = 0, n;

	if ((f = fopen(path, "r")) == NULL) {
		perror(path);
		exit(2);
	}
	do {
		if ((text = realloc(text, size + 4096 + 1)) == NULL)
			exit(2);
		n = fread(text + size, 1, 4096, f);
		size += n;
	} while (n > 0);
	fclose(f);
	text[size] = '\0';
	*len = size;
	return text;
}

/* Returns tmpdir/name in a static buffer, which the next call reuses. */
static const char *
tmp(const char *name)
{
	static char	 path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

/* Nonzero when the numeric address text is in set. */
static int
in_set(const struct cidr_set *set, const char *text)
{
	struct sockaddr_storage	 ss;

	return cidr_set_match(set, test_addr(text, &ss));
}

/* Nonzero when the domain name is in set. */
static int
in_domains(const struct domain_set *set, const char *name)
{
	return domain_set_match(set, name, strlen(name));
}

/* Nonzero when p is set and matches s. */
static int
matches(const struct pattern *p, const char *s)
{
	return p != NULL && pattern_match(p, s, strlen(s), scratch);
}

/* Nonzero when the policy has nothing but its defaults. */
static int
is_empty(const struct policy *pol)
{
	size_t	 s, n = 0;

	for (s = 0; s < POL__STAGES; s++)
		n += pol->nstage_rules[s] + (pol->stage_rules[s] == NULL);
	return pol->relay == 0 && pol->nrules == 0 && n == 0 &&
	    pol->trusted_networks != NULL && pol->local_domains != NULL &&
	    pol->refuse_clients != NULL && pol->rules != NULL &&
	    pol->source_routes == POL_SR_STRIP &&
	    pol->relay_reject_code == 550 && pol->filters == NULL &&
	    pol->nfilters == 0 && !in_set(pol->trusted_networks, "127.0.0.1") &&
	    !in_set(pol->refuse_clients, "::1") &&
	    !in_domains(pol->local_domains, "localhost");
}

/* ---- Valid policies ------------------------------------------------------ */

/* The example, and deploy/policy.yaml. */
static void
check_example(const struct policy *pol)
{
	const struct pol_rule	*r;

	CHECK(pol->relay == 1);
	CHECK(in_set(pol->trusted_networks, "127.0.0.1"));
	CHECK(!in_set(pol->trusted_networks, "127.0.0.2"));
	CHECK(in_set(pol->trusted_networks, "10.20.30.40"));
	CHECK(in_set(pol->trusted_networks, "::1"));
	CHECK(in_set(pol->trusted_networks, "::ffff:10.0.0.1"));
	CHECK(!in_set(pol->trusted_networks, "::2"));
	CHECK(!in_set(pol->trusted_networks, "11.0.0.1"));
	CHECK(in_domains(pol->local_domains, "example.test"));
	CHECK(in_domains(pol->local_domains, "MX.Example.Test."));
	CHECK(!in_domains(pol->local_domains, "badexample.test"));
	CHECK(!in_domains(pol->local_domains, "example.org"));
	CHECK(pol->source_routes == POL_SR_STRIP);
	CHECK(pol->relay_reject_code == 550);
	CHECK(pol->filters == NULL && pol->nfilters == 0);
	CHECK(in_set(pol->refuse_clients, "192.0.2.200"));
	CHECK(in_set(pol->refuse_clients, "127.0.0.5"));
	CHECK(!in_set(pol->refuse_clients, "127.0.0.6"));
	CHECK(!in_set(pol->refuse_clients, "192.0.3.1"));

	CHECK(pol->nrules == 2);
	if (pol->nrules != 2)
		return;
	r = &pol->rules[0];
	CHECK(strcmp(r->name, "block-spam-sender") == 0);
	CHECK(r->action == POL_REJECT && r->stage == POL_MAIL);
	CHECK(r->code == 550 && strcmp(r->reply, "5.7.1 Sender rejected") == 0);
	CHECK(matches(r->match.sender, "joe@spam.example"));
	CHECK(!matches(r->match.sender, "joe@spam.example.org"));
	CHECK(!matches(r->match.sender, "joe@spamXexample"));
	CHECK(r->match.client_net == NULL && r->match.client == NULL &&
	    r->match.client_name == NULL && r->match.helo == NULL &&
	    r->match.recipient == NULL && r->match.header == NULL);
	r = &pol->rules[1];
	CHECK(strcmp(r->name, "watch-helo") == 0);
	CHECK(r->action == POL_WARN && r->stage == POL_HELO);
	CHECK(r->code == 0 && r->reply == NULL);
	CHECK(matches(r->match.helo, "LocalHost"));
	CHECK(!matches(r->match.helo, "localhost.example"));
	CHECK(r->match.sender == NULL);

	CHECK(pol->nstage_rules[POL_CONNECT] == 0);
	CHECK(pol->nstage_rules[POL_HELO] == 1 &&
	    pol->stage_rules[POL_HELO][0] == 1);
	CHECK(pol->nstage_rules[POL_MAIL] == 1 &&
	    pol->stage_rules[POL_MAIL][0] == 0);
	CHECK(pol->nstage_rules[POL_RCPT] == 0);
	CHECK(pol->nstage_rules[POL_HEADER] == 0);
}

/* An empty policy: every default. */
static void
check_empty(const struct policy *pol)
{
	CHECK(is_empty(pol));
}

/* Each rule's stage is the latest its keys need. */
static void
check_stages(const struct policy *pol)
{
	static const enum pol_stage	 want[] = {
		POL_CONNECT, POL_CONNECT, POL_HELO, POL_MAIL, POL_RCPT,
		POL_HEADER, POL_HEADER, POL_HELO, POL_CONNECT
	};
	static const size_t		 lists[POL__STAGES][4] = {
		[POL_CONNECT] = { 0, 1, 8 }, [POL_HELO] = { 2, 7 },
		[POL_MAIL] = { 3 }, [POL_RCPT] = { 4 }, [POL_HEADER] = { 5, 6 }
	};
	static const size_t		 nlists[POL__STAGES] = {
		3, 2, 1, 1, 2
	};
	size_t				 i, s;

	CHECK(pol->nrules == NELEM(want));
	for (i = 0; i < pol->nrules && i < NELEM(want); i++)
		CHECKF(pol->rules[i].stage == want[i], "rule %zu: stage %d, "
		    "want %d", i, pol->rules[i].stage, want[i]);
	for (s = 0; s < POL__STAGES; s++) {
		CHECKF(pol->nstage_rules[s] == nlists[s], "stage %zu: %zu "
		    "rules", s, pol->nstage_rules[s]);
		for (i = 0; i < pol->nstage_rules[s] && i < nlists[s]; i++)
			CHECK(pol->stage_rules[s][i] == lists[s][i]);
	}
	CHECK(pol->relay == 0);
}

/* Every kind of matcher and reply. */
static void
check_forms(const struct policy *pol)
{
	const struct pol_rule	*r = pol->rules;

	CHECK(pol->nrules == 9);
	if (pol->nrules != 9)
		return;
	/* A single CIDR. */
	CHECK(r[0].match.client_net != NULL && r[0].match.client == NULL);
	CHECK(in_set(r[0].match.client_net, "192.0.2.7"));
	CHECK(!in_set(r[0].match.client_net, "192.0.2.8"));
	CHECK(r[0].action == POL_REFUSE && r[0].code == 554 &&
	    strcmp(r[0].reply, "5.7.1 Access denied") == 0);
	/* A list of them. */
	CHECK(in_set(r[1].match.client_net, "2001:db8::5"));
	CHECK(in_set(r[1].match.client_net, "198.51.100.255"));
	CHECK(!in_set(r[1].match.client_net, "198.51.101.0"));
	CHECK(r[1].action == POL_TEMPFAIL && r[1].code == 451 &&
	    strcmp(r[1].reply, "4.7.1 Try again later") == 0);
	/* A regex on the address text. */
	CHECK(r[2].match.client_net == NULL);
	CHECK(matches(r[2].match.client, "2001:db8::1"));
	CHECK(!matches(r[2].match.client, "192.0.2.1"));
	CHECK(r[2].action == POL_REJECT && r[2].code == 550 &&
	    strcmp(r[2].reply, "5.7.1 Rejected by policy") == 0);
	/* The null sender, and a literal recipient. */
	CHECK(matches(r[3].match.sender, ""));
	CHECK(!matches(r[3].match.sender, "a@b"));
	CHECK(matches(r[3].match.recipient, "Postmaster@Example.TEST"));
	CHECK(r[3].action == POL_ACCEPT && r[3].code == 0 &&
	    r[3].reply == NULL && r[3].stage == POL_RCPT);
	/* Replies given. */
	CHECK(r[4].code == 421 && strcmp(r[4].reply, "4.3.2 Busy, come back "
	    "later") == 0);
	CHECK(r[5].code == 554 && strcmp(r[5].reply, "5.7.0 No") == 0);
	CHECK(r[6].code == 501 && strcmp(r[6].reply, "5.5.4 ~!@#$%^&*()") ==
	    0);
	CHECK(r[7].code == 550 && strlen(r[7].reply) == 6 + 400);
	CHECK(matches(r[7].match.header, "Subject: Hello"));
	CHECK(!matches(r[7].match.header, "X-Subject: Hello"));
	CHECK(r[8].code == 550 && strcmp(r[8].reply, "5.123.999 x") == 0);
	CHECK(matches(r[8].match.client_name, "UNKNOWN"));
	CHECK(pol->relay == 1 && pol->relay_reject_code == 554);
	CHECK(!in_set(pol->trusted_networks, "127.0.0.1"));
	CHECK(!in_domains(pol->local_domains, "localhost"));
	CHECK(pol->source_routes == POL_SR_KEEP);
}

/* Single entries written without brackets. */
static void
check_srcroute_reject(const struct policy *pol)
{
	CHECK(pol->source_routes == POL_SR_REJECT && pol->relay == 1);
	CHECK(in_domains(pol->local_domains, "example.test"));
	CHECK(!in_domains(pol->local_domains, "a.example.test"));
}

#define X100	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

static const struct valid_case {
	const char	*name;			/* for failure messages */
	const char	*text;			/* the file */
	void		(*check)(const struct policy *);
} valid_cases[] = {
	{ "empty file", "", check_empty },
	{ "comments only", "# nothing here\n\n", check_empty },
	{ "empty lists", "refuse_clients: []\nrules: []\n", check_empty },
	{ "stages",
	  "rules:\n"
	  "  - { name: r0, match: { client: 10.0.0.0/8 }, action: warn }\n"
	  "  - { name: r1, match: { client_name: a.test }, action: warn }\n"
	  "  - { name: r2, match: { helo: h, client: 10.0.0.1 },"
	  " action: warn }\n"
	  "  - { name: r3, match: { sender: s, client_name: c },"
	  " action: warn }\n"
	  "  - { name: r4, match: { recipient: r, helo: h }, action: warn }\n"
	  "  - { name: r5, match: { header: h, sender: s }, action: warn }\n"
	  "  - { name: r6, match: { client: '/^10\\./', header: h },"
	  " action: warn }\n"
	  "  - { name: R_7.x-y, match: { helo: h }, action: WARN }\n"
	  "  - { name: r8, match: { client: '/./' }, action: warn }\n",
	  check_stages },
	{ "matcher and reply forms",
	  "relay: { reject_code: 554 }\n"
	  "source_routes: keep\n"
	  "rules:\n"
	  "  - name: one-cidr\n"
	  "    match: { client: 192.0.2.7 }\n"
	  "    action: refuse\n"
	  "  - name: cidr-list\n"
	  "    match:\n"
	  "      client:\n"
	  "        - 198.51.100.0/24\n"
	  "        - \"2001:db8::/32\"\n"
	  "    action: tempfail\n"
	  "  - name: client-regex\n"
	  "    match: { client: '/^2001:db8:/' }\n"
	  "    action: reject\n"
	  "  - name: null-sender\n"
	  "    match: { sender: \"\", recipient: postmaster@example.test }\n"
	  "    action: accept\n"
	  "  - name: busy\n"
	  "    match: { helo: x }\n"
	  "    action: tempfail\n"
	  "    reply: \"421 4.3.2 Busy, come back later\"\n"
	  "  - name: refuse-reply\n"
	  "    match: { helo: y }\n"
	  "    action: refuse\n"
	  "    reply: 554 5.7.0 No\n"
	  "  - name: odd-text\n"
	  "    match: { helo: z }\n"
	  "    action: reject\n"
	  "    reply: '501 5.5.4 ~!@#$%^&*()'\n"
	  "  - name: long-text\n"
	  "    match: { header: '/^subject:/i' }\n"
	  "    action: reject\n"
	  "    reply: \"550 5.7.1 " X100 X100 X100 X100 "\"\n"
	  "  - name: big-subcodes\n"
	  "    match: { client_name: unknown }\n"
	  "    action: reject\n"
	  "    reply: 550 5.123.999 x\n",
	  check_forms },
	{ "single entries without brackets",
	  "relay:\n"
	  "  local_domains: Example.Test.\n"
	  "source_routes: Reject\n",
	  check_srcroute_reject },
};

/*
 * Loads path, which must be valid, runs check on the result and drops it.
 */
static void
run_valid(const char *name, const char *path,
    void (*check)(const struct policy *))
{
	struct policy	*pol;
	char		*errs = NULL;

	pol = policy_load(path, &errs);
	CHECKF(pol != NULL && errs == NULL, "%s: %s", name, errs);
	if (pol == NULL) {
		free(errs);
		return;
	}
	CHECK(atomic_load(&pol->refs) == 1);
	CHECK(pol->path != NULL && strcmp(pol->path, path) == 0);
	check(pol);
	CHECK(policy_ref(pol) == pol && atomic_load(&pol->refs) == 2);
	policy_unref(pol);
	policy_unref(pol);
}

/* ---- Errors -------------------------------------------------------------- */

static const struct err_case {
	const char	*name;			/* for failure messages */
	const char	*text;			/* the file */
	const char	*want[12];		/* each error line after
						 * "FILE:", in order (prefix) */
} err_cases[] = {
	{ "unknown keys",
	  "relay:\n"
	  "  trusted_networks: []\n"
	  "  trusted: [10.0.0.0/8]\n"
	  "rules:\n"
	  "  - name: a\n"
	  "    match: { helo: x, ehlo: y }\n"
	  "    action: warn\n"
	  "    replay: \"550 5.7.1 x\"\n"
	  "colour: blue\n",
	  { "3:3: relay.trusted: unknown setting (known here: "
	    "trusted_networks, local_domains, reject_code)\n",
	    "6:23: rules[0].match.ehlo: unknown setting (known here: client, "
	    "client_name, helo, sender, recipient, header)\n",
	    "8:5: rules[0].replay: unknown setting (known here: name, match, "
	    "action, reply)\n",
	    "9:1: colour: unknown setting (known here: include, relay, "
	    "source_routes, refuse_clients, rules, filters, rate_limits)\n" } },
	{ "bad networks",
	  "relay:\n"
	  "  trusted_networks: [10.0.0.0/33, 10.0.0.1/8, \"::1/129\",\n"
	  "                     localhost, 192.0.2.7, '']\n"
	  "refuse_clients: 300.0.0.1\n"
	  "rules:\n"
	  "  - name: r\n"
	  "    match: { client: [10.0.0.0/8, \"2001:db8::1/64\"] }\n"
	  "    action: reject\n"
	  "  - name: s\n"
	  "    match: { client: [] }\n"
	  "    action: reject\n",
	  { "2:22: relay.trusted_networks[0]: invalid network "
	    "\"10.0.0.0/33\": the prefix length must be a number from 0 to "
	    "32\n",
	    "2:35: relay.trusted_networks[1]: invalid network \"10.0.0.1/8\": "
	    "address bits are set past the prefix length\n",
	    "2:47: relay.trusted_networks[2]: invalid network \"::1/129\": the "
	    "prefix length must be a number from 0 to 128\n",
	    "3:22: relay.trusted_networks[3]: invalid network \"localhost\": "
	    "not an IPv4 or IPv6 address\n",
	    "3:44: relay.trusted_networks[5]: invalid network \"\": not an "
	    "IPv4 or IPv6 address\n",
	    "4:17: refuse_clients: invalid network \"300.0.0.1\": not an IPv4 "
	    "or IPv6 address\n",
	    "7:35: rules[0].match.client[1]: invalid network "
	    "\"2001:db8::1/64\": address bits are set past the prefix "
	    "length\n",
	    "10:22: rules[1].match.client: at least one network is "
	    "required\n" } },
	{ "bad choices",
	  "source_routes: drop\n"
	  "relay: { reject_code: 551 }\n"
	  "rules:\n"
	  "  - name: r\n"
	  "    match: { helo: x }\n"
	  "    action: discard\n"
	  "  - name: s\n"
	  "    match: { helo: x }\n"
	  "    action: [reject]\n",
	  { "1:16: source_routes: expected one of strip, reject, keep, got "
	    "\"drop\"\n",
	    "2:23: relay.reject_code: expected one of 550, 554, got \"551\"\n",
	    "6:13: rules[0].action: expected one of reject, tempfail, refuse, "
	    "accept, warn, got \"discard\"\n",
	    "9:13: rules[1].action: expected one of reject, tempfail, refuse, "
	    "accept, warn, got a list\n" } },
	{ "bad replies",
	  "rules:\n"
	  "  - { name: a, match: { helo: x }, action: reject,"
	  " reply: 450 4.7.1 x }\n"
	  "  - { name: b, match: { helo: x }, action: tempfail,"
	  " reply: 550 5.7.1 x }\n"
	  "  - { name: c, match: { helo: x }, action: refuse,"
	  " reply: 554 4.7.1 Denied }\n"
	  "  - { name: d, match: { helo: x }, action: reject,"
	  " reply: 550 5.7.1 }\n"
	  "  - { name: e, match: { helo: x }, action: reject,"
	  " reply: 550 Sender rejected }\n"
	  "  - { name: f, match: { helo: x }, action: reject,"
	  " reply: 55 5.7.1 x }\n"
	  "  - { name: g, match: { helo: x }, action: reject,"
	  " reply: 550 5.07.1 x }\n"
	  "  - { name: h, match: { helo: x }, action: reject,"
	  " reply: \"550 5.7.1 caf\\u00e9\" }\n"
	  "  - { name: i, match: { helo: x }, action: reject,"
	  " reply: \"550 5.7.1 " X100 X100 X100 X100 "x\" }\n"
	  "  - { name: j, match: { helo: x }, action: reject,"
	  " reply: 560 5.7.1 x }\n"
	  "  - { name: k, match: { helo: x }, action: reject,"
	  " reply: 550 5.7.1x y }\n",
	  { "2:59: rules[0].reply: invalid reply \"450 4.7.1 x\": the reply "
	    "code must be 5xx for this action\n",
	    "3:61: rules[1].reply: invalid reply \"550 5.7.1 x\": the reply "
	    "code must be 4xx for this action\n",
	    "4:59: rules[2].reply: invalid reply \"554 4.7.1 Denied\": the "
	    "enhanced code's class 4 must be the reply code's first digit 5\n",
	    "5:59: rules[3].reply: invalid reply \"550 5.7.1\": the text after "
	    "the enhanced code is missing\n",
	    "6:59: rules[4].reply: invalid reply \"550 Sender rejected\": "
	    "expected an enhanced code (RFC 3463) after the reply code, such "
	    "as 5.7.1\n",
	    "7:59: rules[5].reply: invalid reply \"55 5.7.1 x\": expected a "
	    "reply code, an enhanced code and a text, such as \"550 5.7.1 "
	    "Sender rejected\"\n",
	    "8:59: rules[6].reply: invalid reply \"550 5.07.1 x\": expected an "
	    "enhanced code (RFC 3463)",
	    "9:59: rules[7].reply: invalid reply \"550 5.7.1 caf\xc3\xa9\": "
	    "the text must be printable ASCII\n",
	    "10:59: rules[8].reply: invalid reply \"550 5.7.1 xxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\": the text is longer "
	    "than 400 characters\n",
	    "11:59: rules[9].reply: invalid reply \"560 5.7.1 x\": expected a "
	    "reply code",
	    "12:59: rules[10].reply: invalid reply \"550 5.7.1x y\": expected "
	    "an enhanced code (RFC 3463)" } },
	{ "reply where none is sent",
	  "rules:\n"
	  "  - name: w\n"
	  "    match: { helo: x }\n"
	  "    action: warn\n"
	  "    reply: \"550 5.7.1 Nope\"\n"
	  "  - name: a\n"
	  "    reply: \"250 2.0.0 Fine\"\n"
	  "    match: { helo: x }\n"
	  "    action: accept\n",
	  { "5:12: rules[0].reply: a warn rule sends no reply (only reject, "
	    "tempfail and refuse rules do)\n",
	    "7:12: rules[1].reply: an accept rule sends no reply" } },
	{ "duplicate rule names",
	  "rules:\n"
	  "  - name: same\n"
	  "    match: { helo: a }\n"
	  "    action: warn\n"
	  "  - name: other\n"
	  "    match: { helo: b }\n"
	  "    action: warn\n"
	  "  - name: same\n"
	  "    match: { helo: c }\n"
	  "    action: warn\n"
	  "  - { name: other, match: { helo: d }, action: warn }\n",
	  { "8:11: rules[2].name: duplicate rule name \"same\" (first defined "
	    "at FILE:2:11)\n",
	    "11:13: rules[3].name: duplicate rule name \"other\" (first "
	    "defined at FILE:5:11)\n" } },
	{ "bad regexes",
	  "rules:\n"
	  "  - name: r\n"
	  "    match:\n"
	  "      sender: '/(foo/'\n"
	  "      recipient: /a[b/\n"
	  "      helo: /x/q\n"
	  "      header: '/foo'\n"
	  "      client_name: '/a{2,1}/i'\n"
	  "      client: '/*/'\n"
	  "    action: reject\n",
	  { "4:15: rules[0].match.sender: invalid pattern \"/(foo/\": missing "
	    "closing parenthesis at offset 4 of the regex\n",
	    "5:18: rules[0].match.recipient: invalid pattern \"/a[b/\": "
	    "missing terminating ] for character class at offset 3 of the "
	    "regex\n",
	    "6:13: rules[0].match.helo: invalid pattern \"/x/q\": unknown "
	    "regex flag 'q' (the flags are i, m, s and x)\n",
	    "7:15: rules[0].match.header: invalid pattern \"/foo\": a regex "
	    "needs a closing '/' (write /regex/flags)\n",
	    "8:20: rules[0].match.client_name: invalid pattern \"/a{2,1}/i\": "
	    "numbers out of order in {} quantifier at offset 5 of the "
	    "regex\n",
	    "9:15: rules[0].match.client: invalid pattern \"/*/\": quantifier "
	    "does not follow a repeatable item at offset 0 of the regex\n" } },
	{ "empty and missing match",
	  "rules:\n"
	  "  - { name: a, match: {}, action: warn }\n"
	  "  - { name: b, match: , action: warn }\n"
	  "  - { name: c, match: sender, action: warn }\n"
	  "  - { name: d, match: { sender: }, action: warn }\n"
	  "  - { name: e, action: warn }\n",
	  { "2:23: rules[0].match: expected a map of at least one of client, "
	    "client_name, helo, sender, recipient, header, got an empty map\n",
	    "3:23: rules[1].match: expected a map of at least one of client, "
	    "client_name, helo, sender, recipient, header, got nothing\n",
	    "4:23: rules[2].match: expected a map of at least one of client, "
	    "client_name, helo, sender, recipient, header, got \"sender\"\n",
	    "5:33: rules[3].match.sender: expected a pattern: '/regex/flags' "
	    "or a plain string, got nothing\n",
	    "6:5: rules[4].match: required setting is missing\n" } },
	{ "missing keys and bad rules",
	  "rules:\n"
	  "  - {}\n"
	  "  - just a string\n"
	  "  - name: 'has space'\n"
	  "    match: { helo: x }\n"
	  "    action: warn\n"
	  "  - name: ''\n"
	  "    match: { helo: x }\n"
	  "    action: warn\n",
	  { "2:5: rules[0].name: required setting is missing\n",
	    "2:5: rules[0].match: required setting is missing\n",
	    "2:5: rules[0].action: required setting is missing\n",
	    "3:5: rules[1]: expected a rule (a map with name, match and "
	    "action), got \"just a string\"\n",
	    "4:11: rules[2].name: invalid rule name \"has space\": only "
	    "letters, digits, '_', '.' and '-' are allowed\n",
	    "7:11: rules[3].name: invalid rule name \"\": only letters" } },
	{ "wrong types",
	  "rules: { name: x }\n"
	  "relay: [a]\n"
	  "refuse_clients: { a: b }\n"
	  "source_routes:\n"
	  "include: { a: b }\n",
	  { "1:8: rules: expected a list of rules, got a map\n",
	    "2:8: relay: expected a map of settings, got a list\n",
	    "3:17: refuse_clients: expected a list of networks such as "
	    "[192.0.2.0/24, \"2001:db8::/32\"], got a map\n",
	    "4:15: source_routes: expected one of strip, reject, keep, got "
	    "nothing\n",
	    "5:10: include: expected a list of file names, got a map\n" } },
	{ "bad domains",
	  "relay:\n"
	  "  local_domains: [\"exa mple.test\", -x.test, ., ..test, a..test,\n"
	  "                  'a.test..', x_y.test, ok.test, .ok.test]\n",
	  { "2:19: relay.local_domains[0]: invalid domain \"exa mple.test\": "
	    "only letters, digits, '-' and '.' are allowed\n",
	    "2:36: relay.local_domains[1]: invalid domain \"-x.test\": a label "
	    "starts with '-'\n",
	    "2:45: relay.local_domains[2]: invalid domain \".\": it is empty\n",
	    "2:48: relay.local_domains[3]: invalid domain \"..test\": it has "
	    "an empty label",
	    "2:56: relay.local_domains[4]: invalid domain \"a..test\": it has "
	    "an empty label",
	    "3:19: relay.local_domains[5]: invalid domain \"a.test..\": it "
	    "ends in '.' or '-'\n",
	    "3:31: relay.local_domains[6]: invalid domain \"x_y.test\": only "
	    "letters" } },
	{ "duplicate keys, NUL, non-scalar key",
	  "source_routes: strip\n"
	  "source_routes: keep\n"
	  "refuse_clients: [\"10.0.0.0/8\\0\"]\n"
	  "? [a]\n"
	  ": b\n"
	  "rules:\n"
	  "  - name: r\n"
	  "    name: s\n"
	  "    match: { helo: \"a\\0b\" }\n"
	  "    action: warn\n",
	  { "2:1: source_routes: duplicate key (first given at line 1)\n",
	    "3:18: refuse_clients[0]: contains a NUL character\n",
	    "4:3: expected a setting name, got a list\n",
	    "8:5: rules[0].name: duplicate key (first given at line 7)\n",
	    "9:20: rules[0].match.helo: contains a NUL character\n" } },
	{ "not a map", "- rules\n",
	  { "1:1: expected a map of settings at the top level, got a "
	    "list\n" } },
	{ "syntax error",
	  "rules:\n"
	  "  - name: a\n"
	  "    match: { helo: [x }\n",
	  { "3:23: YAML syntax error: did not find expected ',' or ']' (while "
	    "parsing a flow sequence at line 3, column 20)\n" } },
	{ "two documents",
	  "source_routes: keep\n"
	  "---\n"
	  "source_routes: strip\n",
	  { "3:1: only one YAML document is allowed\n" } },
	{ "control characters in a key",
	  "\"a\\nb\\e[31m\": 1\n",
	  { "1:1: a?b?[31m: unknown setting (known here: include, relay, "
	    "source_routes, refuse_clients, rules, filters, rate_limits)\n" } },
	{ "bad include entries",
	  "include: ['', [a]]\n",
	  { "1:11: include[0]: expected a file name, got \"\"\n",
	    "1:15: include[1]: expected a file name, got a list\n" } },
};

/*
 * Compares the error text errs with want (prefixes, in order; "FILE" in a
 * prefix stands for file), given the path of the file loaded; frees errs.
 */
static void
check_errors(const char *name, const char *file, char *errs,
    const char *const *want, size_t nwant, int prefixed)
{
	char	*line, *nl, w[1024], *at;
	size_t	 i, plen = strlen(file);

	CHECKF(errs != NULL, "%s: loaded", name);
	if (errs == NULL)
		return;
	for (i = 0, line = errs; *line != '\0'; i++, line = nl + 1) {
		nl = strchr(line, '\n');
		CHECKF(nl != NULL, "%s: unterminated line", name);
		if (nl == NULL)
			break;
		if (i >= nwant || want[i] == NULL) {
			CHECKF(0, "%s: extra error: %.*s", name,
			    (int)(nl - line), line);
			continue;
		}
		snprintf(w, sizeof(w), "%s", want[i]);
		if ((at = strstr(w, "FILE")) != NULL) {
			memmove(at + plen, at + 4, strlen(at + 4) + 1);
			memcpy(at, file, plen);
		}
		CHECKF((!prefixed || (strncmp(line, file, plen) == 0 &&
		    line[plen] == ':')) && strncmp(line + (prefixed ? plen + 1 :
		    0), w, strlen(w)) == 0, "%s: error %zu\n   got: %.*s\n  "
		    "want: %s%s%s", name, i, (int)(nl - line), line,
		    prefixed ? file : "", prefixed ? ":" : "", w);
	}
	for (; i < nwant && want[i] != NULL; i++)
		CHECKF(0, "%s: missing error %s", name, want[i]);
	free(errs);
}

/* Loads the text of c, expecting exactly its errors. */
static void
run_err_case(const struct err_case *c)
{
	struct policy	*pol;
	char		*errs = NULL;

	write_file(polfile, c->text, strlen(c->text));
	pol = policy_load(polfile, &errs);
	CHECKF(pol == NULL, "%s: loaded", c->name);
	policy_unref(pol);
	check_errors(c->name, polfile, errs, c->want, NELEM(c->want), 1);
}

/* ---- Includes ------------------------------------------------------------ */

/* data/policy/include/main.yaml and what it includes. */
static void
check_include(const struct policy *pol)
{
	static const char	*names[] = {
		"first-rule", "third-rule", "second-rule", "main-rule"
	};
	size_t			 i;

	CHECK(pol->nrules == NELEM(names));
	for (i = 0; i < pol->nrules && i < NELEM(names); i++)
		CHECKF(strcmp(pol->rules[i].name, names[i]) == 0, "rule %zu: "
		    "%s, want %s", i, pol->rules[i].name, names[i]);
	if (pol->nrules != NELEM(names))
		return;
	CHECK(pol->rules[0].stage == POL_MAIL && pol->rules[0].code == 550);
	CHECK(pol->rules[1].stage == POL_CONNECT &&
	    in_set(pol->rules[1].match.client_net, "198.51.100.1"));
	CHECK(pol->rules[2].stage == POL_RCPT && pol->rules[2].code == 451);
	CHECK(pol->rules[3].stage == POL_HELO);
	CHECK(pol->nstage_rules[POL_CONNECT] == 1 &&
	    pol->stage_rules[POL_CONNECT][0] == 1);
	CHECK(pol->nstage_rules[POL_MAIL] == 1 &&
	    pol->stage_rules[POL_MAIL][0] == 0);
	CHECK(pol->relay == 1);
	CHECK(in_set(pol->trusted_networks, "10.1.1.1"));
	CHECK(in_set(pol->trusted_networks, "172.31.0.1"));
	CHECK(!in_set(pol->trusted_networks, "192.168.0.1"));
	CHECK(in_domains(pol->local_domains, "main.test"));
	CHECK(in_domains(pol->local_domains, "mx.first.test"));
	CHECK(!in_domains(pol->local_domains, "first.test"));
	CHECK(in_set(pol->refuse_clients, "192.0.2.1"));
	CHECK(in_set(pol->refuse_clients, "192.0.2.2"));
	CHECK(in_set(pol->refuse_clients, "192.0.2.3"));
	CHECK(!in_set(pol->refuse_clients, "192.0.2.4"));
	CHECK(pol->source_routes == POL_SR_REJECT);
	CHECK(pol->relay_reject_code == 554);
}

static const struct include_case {
	const char	*file;			/* loaded, under DATA */
	const char	*want[4];		/* each whole error line
						 * (prefix) */
} include_cases[] = {
	{ "cycle_a.yaml",
	  { DATA "cycle_b.yaml:2:11: include[0]: include cycle: "
	    DATA "cycle_a.yaml -> " DATA "cycle_b.yaml -> "
	    DATA "cycle_a.yaml\n" } },
	{ "cycle_self.yaml",
	  { DATA "cycle_self.yaml:1:10: include: include cycle: "
	    DATA "cycle_self.yaml -> " DATA "cycle_self.yaml\n" } },
	{ "missing.yaml",
	  { DATA "missing.yaml:4:5: include[0]: " DATA "nope.yaml: cannot "
	    "open: No such file or directory\n" } },
	{ "twice.yaml",
	  { DATA "twice.yaml:1:1: source_routes: already set at "
	    DATA "twice_inc.yaml:1:1 (it may be set in one file only)\n" } },
	{ "dup.yaml",
	  { DATA "dup.yaml:3:11: rules[0].name: duplicate rule name "
	    "\"same\" (first defined at " DATA "dup_inc.yaml:5:11)\n" } },
	{ "diamond.yaml",
	  { DATA "diamond_b.yaml:1:11: include[0]: " DATA "diamond_c.yaml is "
	    "already included by " DATA "diamond_a.yaml\n" } },
	{ "bad.yaml",
	  { DATA "bad.yaml:2:8: rules: expected a list of rules, got \"5\"\n",
	    DATA "bad_inc.yaml:2:22: relay.trusted_networks[0]: invalid "
	    "network \"10.0.0.0/33\"",
	    DATA "bad_inc.yaml:3:1: colour: unknown setting" } },
	{ "nowhere.yaml",
	  { DATA "nowhere.yaml: cannot open: No such file or directory\n" } },
	{ "include",
	  { DATA "include: not a regular file\n" } },
};

/* The include fixtures: merge order, and each include error. */
static void
test_includes(void)
{
	const struct include_case	*t;
	struct policy			*pol;
	char				*errs, path[PATH_MAX];
	size_t				 i;

	run_valid("include", DATA "include/main.yaml", check_include);
	for (i = 0; i < NELEM(include_cases); i++) {
		t = &include_cases[i];
		snprintf(path, sizeof(path), DATA "%s", t->file);
		errs = NULL;
		pol = policy_load(path, &errs);
		CHECKF(pol == NULL, "%s: loaded", t->file);
		policy_unref(pol);
		check_errors(t->file, path, errs, t->want, NELEM(t->want), 0);
	}
}

/* Loads path, which must be refused with exactly the error text want. */
static void
check_refused(const char *name, const char *path, const char *want)
{
	struct policy	*pol;
	char		*errs = NULL;

	pol = policy_load(path, &errs);
	CHECKF(pol == NULL && errs != NULL && strcmp(errs, want) == 0,
	    "%s\n   got: %s  want: %s", name, errs != NULL ? errs : "(none)\n",
	    want);
	policy_unref(pol);
	free(errs);
}

/*
 * Control characters in file names, the loaded file's and an included
 * one's, are shown as '?' so that each error stays on one line.
 */
static void
test_control_names(void)
{
	char	want[3 * PATH_MAX], text[64];

	snprintf(want, sizeof(want), "%s/no?such?[1m.yaml: cannot open: No "
	    "such file or directory\n", tmpdir);
	check_refused("control characters in the file name",
	    tmp("no\nsuch\033[1m.yaml"), want);

	snprintf(text, sizeof(text), "include: [\"x\\ty\\r\"]\n");
	write_file(polfile, text, strlen(text));
	snprintf(want, sizeof(want), "%s:1:11: include[0]: %s/x?y?: cannot "
	    "open: No such file or directory\n", polfile, tmpdir);
	check_refused("control characters in an include", polfile, want);
}

/* A FIFO named as an include is refused, not waited on for ever. */
static void
test_fifo_include(void)
{
	char	want[3 * PATH_MAX], text[64];

	CHECK(mkfifo(tmp("pipe.yaml"), 0600) == 0);
	snprintf(text, sizeof(text), "include: [pipe.yaml]\n");
	write_file(polfile, text, strlen(text));
	snprintf(want, sizeof(want), "%s:1:11: include[0]: %s/pipe.yaml: not "
	    "a regular file\n", polfile, tmpdir);
	check_refused("a FIFO as an include", polfile, want);
	unlink(tmp("pipe.yaml"));
}

/*
 * A chain of includes: d0.yaml includes d1.yaml ... up to d<n>.yaml, each
 * with a rule.  Eight levels below the first file load; nine do not.
 */
static void
test_include_depth(void)
{
	struct policy	*pol;
	char		 name[32], text[256], *errs, want[PATH_MAX + 128];
	int		 i, n;

	for (n = 8; n <= 9; n++) {
		for (i = 0; i <= n; i++) {
			snprintf(name, sizeof(name), "d%d.yaml", i);
			snprintf(text, sizeof(text), "%s%d.yaml]\nrules:\n"
			    "  - { name: r%d, match: { helo: x }, action: "
			    "warn }\n", i < n ? "include: [d" : "# [d", i + 1,
			    i);
			write_file(tmp(name), text, strlen(text));
		}
		errs = NULL;
		pol = policy_load(tmp("d0.yaml"), &errs);
		if (n == 8) {
			CHECKF(pol != NULL && pol->nrules == 9, "depth 8: %s",
			    errs);
			CHECK(pol != NULL && pol->nrules == 9 &&
			    strcmp(pol->rules[0].name, "r8") == 0 &&
			    strcmp(pol->rules[8].name, "r0") == 0);
			free(errs);
			policy_unref(pol);
			continue;
		}
		CHECK(pol == NULL);
		snprintf(want, sizeof(want), "%s/d8.yaml:1:11: include[0]: "
		    "%s/d9.yaml: includes are nested more than 8 deep\n",
		    tmpdir, tmpdir);
		CHECKF(errs != NULL && strcmp(errs, want) == 0, "depth 9: %s",
		    errs);
		free(errs);
	}
	for (i = 0; i <= 9; i++) {
		snprintf(name, sizeof(name), "d%d.yaml", i);
		unlink(tmp(name));
	}
}

/* ---- The example, the deploy file, a large policy ------------------------ */

/* Returns text without its comment-only and blank lines (malloc'd). */
static char *
strip_comments(const char *text)
{
	const char	*line, *nl, *p;
	char		*out, *o;

	if ((out = o = malloc(strlen(text) + 1)) == NULL)
		exit(2);
	for (line = text; *line != '\0'; line = nl) {
		if ((nl = strchr(line, '\n')) == NULL)
			nl = line + strlen(line);
		else
			nl++;
		for (p = line; *p == ' '; p++)
			;
		if (*p == '#' || *p == '\n' || *p == '\0')
			continue;
		memcpy(o, line, (size_t)(nl - line));
		o += nl - line;
	}
	*o = '\0';
	return out;
}

/*
 * The example loads as written, and deploy/policy.yaml is that
 * example with comments added.
 */
static void
test_example(void)
{
	char	*deploy, *a, *b;
	size_t	 len;

	write_file(polfile, POLICY_EXAMPLE, strlen(POLICY_EXAMPLE));
	run_valid("example", polfile, check_example);

	/* deploy/policy.yaml: the example with comments, loaded as shipped. */
	deploy = read_file(DEPLOY_POLICY, &len);
	run_valid("deploy/policy.yaml", DEPLOY_POLICY, check_example);
	a = strip_comments(deploy);
	b = strip_comments(POLICY_EXAMPLE);
	CHECKF(strcmp(a, b) == 0, "%s is not the example plus comments:\n%s",
	    DEPLOY_POLICY, a);
	free(a);
	free(b);
	free(deploy);
}

/* Every truncated prefix of the deploy file loads or fails cleanly. */
static void
test_prefixes(void)
{
	struct policy	*pol;
	char		*text, *errs;
	size_t		 len, n, bad = 0;

	text = read_file(DEPLOY_POLICY, &len);
	for (n = 0; n < len; n++) {
		write_file(polfile, text, n);
		errs = NULL;
		pol = policy_load(polfile, &errs);
		bad += (pol == NULL) != (errs != NULL);
		bad += errs != NULL && strncmp(errs, polfile,
		    strlen(polfile)) != 0;
		policy_unref(pol);
		free(errs);
	}
	CHECKF(bad == 0, "%zu prefixes went wrong", bad);
	free(text);
}

/*
 * Writes a policy of 1,000 rules: 900 on networks, names and addresses,
 * 100 regexes; large relay lists too.  Loads it, reports the time and
 * checks a few rules.
 */
static void
test_large(void)
{
	struct timespec	 t0, t1;
	struct policy	*pol;
	FILE		*f;
	char		*errs = NULL;
	size_t		 i, n;
	double		 ms;

	if ((f = fopen(polfile, "w")) == NULL)
		exit(2);
	fprintf(f, "relay:\n  trusted_networks:\n");
	for (i = 0; i < 200; i++)
		fprintf(f, "    - 10.%zu.%zu.0/24\n"
		    "    - \"2001:db8:%zx::/48\"\n", i / 16, i % 16 * 16, i);
	fprintf(f, "  local_domains:\n");
	for (i = 0; i < 200; i++)
		fprintf(f, "    - %sd%zu.example.test\n", i % 2 ? "." : "", i);
	fprintf(f, "refuse_clients: [");
	for (i = 0; i < 100; i++)
		fprintf(f, "%s198.%zu.%zu.0/24", i ? ", " : "", 18 + i / 256,
		    i % 256);
	fprintf(f, "]\nrules:\n");
	for (i = 0; i < 1000; i++) {
		fprintf(f, "  - name: rule-%zu\n    match:\n", i);
		if (i >= 900)
			fprintf(f, i % 2 ?
			    "      sender: '/^spam%zu[0-9]*@(mail|smtp)\\."
			    "example%zu\\.test$/i'\n" :
			    "      header: '/^Subject:.*\\b(offer|deal)%zu\\b"
			    "(?!\\d)/i'\n", i, i);
		else if (i % 6 == 0)
			fprintf(f, "      client: [10.%zu.%zu.0/24, "
			    "\"2001:db8:%zx::/64\"]\n", i / 256, i % 256, i);
		else if (i % 6 == 1)
			fprintf(f, "      client_name: host%zu.example.test\n",
			    i);
		else if (i % 6 == 2)
			fprintf(f, "      helo: helo%zu.example.test\n", i);
		else if (i % 6 == 3)
			fprintf(f, "      sender: user%zu@example.test\n", i);
		else if (i % 6 == 4)
			fprintf(f, "      recipient: rcpt%zu@example.test\n",
			    i);
		else
			fprintf(f, "      client: 192.0.%zu.%zu\n"
			    "      helo: h%zu.test\n", i / 256, i % 256, i);
		fprintf(f, "    action: %s\n", i % 3 == 0 ? "reject" :
		    i % 3 == 1 ? "warn" : "tempfail");
		if (i % 3 == 2)
			fprintf(f, "    reply: \"451 4.7.1 Slow down (%zu)\"\n",
			    i);
	}
	if (fclose(f) != 0)
		exit(2);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pol = policy_load(polfile, &errs);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
	    (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	printf("policy_load of 1,000 rules (100 regexes): %.2f ms\n", ms);
	CHECKF(pol != NULL, "%s", errs);
	free(errs);
	if (pol == NULL)
		return;
	CHECK(pol->nrules == 1000);
	for (i = 0, n = 0; i < POL__STAGES; i++)
		n += pol->nstage_rules[i];
	CHECK(n == 1000);
	CHECK(pol->nstage_rules[POL_HEADER] == 50);
	CHECK(in_set(pol->rules[6].match.client_net, "10.0.6.9"));
	CHECK(in_set(pol->rules[6].match.client_net, "2001:db8:6::1"));
	CHECK(!in_set(pol->rules[6].match.client_net, "10.0.7.9"));
	CHECK(matches(pol->rules[901].match.sender,
	    "SPAM901123@smtp.example901.test"));
	CHECK(!matches(pol->rules[901].match.sender,
	    "spam901@smtp.example902.test"));
	CHECK(matches(pol->rules[900].match.header,
	    "Subject: a great offer900 today"));
	CHECK(!matches(pol->rules[900].match.header,
	    "Subject: a great offer9001 today"));
	CHECK(pol->rules[905].stage == POL_MAIL);
	CHECK(pol->rules[5].stage == POL_HELO &&
	    in_set(pol->rules[5].match.client_net, "192.0.0.5") &&
	    matches(pol->rules[5].match.helo, "H5.TEST"));
	CHECK(in_set(pol->trusted_networks, "10.12.80.1"));
	CHECK(in_set(pol->trusted_networks, "2001:db8:c7::1"));
	CHECK(in_domains(pol->local_domains, "d198.example.test"));
	CHECK(in_domains(pol->local_domains, "x.d199.example.test"));
	CHECK(!in_domains(pol->local_domains, "d199.example.test"));
	CHECK(in_set(pol->refuse_clients, "198.18.99.1"));
	policy_unref(pol);
}

/* policy_empty(), and policy_unref(NULL). */
static void
test_empty(void)
{
	struct policy	*pol;

	pol = policy_empty();
	CHECK(pol != NULL && atomic_load(&pol->refs) == 1);
	CHECK(pol != NULL && is_empty(pol) && pol->path == NULL);
	policy_unref(pol);
	policy_unref(NULL);
}

/* deploy/policy-ratelimits.yaml, with the example first, loads. */
static void
test_ratelimits_example(void)
{
	const struct pol_ratelimit	*rl;
	struct policy			*pol;
	char				*errs = NULL;

	pol = policy_load(DEPLOY_RATELIMITS, &errs);
	CHECKF(pol != NULL, "%s: %s", DEPLOY_RATELIMITS, errs);
	free(errs);
	if (pol == NULL)
		return;
	CHECK(pol->nratelimits == 4);
	rl = &pol->ratelimits[0];
	CHECK(strcmp(rl->rule.name, "msgs-per-ip") == 0);
	CHECK(rl->key == POL_RLK_CLIENT_IP && rl->count == POL_RLC_MESSAGES);
	CHECK(rl->limit == 100 && rl->window_ms == 60000);
	CHECK(rl->rule.action == POL_TEMPFAIL);
	CHECK(rl->rule.match.client_net != NULL);
	CHECK(pol->ratelimits[3].limit == 1ull << 30);
	policy_unref(pol);
}

int
main(void)
{
	size_t	 i;

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(polfile, sizeof(polfile), "%s/policy.yaml", tmpdir);
	if ((scratch = pattern_scratch_new()) == NULL)
		return 2;

	for (i = 0; i < NELEM(valid_cases); i++) {
		write_file(polfile, valid_cases[i].text,
		    strlen(valid_cases[i].text));
		run_valid(valid_cases[i].name, polfile, valid_cases[i].check);
	}
	for (i = 0; i < NELEM(err_cases); i++)
		run_err_case(&err_cases[i]);
	test_empty();
	test_includes();
	test_control_names();
	test_fifo_include();
	test_include_depth();
	test_example();
	test_prefixes();
	test_large();

	pattern_scratch_free(scratch);

	rmdir(tmp("more"));
	unlink(tmp("deploy.yaml"));
	unlink(polfile);
	if (rmdir(tmpdir) != 0)
		perror(tmpdir);
	test_ratelimits_example();
	TEST_DONE();
}
