/*
 * filter.c: the filter table and the running of a stage.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "log.h"
#include "metrics.h"

/* The filters, in their default order.  A new filter is one line here. */
const struct flt_def *const flt_table[] = {
	&flt_refuse,		/* refuse_clients: before anything else */
	&flt_srcroute,		/* source routes: before the relay check */
	&flt_relay,		/* relay permission */
	&flt_rules,		/* PCRE2 rules */
	&flt_ratelimit,		/* rate_limits, failures per client */
};
const size_t flt_ntable = sizeof(flt_table) / sizeof(flt_table[0]);

static const char *const flt_stage_names[FLT__STAGES] = {
	"connect", "helo", "mail", "rcpt", "data", "header", "eom"
};

/* A pending answer: points back to the run, or NULL once orphaned. */
struct flt_call {
	struct flt_run	*run;		/* the waiting run, or NULL */
};

const struct flt_def *
flt_lookup(const char *name)
{
	size_t i;

	for (i = 0; i < flt_ntable; i++)
		if (strcmp(flt_table[i]->name, name) == 0)
			return flt_table[i];
	return NULL;
}

const char *
flt_stage_name(enum flt_stage st)
{
	return flt_stage_names[st];
}

/* Sets subj's key k to the mailbox of path ("" for the null path), or to
 * none without a path. */
static void
flt_subject_path(struct pol_subject *subj, enum pol_key k,
    const struct smtp_path *path)
{
	if (path == NULL)
		subj->v[k] = NULL;
	else if (path->mailbox == NULL)
		subj->v[k] = "";
	else
		subj->v[k] = path->mailbox;
	subj->len[k] = path != NULL && path->mailbox != NULL ?
	    path->mailboxlen : 0;
}

/* Sets subj's key k to s, or to "" when s is NULL. */
static void
flt_subject_str(struct pol_subject *subj, enum pol_key k, const char *s)
{
	subj->v[k] = s != NULL ? s : "";
	subj->len[k] = s != NULL ? strlen(s) : 0;
}

void
flt__subject(const struct flt_env *env, struct pol_subject *subj)
{
	const char	*colon;

	subj->addr = env->addr;
	subj->addr_text = env->addr_text != NULL ? env->addr_text : "";
	subj->addr_textlen = strlen(subj->addr_text);
	flt_subject_str(subj, POL_KEY_CLIENT_NAME, env->client_name);
	flt_subject_str(subj, POL_KEY_HELO, env->helo);
	flt_subject_path(subj, POL_KEY_SENDER, env->sender);
	flt_subject_path(subj, POL_KEY_RECIPIENT, env->rcpt);
	subj->v[POL_KEY_HEADER] = env->header;
	subj->len[POL_KEY_HEADER] = env->header != NULL ? env->headerlen : 0;
	/* The field name: before the first colon, if the line has one. */
	colon = env->header != NULL ?
	    memchr(env->header, ':', env->headerlen) : NULL;
	subj->v[POL_KEY_HEADER_NAME] = colon != NULL ? env->header : NULL;
	subj->len[POL_KEY_HEADER_NAME] = colon != NULL ?
	    (size_t)(colon - env->header) : 0;
}

/* Matches p against subj's key k; a key the session lacks does not
 * match. */
static int
flt_match_key(const struct pattern *p, const struct pol_subject *subj,
    enum pol_key k, struct pattern_scratch *scratch)
{
	return subj->v[k] != NULL &&
	    pattern_match(p, subj->v[k], subj->len[k], scratch);
}

int
flt__match(const struct pol_match *m, const struct flt_env *env,
    const struct pol_subject *subj)
{
	struct pattern_scratch *sc = env->scratch;

	return (m->client_net == NULL ||
	    cidr_set_match(m->client_net, subj->addr)) &&
	    (m->client == NULL || pattern_match(m->client, subj->addr_text,
	    subj->addr_textlen, sc)) &&
	    (m->client_name == NULL || flt_match_key(m->client_name, subj,
	    POL_KEY_CLIENT_NAME, sc)) &&
	    (m->helo == NULL || flt_match_key(m->helo, subj, POL_KEY_HELO,
	    sc)) &&
	    (m->sender == NULL || flt_match_key(m->sender, subj,
	    POL_KEY_SENDER, sc)) &&
	    (m->recipient == NULL || flt_match_key(m->recipient, subj,
	    POL_KEY_RECIPIENT, sc)) &&
	    (m->header == NULL || flt_match_key(m->header, subj,
	    POL_KEY_HEADER, sc));
}

int
flt_match(const struct pol_match *m, const struct flt_env *env)
{
	struct pol_subject subj;

	flt__subject(env, &subj);
	return flt__match(m, env, &subj);
}

enum flt_verdict
flt_answer(struct flt_result *res, enum flt_verdict v, int code,
    const char *fmt, ...)
{
	va_list ap;

	res->verdict = v;
	res->code = code;
	va_start(ap, fmt);
	vsnprintf(res->reply, sizeof(res->reply), fmt, ap);
	va_end(ap);
	return v;
}

