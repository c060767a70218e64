/*
 * policy.c: loads a policy file, and the files it includes, into one
 * immutable struct policy.
 *
 * Each file is parsed with libyaml's document API and walked map by map,
 * as config.c does (the shared parts are in yamlutil.c).  A file's
 * include: list is read first, so that the lists of the files it includes
 * (networks, domains, rules) come before its own.  What a walk finds is
 * gathered in a struct pol_ctx; every matcher is compiled as soon as it is
 * read, so that a bad regex is reported with its position.  Errors do not
 * stop the walk: all are reported, sorted into file order, and nothing is
 * built.  Otherwise pol_build() turns the context into the policy.
 */

#include <sys/stat.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#include "filter.h"
#include "policy.h"
#include "yamlutil.h"

#define POL_FILE_MAX	(8 * 1024 * 1024)	/* larger is not a policy */
#define POL_DEPTH_MAX	8		/* include: nesting, files deep */
#define POL_TEXT_MAX	400		/* reply: text after the codes */
#define POL_PATH_MAX	256		/* a setting's name in messages */
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* Keys of the top-level map, in the order of root_keys[]. */
enum { K_INCLUDE, K_RELAY, K_SOURCE_ROUTES, K_REFUSE_CLIENTS, K_RULES,
    K_FILTERS, K_RATE_LIMITS };
static const char *const root_keys[] = {
	"include", "relay", "source_routes", "refuse_clients", "rules",
	"filters", "rate_limits", NULL
};

/* Keys of a rate limit, in the order of rl_keys[]. */
enum { KL_NAME, KL_MATCH, KL_KEY, KL_COUNT, KL_LIMIT, KL_WINDOW, KL_ACTION,
    KL__N };
static const char *const rl_keys[] = {
	"name", "match", "key", "count", "limit", "window", "action", NULL
};
/* The values of key:, count: and action:, in the order of their enums. */
static const char *const rl_key_names[] = {
	"client_ip", "client_net", "helo", "sender", "sender_domain",
	"recipient", "recipient_domain", "auth_user", NULL
};
static const char *const rl_count_names[] = {
	"connections", "messages", "recipients", "bytes", NULL
};
static const char *const rl_action_names[] = { "tempfail", "reject", NULL };

/* Keys of relay:, in the order of relay_keys[]. */
enum { KR_TRUSTED, KR_LOCAL, KR_REJECT_CODE };
static const char *const relay_keys[] = {
	"trusted_networks", "local_domains", "reject_code", NULL
};

/* Keys of a rule, in the order of rule_keys[]. */
enum { KU_NAME, KU_MATCH, KU_ACTION, KU_REPLY, KU__N };
static const char *const rule_keys[] = {
	"name", "match", "action", "reply", NULL
};

/* Keys of a rule's match:, in the order of match_keys[]. */
enum { KM_CLIENT, KM_CLIENT_NAME, KM_HELO, KM_SENDER, KM_RECIPIENT,
    KM_HEADER };
static const char *const match_keys[] = {
	"client", "client_name", "helo", "sender", "recipient", "header", NULL
};

/* The stage at which each match: key is known. */
static const enum pol_stage match_stage[] = {
	[KM_CLIENT] = POL_CONNECT, [KM_CLIENT_NAME] = POL_CONNECT,
	[KM_HELO] = POL_HELO, [KM_SENDER] = POL_MAIL,
	[KM_RECIPIENT] = POL_RCPT, [KM_HEADER] = POL_HEADER,
};

/* Where each match: key's pattern goes in a struct pol_match. */
static const size_t match_field[] = {
	[KM_CLIENT] = offsetof(struct pol_match, client),
	[KM_CLIENT_NAME] = offsetof(struct pol_match, client_name),
	[KM_HELO] = offsetof(struct pol_match, helo),
	[KM_SENDER] = offsetof(struct pol_match, sender),
	[KM_RECIPIENT] = offsetof(struct pol_match, recipient),
	[KM_HEADER] = offsetof(struct pol_match, header),
};

/* Returns where the pattern of match: key i (KM_*) goes in m. */
static const struct pattern **
pol_match_field(struct pol_match *m, size_t i)
{
	return (const struct pattern **)(void *)((char *)m + match_field[i]);
}

/* The names of enum pol_action, then NULL. */
static const char *const action_names[] = {
	[POL_REJECT] = "reject", [POL_TEMPFAIL] = "tempfail",
	[POL_REFUSE] = "refuse", [POL_ACCEPT] = "accept", [POL_WARN] = "warn",
	NULL
};

/* What each action answers; a code of 0: no reply at all. */
static const struct pol_answer {
	int		 code;		/* default reply code */
	const char	*reply;		/* default text after the code */
} action_answer[] = {
	[POL_REJECT] = { 550, "5.7.1 Rejected by policy" },
	[POL_TEMPFAIL] = { 451, "4.7.1 Try again later" },
	[POL_REFUSE] = { 554, "5.7.1 Access denied" },
	[POL_ACCEPT] = { 0, NULL },
	[POL_WARN] = { 0, NULL },
};

/* The names of enum pol_srcroute, then NULL. */
static const char *const srcroute_names[] = {
	[POL_SR_STRIP] = "strip", [POL_SR_REJECT] = "reject",
	[POL_SR_KEEP] = "keep", NULL
};

/* The values relay: reject_code may take, then NULL. */
static const char *const reject_codes[] = { "550", "554", NULL };

/* A file being read; parent leads back to the first one. */
struct pol_file {
	const char		*path;		/* as opened (relative to the
						 * working directory or
						 * absolute); owned by the
						 * context's files[] */
	unsigned		 idx;		/* order opened: sorts errors */
	unsigned		 depth;		/* 0 for the first file */
	const struct pol_file	*parent;	/* the file including it, or
						 * NULL */
	yaml_document_t		*doc;		/* its tree */
};

