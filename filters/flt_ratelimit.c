/*
 * flt_ratelimit.c: the policy's rate_limits, and the limit on failed
 * commands per client address.
 *
 * At each stage the rate limits counted there whose match: fits the
 * session are gathered into one rl_check() of the worker's store (Redis,
 * or the in-process store): one round trip per stage at most.  Over a
 * limit, the command gets 450 4.7.1 (451 at the final dot, 421 4.7.0 for
 * connections) naming the rule; the store failing or too slow lets the
 * session through or answers 4xx, as redis: on_error says.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "log.h"
#include "ratelimit.h"

#define RL_VALUE_MAX	200	/* longer key values are hashed */

/*
 * What the verdict needs of a check.  The pointers are the session's (its
 * policy, config and address): valid while the session waits for the
 * answer, which rl_done_cb() asks flt_call_waiting() before using them.
 */
struct rl_req {
	struct flt_call	*call;		/* the session's pending call, or
					 * NULL when answered at once */
	enum flt_stage	 stage;		/* where it was asked */
	int		 tempfail;	/* on_error: tempfail */
	const char	*host;		/* our hostname, for 421 */
	const char	*client;	/* the client's address, for 421 */
	size_t		 n;		/* checks asked */
	const struct pol_ratelimit *which[RL_CHECKS_MAX];	/* each check's
					 * rate limit; NULL: failures */
};

enum flt_stage
flt_ratelimit_stage(const struct pol_ratelimit *rl)
{
	switch (rl->count) {
	case POL_RLC_CONNECTIONS:
		return FLT_CONNECT;
	case POL_RLC_BYTES:
		return FLT_EOM;
	case POL_RLC_RECIPIENTS:
		return FLT_RCPT;
	default:
		if (rl->key == POL_RLK_RECIPIENT ||
		    rl->key == POL_RLK_RECIPIENT_DOMAIN ||
		    rl->rule.stage >= POL_RCPT)
			return FLT_RCPT;
		return FLT_MAIL;
	}
}

/* Appends s[0..len) to buf at *at, lowercased when fold. */
static void
rl_put(char *buf, size_t size, size_t *at, const char *s, size_t len,
    int fold)
{
	size_t i;

	for (i = 0; i < len && *at + 1 < size; i++)
		buf[(*at)++] = fold ? (char)tolower((unsigned char)s[i]) : s[i];
	buf[*at] = '\0';
}

/* The client's /24 or /64 as text. */
static void
rl_net(const struct sockaddr *sa, char *buf, size_t size)
{
	struct in6_addr	a6;
	struct in_addr	a4;

	if (sa->sa_family == AF_INET6) {
		a6 = ((const struct sockaddr_in6 *)sa)->sin6_addr;
		memset(a6.s6_addr + 8, 0, 8);
		inet_ntop(AF_INET6, &a6, buf, (socklen_t)size);
		strncat(buf, "/64", size - strlen(buf) - 1);
	} else {
		a4 = ((const struct sockaddr_in *)sa)->sin_addr;
		a4.s_addr &= htonl(0xffffff00);
		inet_ntop(AF_INET, &a4, buf, (socklen_t)size);
		strncat(buf, "/24", size - strlen(buf) - 1);
	}
}

/* A path's mailbox (domain lowercased) or only its domain, "<>" if null. */
static void
rl_path(const struct smtp_path *p, int domain, char *buf, size_t size)
{
	size_t at = 0;

	buf[0] = '\0';
	if (p == NULL || p->mailbox == NULL) {
		rl_put(buf, size, &at, "<>", 2, 0);
		return;
	}
	if (!domain)
		rl_put(buf, size, &at, p->local, p->locallen, 0);
	if (p->domain != NULL) {
		if (!domain)
			rl_put(buf, size, &at, "@", 1, 0);
		rl_put(buf, size, &at, p->domain, p->domainlen, 1);
	}
}

/*
 * Builds the check of rate limit rl for env into c.  Returns 0, or -1
 * when the key has no value in this session (auth_user before AUTH).
 */
