/*
 * flt_srcroute.c: source routes (RFC 5321 3.6.1, C.).  "strip" forwards
 * <@a.example,@b.example:u@c.example> as <u@c.example>, "reject" refuses
 * the command, "keep" forwards it as received.
 */
#include "filter.h"
#include "log.h"

static enum flt_verdict
flt_srcroute_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	const struct smtp_path *p = st == FLT_MAIL ? env->sender : env->rcpt;

	if (p == NULL || !(p->flags & SMTP_PATH_ROUTE))
		return FLT_CONTINUE;
	switch (env->pol->source_routes) {
	case POL_SR_STRIP:
		log_info("session=%s client=%s source route stripped: %.*s -> "
		    "<%.*s>", env->session, env->addr_text, (int)p->rawlen,
		    p->raw, (int)p->mailboxlen, p->mailbox);
		res->rewrite |= FLT_RW_STRIP_ROUTE;
		return FLT_CONTINUE;
	case POL_SR_REJECT:
		log_info("session=%s client=%s source route refused: %.*s",
		    env->session, env->addr_text, (int)p->rawlen, p->raw);
		if (st == FLT_MAIL)
			return flt_answer(res, FLT_REJECT, 501,
			    "5.1.0 %.*s: Source routes are not accepted",
			    (int)p->rawlen, p->raw);
		return flt_answer(res, FLT_REJECT, 550,
		    "5.7.1 %.*s: Source routes are not accepted",
		    (int)p->rawlen, p->raw);
	case POL_SR_KEEP:
		break;
	}
	return FLT_CONTINUE;
}

const struct flt_def flt_srcroute = {
	.name = "source_routes",
	.stages = FLT_STAGE(FLT_MAIL) | FLT_STAGE(FLT_RCPT),
	.hook = flt_srcroute_hook,
};