/* A file opened, to catch one opened twice. */
struct pol_opened {
	char		*path;		/* as opened; malloc'd, and referred
					 * to by errors until the end */
	dev_t		 dev;		/* its identity ... */
	ino_t		 ino;		/* ... on disk */
	const char	*by;		/* the file that included it, or NULL
					 * for the first */
};

/* Where a setting was given, for those that one file only may give. */
struct pol_where {
	const char	*file;		/* the file, or NULL when not set */
	size_t		 line;		/* 1-based */
	size_t		 col;		/* 1-based */
};

/* A growing list of networks. */
struct pol_cidrs {
	struct cidr	*v;		/* the networks, malloc'd */
	size_t		 n;		/* entries used in v */
	size_t		 cap;		/* entries allocated in v */
};

/* A rule as read, with where it was given. */
struct pol_ruledef {
	struct pol_rule	 rule;		/* what it becomes; its name, reply
					 * and matchers are owned here */
	const char	*file;		/* the file it is in */
	unsigned	 fileidx;	/* that file's order (for errors) */
	size_t		 index;		/* its index in that file's rules: */
	yaml_mark_t	 mark;		/* position of its name */
};

/* State of one policy_load() call. */
/* A rate limit being read. */
struct pol_rldef {
	struct pol_ruledef	 rd;		/* its name and match, as a rule's */
	struct pol_ratelimit	 rl;		/* the rest */
};

struct pol_ctx {
	struct yu_errs		 errs;		/* errors found so far */
	const struct pol_file	*cur;		/* the file being walked */
	struct pol_opened	*files;		/* every file opened */
	size_t			 nfiles;	/* entries used in files */
	size_t			 filecap;	/* entries allocated in files */

	int			 relay;		/* a relay: section was seen */
	struct pol_cidrs	 trusted;	/* relay: trusted_networks: */
	char			**domains;	/* relay: local_domains:, as
						 * written, malloc'd */
	size_t			 ndomains;	/* entries used in domains */
	size_t			 domaincap;	/* entries allocated */
	struct pol_cidrs	 refuse;	/* refuse_clients: */
	enum pol_srcroute	 srcroute;	/* source_routes: */
	int			 reject_code;	/* relay: reject_code: */
	struct pol_rldef	*rls;		/* rate_limits:, in load order */
	size_t			 nrls;		/* entries used in rls */
	size_t			 rlcap;		/* entries allocated in rls */
	struct pol_ruledef	*rules;		/* rules:, in load order */
	size_t			 nrules;	/* entries used in rules */
	size_t			 rulecap;	/* entries allocated in rules */

	const struct flt_def	**filters;	/* filters:, or NULL */
	size_t			 nfilters;	/* entries used in filters */
	struct pol_where	 w_filters;	/* filters: given at */
	struct pol_where	 w_srcroute;	/* source_routes: given at */
	struct pol_where	 w_reject_code;	/* relay: reject_code: */
};

/* Called for one entry of a list: the node, its name ("rules[2]"), its
 * index in the list, and the caller's arg. */
typedef void (*pol_item_fn)(struct pol_ctx *, const yaml_node_t *,
    const char *, size_t, void *);

static void pol_file_load(struct pol_ctx *, char *, const yaml_node_t *,
    const char *);
static void pol_filter_item(struct pol_ctx *, const yaml_node_t *,
    const char *, size_t, void *);
static void pol_ratelimit(struct pol_ctx *, const yaml_node_t *,
    const char *, size_t, void *);
static void pol_check_rule_names(struct pol_ctx *);

/* Returns the node numbered id of the document being walked. */
static yaml_node_t *
pol_node(struct pol_ctx *c, int id)
{
	return yaml_document_get_node(c->cur->doc, id);
}

/*
 * Returns the index of v's text in names (a NULL-terminated list; case
 * does not matter, as in config.c), or -1 after reporting "path: expected
 * one of ..., got ...".
 */
static long
pol_choice(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    const char *const *names)
{
	char		 expect[128], got[80];
	const char	*s;
	size_t		 i, len = 0;

	for (i = 0; names[i] != NULL && len < sizeof(expect); i++)
		len += (size_t)snprintf(expect + len, sizeof(expect) - len,
		    "%s%s", i == 0 ? "one of " : ", ", names[i]);
	if ((s = yu_scalar(&c->errs, v, path, expect)) == NULL)
		return -1;
	for (i = 0; names[i] != NULL; i++)
		if (strcasecmp(s, names[i]) == 0)
			return (long)i;
	yu_error(&c->errs, &v->start_mark, "%s: expected %s, got %s", path,
	    expect, yu_got(v, got, sizeof(got)));
	return -1;
}

/*
 * Notes that key kn (named path) sets a setting that one file only may
 * give.  Returns 0, or -1 after reporting that another file gave it.
 */
static int
pol_once(struct pol_ctx *c, struct pol_where *w, const yaml_node_t *kn,
    const char *path)
{
	if (w->file != NULL) {
		yu_error(&c->errs, &kn->start_mark, "%s: already set at "
		    "%s:%zu:%zu (it may be set in one file only)", path,
		    w->file, w->line, w->col);
		return -1;
	}
	w->file = c->cur->path;
	w->line = kn->start_mark.line + 1;
	w->col = kn->start_mark.column + 1;
	return 0;
}

/*
 * Calls fn(c, item, name, i, arg) for each item i of the list v, named
 * "path[i]", or when one is nonzero for v itself, named path, when it is
 * a single scalar (a list of one written without brackets).  Reports
 * anything else with what was expected.
 */
