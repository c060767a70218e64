/*
 * flt_rules.c: the policy's rules.  At each stage, the rules placed there
 * are tried in file order; every matcher a rule has must match.  warn logs
 * and goes on (the dry run of a rule), accept ends the stage,
 * reject/tempfail/refuse answer with the rule's reply.  Only the rules the
 * policy's index gives for the session are tried (pol_index_lookup()):
 * the others cannot match.  Its lists are merged, so the order is still
 * the file's.
 */
#include <string.h>

#include "filter.h"
#include "log.h"
#include "metrics.h"

static const enum pol_stage flt_rules_pol_stage[FLT__STAGES] = {
	[FLT_CONNECT] = POL_CONNECT, [FLT_HELO] = POL_HELO,
	[FLT_MAIL] = POL_MAIL, [FLT_RCPT] = POL_RCPT,
	[FLT_DATA] = POL__STAGES, [FLT_HEADER] = POL_HEADER,
	[FLT_EOM] = POL__STAGES,
};

static enum flt_verdict
flt_rules_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	static const enum flt_verdict verdicts[] = {
		[POL_REJECT] = FLT_REJECT, [POL_TEMPFAIL] = FLT_TEMPFAIL,
		[POL_REFUSE] = FLT_REFUSE, [POL_ACCEPT] = FLT_ACCEPT,
	};
	const struct policy	*pol = env->pol;
	enum pol_stage		 ps = flt_rules_pol_stage[st];
	const struct pol_rule	*r;
	struct pol_subject	 subj;
	struct pol_list		 lists[POL_LISTS_MAX];
	size_t			 i, j, n, best;

	if (ps == POL__STAGES || pol->nstage_rules[ps] == 0)
		return FLT_CONTINUE;
	flt__subject(env, &subj);
	n = pol_index_lookup(pol->index, ps, &subj, env->scratch, lists);
	while (n > 0) {
		/* The lowest index of the lists' heads: file order. */
		for (best = 0, j = 1; j < n; j++)
			if (lists[j].v[0] < lists[best].v[0])
				best = j;
		i = lists[best].v[0];
		lists[best].v++;
		if (--lists[best].n == 0)
			lists[best] = lists[--n];
		r = &pol->rules[i];
		if (!flt__match(&r->match, env, &subj))
			continue;
		log_info("session=%s client=%s rule=%s action=%s stage=%s",
		    env->session, env->addr_text, r->name,
		    r->action == POL_WARN ? "warn" :
		    r->action == POL_ACCEPT ? "accept" :
		    r->action == POL_TEMPFAIL ? "tempfail" :
		    r->action == POL_REFUSE ? "refuse" : "reject",
		    flt_stage_name(st));
		res->rule = r->name;	/* a warn match is named too */
		if (r->action == POL_WARN) {
			metrics_verdict(flt_rules.name, r->name, FLT_CONTINUE);
			continue;
		}
		if (r->action == POL_ACCEPT) {
			res->verdict = FLT_ACCEPT;
			return FLT_ACCEPT;
		}
		return flt_answer(res, verdicts[r->action], r->code, "%s",
		    r->reply);
	}
	return FLT_CONTINUE;
}

const struct flt_def flt_rules = {
	.name = "rules",
	.stages = FLT_STAGE(FLT_CONNECT) | FLT_STAGE(FLT_HELO) |
	    FLT_STAGE(FLT_MAIL) | FLT_STAGE(FLT_RCPT) | FLT_STAGE(FLT_HEADER),
	.hook = flt_rules_hook,
};