/* The i-th filter of the policy's order. */
static const struct flt_def *
flt_nth(const struct policy *pol, size_t i, size_t *n)
{
	if (pol != NULL && pol->filters != NULL) {
		*n = pol->nfilters;
		return i < *n ? pol->filters[i] : NULL;
	}
	*n = flt_ntable;
	return i < *n ? flt_table[i] : NULL;
}

/* Runs the filters of run->stage from run->next on. */
static enum flt_verdict
flt_continue(struct flt_run *run, const struct flt_env *env)
{
	const struct flt_def	*f;
	struct flt_result	 r;
	enum flt_verdict	 v;
	size_t			 n;

	for (; (f = flt_nth(env->pol, run->next, &n)) != NULL; run->next++) {
		if (!(f->stages & FLT_STAGE(run->stage)))
			continue;
		memset(&r, 0, offsetof(struct flt_result, reply));
		r.reply[0] = '\0';
		r.filter = f->name;
		v = f->hook(run->stage, env, &r);
		run->res.rewrite |= r.rewrite;
		if (v == FLT_PENDING) {
			if (run->stage != FLT_HEADER && run->call != NULL) {
				run->state = FLT_RUN_PENDING;
				return FLT_PENDING;
			}
			/* A bug in the filter: no flt_defer(), or at the
			 * header stage, where the data does not wait.  Its
			 * late answer, if any, is dropped. */
			log_error("filter %s answered pending at stage %s "
			    "without a handle: ignored", f->name,
			    flt_stage_name(run->stage));
			if (run->call != NULL) {
				run->call->run = NULL;
				run->call = NULL;
			}
			continue;
		}
		if (v == FLT_CONTINUE) {
			if (r.rule != NULL)
				run->res.rule = r.rule;	/* a warn match */
			continue;
		}
		r.rewrite = run->res.rewrite;
		run->res = r;
		run->res.verdict = v;
		run->state = FLT_RUN_DONE;
		metrics_verdict(r.filter, r.rule, v);
		return v;
	}
	run->res.verdict = FLT_CONTINUE;
	run->res.filter = NULL;		/* res.rule: the last warn match */
	run->state = FLT_RUN_DONE;
	return FLT_CONTINUE;
}

enum flt_verdict
flt_run_stage(struct flt_run *run, enum flt_stage st, const struct flt_env *env)
{
	struct flt_env e = *env;

	if (run->state != FLT_RUN_IDLE && run->stage != st) {
		/* A verdict, or an answer still owed, nobody will act on. */
		if (run->state != FLT_RUN_DONE)
			log_error("stage %s started while %s is in progress: "
			    "dropping the older", flt_stage_name(st),
			    flt_stage_name(run->stage));
		flt_run_abandon(run);
	}
	e.run = run;
	switch (run->state) {
	case FLT_RUN_DONE:
		return run->res.verdict;
	case FLT_RUN_PENDING:
		return FLT_PENDING;
	case FLT_RUN_RESUME:
		run->next++;
		break;
	default:
		run->stage = st;
		run->next = 0;
		memset(&run->res, 0, offsetof(struct flt_result, reply));
		run->res.reply[0] = '\0';
		break;
	}
	return flt_continue(run, &e);
}

void
flt_run_reset(struct flt_run *run)
{
	if (run->state == FLT_RUN_PENDING)
		fatalx("%s: a filter still owes an answer", __func__);
	run->state = FLT_RUN_IDLE;
}

void
flt_run_abandon(struct flt_run *run)
{
	if (run->call != NULL) {
		run->call->run = NULL;
		run->call = NULL;
	}
	run->state = FLT_RUN_IDLE;
}

struct flt_call *
flt_defer(const struct flt_env *env)
{
	struct flt_call *call;

	if (env->run == NULL || env->run->call != NULL)
		fatalx("%s: no run, or one call pending already", __func__);
	if ((call = malloc(sizeof(*call))) == NULL)
		fatalx("%s: out of memory", __func__);
	call->run = env->run;
	env->run->call = call;
	return call;
}

int
flt_call_waiting(const struct flt_call *call)
{
	return call->run != NULL;
}

int
flt_resume(struct flt_call *call, const struct flt_result *res)
{
	struct flt_run *run = call->run;

	free(call);
	if (run == NULL)
		return 0;
	run->call = NULL;
	run->res.rewrite |= res->rewrite;
	if (res->verdict == FLT_CONTINUE || res->verdict == FLT_PENDING) {
		run->state = FLT_RUN_RESUME;
	} else {
		unsigned rw = run->res.rewrite;

		run->res = *res;
		run->res.rewrite = rw;
		run->state = FLT_RUN_DONE;
		metrics_verdict(res->filter, res->rule, res->verdict);
	}
	if (run->resumed != NULL)
		run->resumed(run->owner);
	return 1;
}