static void
pol_each(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    const char *expect, int one, pol_item_fn fn, void *arg)
{
	const yaml_node_item_t	*it;
	char			 ipath[POL_PATH_MAX], got[80];
	size_t			 i;

	if (one && v->type == YAML_SCALAR_NODE && !yu_isempty(v)) {
		fn(c, v, path, 0, arg);
		return;
	}
	if (v->type != YAML_SEQUENCE_NODE) {
		yu_error(&c->errs, &v->start_mark, "%s: expected %s, got %s",
		    path, expect, yu_got(v, got, sizeof(got)));
		return;
	}
	for (it = v->data.sequence.items.start;
	    it < v->data.sequence.items.top; it++) {
		i = (size_t)(it - v->data.sequence.items.start);
		/* A path for error messages: a cut one still names the place. */
		if ((size_t)snprintf(ipath, sizeof(ipath), "%s[%zu]", path,
		    i) >= sizeof(ipath))
			ipath[sizeof(ipath) - 2] = ']';
		fn(c, pol_node(c, *it), ipath, i, arg);
	}
}

/* Returns the number of entries of v when it is a list, else 1. */
static size_t
pol_count(const yaml_node_t *v)
{
	if (v->type != YAML_SEQUENCE_NODE)
		return 1;
	return (size_t)(v->data.sequence.items.top -
	    v->data.sequence.items.start);
}

/* ---- Networks and domains ----------------------------------------------- */

/* pol_item_fn: appends the network v to the struct pol_cidrs arg. */
static void
pol_cidr_item(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	struct pol_cidrs	*acc = arg;
	const char		*s, *why;
	char			 got[80];

	(void)idx;
	if ((s = yu_scalar(&c->errs, v, path, "a network such as "
	    "192.0.2.0/24 or 2001:db8::/32")) == NULL)
		return;
	acc->v = yu_grow(acc->v, &acc->cap, acc->n, sizeof(*acc->v));
	if ((why = cidr_parse(s, &acc->v[acc->n])) != NULL)
		yu_error(&c->errs, &v->start_mark, "%s: invalid network %s: %s",
		    path, yu_got(v, got, sizeof(got)), why);
	else
		acc->n++;
}

/* Reads the list of networks v (named path) into acc. */
static void
pol_cidrs(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    struct pol_cidrs *acc)
{
	pol_each(c, v, path, "a list of networks such as [192.0.2.0/24, "
	    "\"2001:db8::/32\"]", 1, pol_cidr_item, acc);
}

/* pol_item_fn: appends the local domain v to the context's list. */
static void
pol_domain_item(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	const char	*s, *why;
	char		 name[256], got[80];
	size_t		 len;

	(void)idx;
	(void)arg;
	if ((s = yu_scalar(&c->errs, v, path, "a domain such as example.test "
	    "or .example.test")) == NULL)
		return;
	/* ".example.test": the names below it; a trailing dot is allowed. */
	len = strlen(s + (s[0] == '.'));
	if (len > 0 && s[(s[0] == '.') + len - 1] == '.')
		len--;
	if (len >= sizeof(name))
		why = "it is too long";
	else {
		memcpy(name, s + (s[0] == '.'), len);
		name[len] = '\0';
		why = yu_host_check(name, sizeof(name));
	}
	if (why != NULL) {
		yu_error(&c->errs, &v->start_mark, "%s: invalid domain %s: %s",
		    path, yu_got(v, got, sizeof(got)), why);
		return;
	}
	c->domains = yu_grow(c->domains, &c->domaincap, c->ndomains,
	    sizeof(*c->domains));
	c->domains[c->ndomains++] = yu_xstrdup(s);
}

/* ---- Rules -------------------------------------------------------------- */

/*
 * Returns the number at *p, 1 to 3 digits without a leading zero (RFC
 * 3463's subject and detail), and moves *p past it; -1 when malformed.
 */
static int
pol_subcode(const char **p)
{
	const char	*s = *p;
	int		 n = 0;

	while (**p >= '0' && **p <= '9' && *p - s < 3)
		n = n * 10 + (*(*p)++ - '0');
	if (*p == s || (s[0] == '0' && *p - s > 1))
		return -1;
	return n;
}

/*
 * Checks the reply text s ("550 5.7.1 Sender rejected") of a rule whose
 * code must start with digit.  Returns NULL, or why it is not a reply (in
 * buf).
 */
static const char *
pol_reply_check(const char *s, char digit, char *buf, size_t size)
{
	const char	*p;
	size_t		 i;

	if (!(s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '5' &&
	    s[2] >= '0' && s[2] <= '9' && s[3] == ' '))
		return "expected a reply code, an enhanced code and a text, "
		    "such as \"550 5.7.1 Sender rejected\"";
	if (s[0] != digit) {
		snprintf(buf, size, "the reply code must be %cxx for this "
		    "action", digit);
		return buf;
	}
	p = s + 4;
	if (!(p[0] >= '2' && p[0] <= '5' && p[1] == '.'))
		return "expected an enhanced code (RFC 3463) after the reply "
		    "code, such as 5.7.1";
	p += 2;
	if (pol_subcode(&p) == -1 || *p++ != '.' || pol_subcode(&p) == -1 ||
	    (*p != ' ' && *p != '\0'))
		return "expected an enhanced code (RFC 3463) after the reply "
		    "code, such as 5.7.1";
	if (*p == '\0' || p[1] == '\0')
		return "the text after the enhanced code is missing";
	if (s[4] != s[0]) {
		snprintf(buf, size, "the enhanced code's class %c must be the "
		    "reply code's first digit %c", s[4], s[0]);
		return buf;
	}
	for (i = 1; p[i] != '\0'; i++)
		if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
			return "the text must be printable ASCII";
	if (i - 1 > POL_TEXT_MAX) {
		snprintf(buf, size, "the text is longer than %d characters",
		    POL_TEXT_MAX);
		return buf;
	}
	return NULL;
}

/*
 * Sets the code and reply of r (whose action is known) from the reply:
 * node v of the rule named rpath ("rules[0]"), or to the action's default
 * when v is NULL.
 */