static int
rl_make(const struct pol_ratelimit *rl, const struct flt_env *env,
    struct rl_check *c)
{
	char		value[RL_KEY_MAX];
	size_t		at = 0, len;
	uint64_t	h = 1469598103934665603ull;

	value[0] = '\0';
	switch (rl->key) {
	case POL_RLK_CLIENT_IP:
		rl_put(value, sizeof(value), &at, env->addr_text,
		    strlen(env->addr_text), 1);
		break;
	case POL_RLK_CLIENT_NET:
		rl_net(env->addr, value, sizeof(value));
		break;
	case POL_RLK_HELO:
		rl_put(value, sizeof(value), &at, env->helo, strlen(env->helo),
		    1);
		break;
	case POL_RLK_SENDER:
	case POL_RLK_SENDER_DOMAIN:
		rl_path(env->sender, rl->key == POL_RLK_SENDER_DOMAIN, value,
		    sizeof(value));
		break;
	case POL_RLK_RECIPIENT:
	case POL_RLK_RECIPIENT_DOMAIN:
		rl_path(env->rcpt, rl->key == POL_RLK_RECIPIENT_DOMAIN, value,
		    sizeof(value));
		break;
	case POL_RLK_AUTH_USER:
		if (env->auth_user == NULL || env->auth_user[0] == '\0')
			return -1;	/* no AUTH in this session */
		rl_put(value, sizeof(value), &at, env->auth_user,
		    strlen(env->auth_user), 0);
		break;
	default:
		return -1;
	}
	/* Long values (and only they) are hashed: FNV-1a, 64 bits. */
	if ((len = strlen(value)) > RL_VALUE_MAX) {
		for (at = 0; at < len; at++)
			h = (h ^ (unsigned char)value[at]) * 1099511628211ull;
		len = (size_t)snprintf(value, sizeof(value), "#%016llx",
		    (unsigned long long)h);
	}
	/* "rl:NAME:VALUE", cut to the buffer. */
	at = 0;
	rl_put(c->key, sizeof(c->key), &at, "rl:", 3, 0);
	rl_put(c->key, sizeof(c->key), &at, rl->rule.name,
	    strlen(rl->rule.name), 0);
	rl_put(c->key, sizeof(c->key), &at, ":", 1, 0);
	rl_put(c->key, sizeof(c->key), &at, value, len, 0);
	c->keylen = at;
	c->window_us = rl->window_ms * 1000;
	c->interval_us = c->window_us / rl->limit;
	if (c->interval_us == 0)
		c->interval_us = 1;
	c->cost = rl->count == POL_RLC_BYTES ? (env->size ? env->size : 1) : 1;
	c->force = 0;
	return 0;
}

/* The key of the failed-command limit of env's client. */
void
flt_ratelimit_failure_check(const struct flt_env *env, struct rl_check *c,
    uint64_t cost)
{
	size_t at = 0;

	rl_put(c->key, sizeof(c->key), &at, "fail:", 5, 0);
	rl_put(c->key, sizeof(c->key), &at, env->addr_text,
	    strlen(env->addr_text), 0);
	c->keylen = at;
	c->window_us = (uint64_t)env->failure_window * 1000;
	c->interval_us = c->window_us / env->max_failures;
	if (c->interval_us == 0)
		c->interval_us = 1;
	c->cost = cost;
	c->force = cost > 0;
	/*
	 * The question at connect is whether one more failure would be
	 * over: TAT + T - now > W, asked as a cost-0 check against W - T.
	 */
	if (cost == 0 && c->window_us > c->interval_us)
		c->window_us -= c->interval_us;
}

/* Turns the store's answer into the stage's verdict. */
static enum flt_verdict
rl_verdict(const struct rl_req *q, const struct rl_result *r,
    struct flt_result *res)
{
	const struct pol_ratelimit *rl;
	const char *name;

