/*
 * flt_refuse.c: refuse_clients.  A listed client is greeted with 554 and
 * then gets 503 to everything but QUIT (RFC 5321 3.1); no backend
 * connection is ever opened for it.
 */
#include "filter.h"

static enum flt_verdict
flt_refuse_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	(void)st;
	if (!cidr_set_match(env->pol->refuse_clients, env->addr))
		return FLT_CONTINUE;
	return flt_answer(res, FLT_REFUSE, 554,
	    "5.7.1 %s: Client host rejected: Access denied", env->addr_text);
}

const struct flt_def flt_refuse = {
	.name = "refuse",
	.stages = FLT_STAGE(FLT_CONNECT),
	.hook = flt_refuse_hook,
};