static void
pol_reply(struct pol_ctx *c, const yaml_node_t *v, const char *rpath,
    struct pol_rule *r)
{
	const struct pol_answer	*a = &action_answer[r->action];
	const char		*s, *why;
	char			 path[POL_PATH_MAX], buf[128], got[80];

	if (v == NULL) {
		r->code = a->code;
		r->reply = a->reply ? yu_xstrdup(a->reply) : NULL;
		return;
	}
	snprintf(path, sizeof(path), "%s.reply", rpath);
	if (a->code == 0) {
		yu_error(&c->errs, &v->start_mark, "%s: %s %s rule sends no "
		    "reply (only reject, tempfail and refuse rules do)", path,
		    strchr("aeiou", action_names[r->action][0]) ? "an" : "a",
		    action_names[r->action]);
		return;
	}
	if ((s = yu_scalar(&c->errs, v, path, "a reply such as \"550 5.7.1 "
	    "Sender rejected\"")) == NULL)
		return;
	if ((why = pol_reply_check(s, (char)('0' + a->code / 100), buf,
	    sizeof(buf))) != NULL) {
		yu_error(&c->errs, &v->start_mark, "%s: invalid reply %s: %s",
		    path, yu_got(v, got, sizeof(got)), why);
		return;
	}
	r->code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	r->reply = yu_xstrdup(s + 4);
}

/* Reads the pattern v (named path) into *dst. */
static void
pol_pattern(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    const struct pattern **dst)
{
	const char	*s;
	char		 err[256], got[80];

	if ((s = yu_scalar(&c->errs, v, path, "a pattern: '/regex/flags' or "
	    "a plain string")) == NULL)
		return;
	if ((*dst = pattern_new(s, strlen(s), err, sizeof(err))) == NULL)
		yu_error(&c->errs, &v->start_mark, "%s: invalid pattern %s: %s",
		    path, yu_got(v, got, sizeof(got)), err);
}

/* Reads match: node v (named path) into r's matchers and stage. */
static void
pol_match(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    struct pol_rule *r)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*mv;
	struct pol_cidrs	 nets = { NULL, 0, 0 };
	char			 kpath[POL_PATH_MAX], got[80];
	long			 i;

	if (v->type != YAML_MAPPING_NODE ||
	    v->data.mapping.pairs.start == v->data.mapping.pairs.top) {
		yu_error(&c->errs, &v->start_mark, "%s: expected a map of at "
		    "least one of client, client_name, helo, sender, "
		    "recipient, header, got %s", path,
		    v->type == YAML_MAPPING_NODE ? "an empty map" :
		    yu_got(v, got, sizeof(got)));
		return;
	}
	r->stage = POL_CONNECT;
	for (p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	    p++) {
		if ((i = yu_map_key(&c->errs, c->cur->doc, v, p, match_keys,
		    sizeof(*match_keys), path, kpath, sizeof(kpath))) == -1)
			continue;
		mv = pol_node(c, p->value);
		if (match_stage[i] > r->stage)
			r->stage = match_stage[i];
		if (i != KM_CLIENT || (mv->type == YAML_SCALAR_NODE &&
		    mv->data.scalar.value[0] == '/')) {
			pol_pattern(c, mv, kpath,
			    pol_match_field(&r->match, (size_t)i));
			continue;
		}
		pol_cidrs(c, mv, kpath, &nets);
		if (pol_count(mv) == 0)
			yu_error(&c->errs, &mv->start_mark, "%s: at least one "
			    "network is required", kpath);
		else if ((r->match.client_net = cidr_set_new(nets.v, nets.n))
		    == NULL)
			yu_oom();
	}
	free(nets.v);
}

/* Reads name: node v (named path) of the rule rd: [A-Za-z0-9_.-]+. */
static void
pol_rule_name(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    struct pol_ruledef *rd)
{
	const char	*s, *p;
	char		 got[80];

	if ((s = yu_scalar(&c->errs, v, path, "a rule name such as "
	    "block-spam")) == NULL)
		return;
	for (p = s; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' ||
		    *p == '-'))
			break;
	if (*s == '\0' || *p != '\0') {
		yu_error(&c->errs, &v->start_mark, "%s: invalid rule name %s: "
		    "only letters, digits, '_', '.' and '-' are allowed", path,
		    yu_got(v, got, sizeof(got)));
		return;
	}
	rd->rule.name = yu_xstrdup(s);
	rd->mark = v->start_mark;
}

/* pol_item_fn: reads the rule v and appends it to the context's rules. */
static void
pol_rule(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*kv, *reply = NULL;
	struct pol_ruledef	*rd;
	char			 kpath[POL_PATH_MAX], got[80];
	char			 seen[KU__N] = { 0 };
	long			 i;
	int			 action = -1;

	(void)arg;
	if (v->type != YAML_MAPPING_NODE) {
		yu_error(&c->errs, &v->start_mark, "%s: expected a rule (a map "
		    "with name, match and action), got %s", path,
		    yu_got(v, got, sizeof(got)));
		return;
	}
	c->rules = yu_grow(c->rules, &c->rulecap, c->nrules, sizeof(*c->rules));
	rd = &c->rules[c->nrules];
	memset(rd, 0, sizeof(*rd));
	rd->file = c->cur->path;
	rd->fileidx = c->cur->idx;
	rd->index = idx;
	c->nrules++;

	for (p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	    p++) {
		if ((i = yu_map_key(&c->errs, c->cur->doc, v, p, rule_keys,
		    sizeof(*rule_keys), path, kpath, sizeof(kpath))) == -1)
			continue;
		kv = pol_node(c, p->value);
		seen[i] = 1;
		switch (i) {
		case KU_NAME:
			pol_rule_name(c, kv, kpath, rd);
			break;
		case KU_MATCH:
			pol_match(c, kv, kpath, &rd->rule);
			break;
		case KU_ACTION:
			action = (int)pol_choice(c, kv, kpath, action_names);
			break;
		case KU_REPLY:
			reply = kv;	/* read once the action is known */
			break;
		}
	}
	for (i = 0; i < KU__N; i++)
		if (!seen[i] && i != KU_REPLY)
			yu_error(&c->errs, &v->start_mark, "%s.%s: required "
			    "setting is missing", path, rule_keys[i]);
	if (action != -1) {
		rd->rule.action = (enum pol_action)action;
		pol_reply(c, reply, path, &rd->rule);
	}
}