	res->filter = flt_ratelimit.name;
	if (r->status == RL_ALLOW ||
	    (r->status == RL_ERROR && !q->tempfail))
		return res->verdict = FLT_CONTINUE;
	if (r->status == RL_ERROR)
		return flt_answer(res, FLT_TEMPFAIL, q->stage == FLT_CONNECT ?
		    421 : 451, "4.3.0 %s%sError: rate limit service "
		    "unavailable, try again later",
		    q->stage == FLT_CONNECT ? q->host : "",
		    q->stage == FLT_CONNECT ? " " : "");
	if (r->denied < q->n) {
		rl = q->which[r->denied];
		name = rl != NULL ? rl->rule.name : "failures";
		res->rule = name;
	} else {
		rl = NULL;
		name = "?";
		res->rule = NULL;
	}
	if (q->stage == FLT_CONNECT)
		return flt_answer(res, FLT_TEMPFAIL, 421, "4.7.0 %s Error: too "
		    "many %s from %s (%s), try again later", q->host,
		    strcmp(name, "failures") == 0 ? "failed commands" :
		    "connections", q->client, name);
	if (rl != NULL && rl->rule.action == POL_REJECT)
		return flt_answer(res, FLT_REJECT, 550, "5.7.1 Error: rate "
		    "limit exceeded (%s)", name);
	return flt_answer(res, FLT_TEMPFAIL, q->stage == FLT_EOM ? 451 : 450,
	    "4.7.1 Error: rate limit exceeded (%s), try again later", name);
}

/* The store answered later: hand the verdict to the session, if alive. */
static void
rl_done_cb(void *arg, const struct rl_result *r)
{
	struct rl_req		*q = arg;
	struct flt_result	 res;

	/* A session gone: what q points to may be gone too. */
	if (flt_call_waiting(q->call)) {
		memset(&res, 0, offsetof(struct flt_result, reply));
		res.reply[0] = '\0';
		rl_verdict(q, r, &res);
	} else
		res.verdict = FLT_CONTINUE;
	flt_resume(q->call, &res);
	free(q);
}

static enum flt_verdict
flt_ratelimit_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	const struct policy	*pol = env->pol;
	const struct pol_ratelimit *rl;
	struct rl_check		 checks[RL_CHECKS_MAX];
	struct rl_result	 r;
	struct rl_req		 req, *q;
	struct pol_subject	 subj;
	size_t			 i, n = 0;
	int			 fail, subject = 0;

	if (env->rl == NULL ||
	    (pol->nratelimits == 0 && env->max_failures == 0))
		return FLT_CONTINUE;
	for (i = 0; i < pol->nratelimits && n < RL_CHECKS_MAX; i++) {
		rl = &pol->ratelimits[i];
		if (flt_ratelimit_stage(rl) != st)
			continue;
		/* What the matchers see, worked out once for the stage. */
		if (!subject) {
			flt__subject(env, &subj);
			subject = 1;
		}
		if (!flt__match(&rl->rule.match, env, &subj) ||
		    rl_make(rl, env, &checks[n]) < 0)
			continue;
		req.which[n++] = rl;
	}
	/* A client over its failures is refused at connect. */
	fail = st == FLT_CONNECT && env->max_failures > 0 &&
	    n < RL_CHECKS_MAX;
	if (fail) {
		flt_ratelimit_failure_check(env, &checks[n], 0);
		req.which[n++] = NULL;
	}
	if (n == 0)
		return FLT_CONTINUE;
	req.call = NULL;
	req.n = n;
	req.stage = st;
	req.tempfail = env->rl_tempfail;
	req.host = env->hostname;
	req.client = env->addr_text;
	/* The answer may come later: req then lives on the heap. */
	if ((q = malloc(sizeof(*q))) == NULL)
		return FLT_CONTINUE;
	*q = req;
	if (rl_check(env->rl, checks, n, &r, rl_done_cb, q) == 1) {
		/* done is never called from within rl_check(). */
		q->call = flt_defer(env);
		return FLT_PENDING;
	}
	free(q);
	return rl_verdict(&req, &r, res);
}

const struct flt_def flt_ratelimit = {
	.name = "ratelimit",
	.stages = FLT_STAGE(FLT_CONNECT) | FLT_STAGE(FLT_MAIL) |
	    FLT_STAGE(FLT_RCPT) | FLT_STAGE(FLT_EOM),
	.hook = flt_ratelimit_hook,
};