/* Frees what rule r owns (not r itself). */
static void
pol_rule_free(struct pol_rule *r)
{
	size_t	 i;

	free((char *)r->name);
	free((char *)r->reply);
	cidr_set_free((struct cidr_set *)r->match.client_net);
	for (i = 0; i < NELEM(match_field); i++)
		pattern_free((struct pattern *)*pol_match_field(&r->match, i));
}

/* qsort() order of rules by name, then load order. */
static int
pol_rulecmp(const void *a, const void *b)
{
	const struct pol_ruledef *const	*x = a, *const *y = b;
	int				 r;

	if ((r = strcmp((*x)->rule.name, (*y)->rule.name)) != 0)
		return r;
	return *x < *y ? -1 : *x > *y;
}

/*
 * Reports every rate limit whose name an earlier one has, then every rule
 * whose name an earlier rule (any file) has.
 */
static void
pol_check_names(struct pol_ctx *c)
{
	size_t	 a, b;

	for (a = 0; a < c->nrls; a++)
		for (b = 0; b < a; b++) {
			if (c->rls[a].rd.rule.name == NULL ||
			    c->rls[b].rd.rule.name == NULL ||
			    strcmp(c->rls[a].rd.rule.name,
			    c->rls[b].rd.rule.name) != 0)
				continue;
			c->errs.file = c->rls[a].rd.file;
			c->errs.fileidx = c->rls[a].rd.fileidx;
			yu_error(&c->errs, &c->rls[a].rd.mark, "rate_limits[%zu]"
			    ".name: duplicate rate limit name \"%s\" (first "
			    "defined at %s:%zu:%zu)", c->rls[a].rd.index,
			    c->rls[a].rd.rule.name, c->rls[b].rd.file,
			    c->rls[b].rd.mark.line + 1,
			    c->rls[b].rd.mark.column + 1);
			break;
		}
	pol_check_rule_names(c);
}

/* Rule names are unique across every file. */
static void
pol_check_rule_names(struct pol_ctx *c)
{
	struct pol_ruledef	**v, *first = NULL;
	size_t			 i, n = 0;

	if ((v = calloc(c->nrules + 1, sizeof(*v))) == NULL)
		yu_oom();
	for (i = 0; i < c->nrules; i++)
		if (c->rules[i].rule.name != NULL)
			v[n++] = &c->rules[i];
	qsort(v, n, sizeof(*v), pol_rulecmp);
	for (i = 0; i < n; i++) {
		if (first == NULL ||
		    strcmp(first->rule.name, v[i]->rule.name) != 0) {
			first = v[i];
			continue;
		}
		c->errs.file = v[i]->file;
		c->errs.fileidx = v[i]->fileidx;
		yu_error(&c->errs, &v[i]->mark, "rules[%zu].name: duplicate "
		    "rule name \"%s\" (first defined at %s:%zu:%zu)",
		    v[i]->index, v[i]->rule.name, first->file,
		    first->mark.line + 1, first->mark.column + 1);
	}
	free(v);
}

/* ---- Files -------------------------------------------------------------- */

/*
 * pol_item_fn: loads the file named by v, relative to the directory of the
 * file being walked.
 */
static void
pol_include_item(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	const char	*s, *slash;
	char		*file;

	(void)idx;
	(void)arg;
	if ((s = yu_scalar(&c->errs, v, path, "a file name")) == NULL)
		return;
	if (s[0] == '\0') {
		yu_error(&c->errs, &v->start_mark, "%s: expected a file name, "
		    "got \"\"", path);
		return;
	}
	slash = strrchr(c->cur->path, '/');
	if (s[0] == '/' || slash == NULL)
		file = yu_xstrdup(s);
	else if (asprintf(&file, "%.*s/%s", (int)(slash - c->cur->path),
	    c->cur->path, s) < 0)
		yu_oom();
	pol_file_load(c, file, v, path);
}

/* Reads relay: node v (named path). */
static void
pol_relay(struct pol_ctx *c, const yaml_node_t *v, const char *path)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*kn, *kv;
	char			 kpath[POL_PATH_MAX], got[80];
	long			 i;

	c->relay = 1;
	if (v->type != YAML_MAPPING_NODE) {
		yu_error(&c->errs, &v->start_mark, "%s: expected a map of "
		    "settings, got %s", path, yu_got(v, got, sizeof(got)));
		return;
	}
	for (p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	    p++) {
		if ((i = yu_map_key(&c->errs, c->cur->doc, v, p, relay_keys,
		    sizeof(*relay_keys), path, kpath, sizeof(kpath))) == -1)
			continue;
		kn = pol_node(c, p->key);
		kv = pol_node(c, p->value);
		switch (i) {
		case KR_TRUSTED:
			pol_cidrs(c, kv, kpath, &c->trusted);
			break;
		case KR_LOCAL:
			pol_each(c, kv, kpath, "a list of domains such as "
			    "[example.test, .example.test]", 1,
			    pol_domain_item, NULL);
			break;
		case KR_REJECT_CODE:
			if (pol_once(c, &c->w_reject_code, kn, kpath) == 0 &&
			    (i = pol_choice(c, kv, kpath, reject_codes)) != -1)
				c->reject_code = atoi(reject_codes[i]);
			break;
		}
	}
}

/*
 * Reads the top-level map of the file being walked: its include: first,
 * so that the lists of included files come before its own, then the rest.
 */
static void
pol_walk(struct pol_ctx *c, const yaml_node_t *map)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*kn, *kv;
	char			 path[POL_PATH_MAX];
	long			 i;

	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		kn = pol_node(c, p->key);
		if (kn->type == YAML_SCALAR_NODE && strcmp(
		    (const char *)kn->data.scalar.value, "include") == 0) {
			pol_each(c, pol_node(c, p->value), "include", "a list "
			    "of file names", 1, pol_include_item, NULL);
			break;
		}
	}
	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		if ((i = yu_map_key(&c->errs, c->cur->doc, map, p, root_keys,
		    sizeof(*root_keys), "", path, sizeof(path))) == -1)
			continue;
		kn = pol_node(c, p->key);
		kv = pol_node(c, p->value);
		switch (i) {
		case K_INCLUDE:
			break;		/* read above */
		case K_RELAY:
			pol_relay(c, kv, path);
			break;
		case K_SOURCE_ROUTES:
			if (pol_once(c, &c->w_srcroute, kn, path) == 0 &&
			    (i = pol_choice(c, kv, path, srcroute_names)) != -1)
				c->srcroute = (enum pol_srcroute)i;
			break;
		case K_REFUSE_CLIENTS:
			pol_cidrs(c, kv, path, &c->refuse);
			break;
		case K_RULES:
			pol_each(c, kv, path, "a list of rules", 0, pol_rule,
			    NULL);
			break;
		case K_RATE_LIMITS:
			pol_each(c, kv, path, "a list of rate limits", 0,
			    pol_ratelimit, NULL);
			break;
		case K_FILTERS:
			if (pol_once(c, &c->w_filters, kn, path) != 0)
				break;
			free(c->filters);
			c->filters = calloc(flt_ntable, sizeof(*c->filters));
			if (c->filters == NULL)
				yu_oom();
			pol_each(c, kv, path, "a list of filter names", 1,
			    pol_filter_item, NULL);
			break;
		}
	}
}

/* Reads limit: or window: (units: yu_units_int or yu_units_duration). */
static void
pol_rl_number(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    const struct yu_unit *units, const char *expect, uint64_t *out)
{
	const char	*s;
	char		 got[80];

	if ((s = yu_scalar(&c->errs, v, path, expect)) == NULL)
		return;
	if (yu_number(s, units, out) != 0 || *out == 0) {
		yu_error(&c->errs, &v->start_mark, "%s: expected %s, got %s",
		    path, expect, yu_got(v, got, sizeof(got)));
		*out = 0;
	}
}

/*
 * Checks that a rate limit can be counted where its count and key say:
 * connections are counted before anything but the client is known, bytes
 * at the end of the message, once per message.
 */
static void
pol_rl_check(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    const struct pol_ratelimit *rl)
{
	int rcpt_key = rl->key == POL_RLK_RECIPIENT ||
	    rl->key == POL_RLK_RECIPIENT_DOMAIN;

	if (rl->count == POL_RLC_CONNECTIONS &&
	    (rl->key > POL_RLK_CLIENT_NET || rl->rule.stage > POL_CONNECT))
		yu_error(&c->errs, &v->start_mark, "%s: count: connections "
		    "needs key client_ip or client_net and a match on client "
		    "or client_name only (nothing else is known at connect)",
		    path);
	if (rl->count == POL_RLC_BYTES && (rcpt_key ||
	    rl->rule.stage >= POL_RCPT))
		yu_error(&c->errs, &v->start_mark, "%s: count: bytes is "
		    "counted once per message: it takes no recipient key or "
		    "recipient match", path);
	if (rl->count == POL_RLC_MESSAGES && rl->rule.stage == POL_HEADER)
		yu_error(&c->errs, &v->start_mark, "%s: a rate limit cannot "
		    "match on header lines", path);
}

/* One entry of rate_limits:. */
static void
pol_ratelimit(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*kv;
	struct pol_rldef	*d;
	char			 kpath[POL_PATH_MAX], got[80];
	char			 seen[KL__N] = { 0 };
	long			 i;

	(void)arg;
	if (v->type != YAML_MAPPING_NODE) {
		yu_error(&c->errs, &v->start_mark, "%s: expected a rate limit "
		    "(a map with name, key, count, limit and window), got %s",
		    path, yu_got(v, got, sizeof(got)));
		return;
	}
	c->rls = yu_grow(c->rls, &c->rlcap, c->nrls, sizeof(*c->rls));
	d = &c->rls[c->nrls++];
	memset(d, 0, sizeof(*d));
	d->rd.file = c->cur->path;
	d->rd.fileidx = c->cur->idx;
	d->rd.index = idx;
	d->rl.rule.action = POL_TEMPFAIL;
	for (p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	    p++) {
		if ((i = yu_map_key(&c->errs, c->cur->doc, v, p, rl_keys,
		    sizeof(*rl_keys), path, kpath, sizeof(kpath))) == -1)
			continue;
		kv = pol_node(c, p->value);
		seen[i] = 1;
		switch (i) {
		case KL_NAME:
			pol_rule_name(c, kv, kpath, &d->rd);
			break;
		case KL_MATCH:
			pol_match(c, kv, kpath, &d->rd.rule);
			break;
		case KL_KEY:
			if ((i = pol_choice(c, kv, kpath, rl_key_names)) != -1)
				d->rl.key = (enum pol_rl_key)i;
			break;
		case KL_COUNT:
			if ((i = pol_choice(c, kv, kpath, rl_count_names)) != -1)
				d->rl.count = (enum pol_rl_count)i;
			break;
		case KL_LIMIT:
			pol_rl_number(c, kv, kpath, yu_units_size,
			    "a positive number (of bytes: K, M or G may "
			    "follow)", &d->rl.limit);
			break;
		case KL_WINDOW:
			pol_rl_number(c, kv, kpath, yu_units_duration,
			    "a duration such as 60s, 10m or 1h",
			    &d->rl.window_ms);
			break;
		case KL_ACTION:
			if ((i = pol_choice(c, kv, kpath, rl_action_names)) != -1)
				d->rd.rule.action = i ? POL_REJECT :
				    POL_TEMPFAIL;
			break;
		}
	}
	for (i = 0; i < KL__N; i++)
		if (!seen[i] && i != KL_MATCH && i != KL_ACTION)
			yu_error(&c->errs, &v->start_mark, "%s.%s: required "
			    "setting is missing", path, rl_keys[i]);
	if (!seen[KL_ACTION])
		d->rd.rule.action = POL_TEMPFAIL;
	d->rl.rule = d->rd.rule;
	pol_rl_check(c, v, path, &d->rl);
}

/* One name of filters:: a known filter, given once. */
static void
pol_filter_item(struct pol_ctx *c, const yaml_node_t *v, const char *path,
    size_t idx, void *arg)
{
	const struct flt_def	*f;
	const char		*name;
	char			 known[256];
	size_t			 i, len = 0;

	(void)idx;
	(void)arg;
	if ((name = yu_scalar(&c->errs, v, path, "a filter name")) == NULL)
		return;
	if ((f = flt_lookup(name)) == NULL) {
		for (i = 0; i < flt_ntable && len < sizeof(known); i++)
			len += (size_t)snprintf(known + len, sizeof(known) - len,
			    "%s%s", i ? ", " : "", flt_table[i]->name);
		yu_error(&c->errs, &v->start_mark, "%s: unknown filter \"%s\" "
		    "(known: %s)", path, name, known);
		return;
	}
	for (i = 0; i < c->nfilters; i++)
		if (c->filters[i] == f) {
			yu_error(&c->errs, &v->start_mark, "%s: filter \"%s\" "
			    "listed twice", path, name);
			return;
		}
	c->filters[c->nfilters++] = f;
}

/*
 * Returns nonzero, after reporting it at the include entry v (named
 * path), when the file opened as (dev, ino) was read before: it is one of
 * the files including it (a cycle), or another file included it already.
 */
static int
pol_seen_file(struct pol_ctx *c, dev_t dev, ino_t ino, const char *file,
    const yaml_node_t *v, const char *path)
{
	const struct pol_file	*f, *chain[POL_DEPTH_MAX + 2];
	const struct pol_opened	*o = NULL;
	char			*text = NULL;
	size_t			 i, n = 0, size = 0;
	FILE			*m;

	for (i = 0; i < c->nfiles && o == NULL; i++)
		if (c->files[i].dev == dev && c->files[i].ino == ino)
			o = &c->files[i];
	if (o == NULL)
		return 0;
	for (f = c->cur; f != NULL && n < NELEM(chain); f = f->parent) {
		chain[n++] = f;
		if (f->path == o->path)
			break;
	}
	if (f == NULL) {
		yu_error(&c->errs, &v->start_mark, "%s: %s is already included "
		    "by %s", path, file, o->by);
		return 1;
	}
	if ((m = open_memstream(&text, &size)) == NULL)
		yu_oom();
	while (n-- > 0)
		fprintf(m, "%s -> ", chain[n]->path);
	fprintf(m, "%s", file);
	if (fclose(m) != 0 || text == NULL)
		yu_oom();
	yu_error(&c->errs, &v->start_mark, "%s: include cycle: %s", path, text);
	free(text);
	return 1;
}

/*
 * Reads the policy file named file (malloc'd; the context takes it) into
 * the context.  v is the include: entry naming it, called path, or NULL
 * for the first file; errors opening it are reported there.
 */
static void
pol_file_load(struct pol_ctx *c, char *file, const yaml_node_t *v,
    const char *path)
{
	struct pol_file		 f;
	struct stat		 st;
	yaml_document_t		 doc;
	const yaml_node_t	*root;
	char			*data = NULL, why[160], got[80];
	size_t			 len = 0;

	memset(&f, 0, sizeof(f));
	f.parent = c->cur;
	f.depth = c->cur ? c->cur->depth + 1 : 0;
	if (f.depth > POL_DEPTH_MAX)
		snprintf(why, sizeof(why), "includes are nested more than %d "
		    "deep", POL_DEPTH_MAX);
	else if (stat(file, &st) == -1)
		snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
	else if (v != NULL && pol_seen_file(c, st.st_dev, st.st_ino, file, v,
	    path)) {
		free(file);
		return;
	} else
		data = yu_read(file, POL_FILE_MAX, &len, why, sizeof(why));
	if (data == NULL) {
		if (v == NULL)
			yu_error(&c->errs, NULL, "%s", why);
		else
			yu_error(&c->errs, &v->start_mark, "%s: %s: %s", path,
			    file, why);
		free(file);
		return;
	}

	c->files = yu_grow(c->files, &c->filecap, c->nfiles, sizeof(*c->files));
	c->files[c->nfiles].path = file;
	c->files[c->nfiles].dev = st.st_dev;
	c->files[c->nfiles].ino = st.st_ino;
	c->files[c->nfiles].by = c->cur ? c->cur->path : NULL;
	f.path = file;
	f.idx = (unsigned)c->nfiles++;
	f.doc = &doc;
	c->cur = &f;
	c->errs.file = f.path;
	c->errs.fileidx = f.idx;

	if (yu_parse(&c->errs, data, len, &doc) == 0) {
		root = yaml_document_get_root_node(&doc);
		if (root == NULL || yu_isempty(root))
			;	/* an empty file: an empty policy */
		else if (root->type != YAML_MAPPING_NODE)
			yu_error(&c->errs, &root->start_mark, "expected a map "
			    "of settings at the top level, got %s",
			    yu_got(root, got, sizeof(got)));
		else
			pol_walk(c, root);
		yaml_document_delete(&doc);
	}
	free(data);
	c->cur = f.parent;
	c->errs.file = f.parent ? f.parent->path : f.path;
	c->errs.fileidx = f.parent ? f.parent->idx : f.idx;
}

/* Frees what the context holds (not the errors). */
static void
pol_ctx_free(struct pol_ctx *c)
{
	size_t	 i;

	for (i = 0; i < c->nrules; i++)
		pol_rule_free(&c->rules[i].rule);
	free(c->rules);
	for (i = 0; i < c->nrls; i++)
		pol_rule_free(&c->rls[i].rd.rule);
	free(c->rls);
	free(c->trusted.v);
	free(c->refuse.v);
	for (i = 0; i < c->ndomains; i++)
		free(c->domains[i]);
	free(c->domains);
	for (i = 0; i < c->nfiles; i++)
		free(c->files[i].path);
	free(c->files);
	free(c->filters);
}

/*
 * Returns the policy of what the context gathered, loaded from path (NULL
 * for the empty policy).  The rules move to the policy; the context still
 * has to be freed.
 */
static struct policy *
pol_build(struct pol_ctx *c, const char *path)
{
	struct policy	*pol;
	struct pol_rule	*rules;
	size_t		*idx, i, at, start[POL__STAGES + 1] = { 0 };
	int		 s;

	if ((pol = calloc(1, sizeof(*pol))) == NULL ||
	    (rules = calloc(c->nrules + 1, sizeof(*rules))) == NULL ||
	    (idx = calloc(c->nrules + 1, sizeof(*idx))) == NULL)
		yu_oom();
	atomic_init(&pol->refs, 1);
	pol->path = path ? yu_xstrdup(path) : NULL;
	pol->relay = c->relay;
	pol->source_routes = c->srcroute;
	pol->relay_reject_code = c->reject_code;
	if ((pol->trusted_networks = cidr_set_new(c->trusted.v,
	    c->trusted.n)) == NULL ||
	    (pol->local_domains = domain_set_new(
	    (const char *const *)c->domains, c->ndomains)) == NULL ||
	    (pol->refuse_clients = cidr_set_new(c->refuse.v, c->refuse.n)) ==
	    NULL)
		yu_oom();
	/* filters: moves to the policy; without it, the default order. */
	pol->filters = c->filters;
	pol->nfilters = c->nfilters;
	c->filters = NULL;

	/* Each stage's rules in file order: a counting sort by stage. */
	for (i = 0; i < c->nrules; i++) {
		rules[i] = c->rules[i].rule;
		start[rules[i].stage + 1]++;
	}
	for (s = 0; s < POL__STAGES; s++) {
		pol->nstage_rules[s] = start[s + 1];
		start[s + 1] += start[s];
		pol->stage_rules[s] = idx + start[s];
	}
	for (i = 0; i < c->nrules; i++) {
		at = start[rules[i].stage]++;
		idx[at] = i;
	}
	pol->rules = rules;
	pol->index = pol_index_new(rules, c->nrules, pol->stage_rules,
	    pol->nstage_rules);
	if (c->nrls > 0) {
		struct pol_ratelimit *rls;

		if ((rls = calloc(c->nrls, sizeof(*rls))) == NULL)
			yu_oom();
		for (i = 0; i < c->nrls; i++) {
			rls[i] = c->rls[i].rl;
			rls[i].rule = c->rls[i].rd.rule;
		}
		pol->ratelimits = rls;
		pol->nratelimits = c->nrls;
		c->nrls = 0;
	}
	pol->nrules = c->nrules;
	c->nrules = 0;
	return pol;
}

/* Returns a context ready for a load: every default set. */
static void
pol_ctx_init(struct pol_ctx *c, const char *path)
{
	memset(c, 0, sizeof(*c));
	c->errs.file = path;
	c->srcroute = POL_SR_STRIP;
	c->reject_code = 550;
}

struct policy *
policy_load(const char *path, char **errors)
{
	struct pol_ctx	 c;
	struct policy	*pol = NULL;

	pol_ctx_init(&c, path);
	pol_file_load(&c, yu_xstrdup(path), NULL, NULL);
	pol_check_names(&c);
	if (c.errs.n)
		*errors = yu_errtext(&c.errs);
	else {
		pol = pol_build(&c, path);
		*errors = NULL;
	}
	pol_ctx_free(&c);
	return pol;
}

struct policy *
policy_empty(void)
{
	struct pol_ctx	 c;
	struct policy	*pol;

	pol_ctx_init(&c, NULL);
	pol = pol_build(&c, NULL);
	pol_ctx_free(&c);
	return pol;
}

struct policy *
policy_ref(struct policy *pol)
{
	atomic_fetch_add(&pol->refs, 1);
	return pol;
}

void
policy_unref(struct policy *pol)
{
	size_t	 i;

	if (pol == NULL || atomic_fetch_sub(&pol->refs, 1) != 1)
		return;
	for (i = 0; i < pol->nrules; i++)
		pol_rule_free((struct pol_rule *)&pol->rules[i]);
	free((struct pol_rule *)pol->rules);
	for (i = 0; i < pol->nratelimits; i++)
		pol_rule_free((struct pol_rule *)&pol->ratelimits[i].rule);
	free((void *)pol->ratelimits);
	/* The first stage's list starts the one array of them all. */
	free((size_t *)pol->stage_rules[0]);
	pol_index_free((struct pol_index *)pol->index);
	cidr_set_free((struct cidr_set *)pol->trusted_networks);
	domain_set_free((struct domain_set *)pol->local_domains);
	cidr_set_free((struct cidr_set *)pol->refuse_clients);
	free((char *)pol->path);
	free((void *)pol->filters);
	free(pol);
}
