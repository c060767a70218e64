/*
 * flt_relay.c: relay permission.  A recipient passes when its domain is
 * local, or the client is in trusted_networks, or the session is
 * authenticated.  The domain checked is the final destination's (after
 * any source route).  For untrusted clients, local-domain addresses that
 * smuggle another destination in their local part are refused too: the
 * percent hack <u%ext@local>, bang paths <ext!u@local> and quoted local
 * parts holding '@' <"u@ext"@local>.
 */
#include <string.h>

#include "filter.h"

/* Nonzero when the local part routes elsewhere ('%', '!', quoted '@'). */
static int
flt_relay_trick(const struct smtp_path *p)
{
	return memchr(p->local, '%', p->locallen) != NULL ||
	    memchr(p->local, '!', p->locallen) != NULL ||
	    memchr(p->local, '@', p->locallen) != NULL;
}

static enum flt_verdict
flt_relay_hook(enum flt_stage st, const struct flt_env *env,
    struct flt_result *res)
{
	const struct policy	*pol = env->pol;
	const struct smtp_path	*p = env->rcpt;

	(void)st;
	if (!pol->relay || p == NULL || (p->flags & SMTP_PATH_POSTMASTER))
		return FLT_CONTINUE;
	if (env->authenticated ||
	    cidr_set_match(pol->trusted_networks, env->addr))
		return FLT_CONTINUE;
	if (p->domain != NULL && !(p->flags & SMTP_PATH_LITERAL) &&
	    domain_set_match(pol->local_domains, p->domain, p->domainlen) &&
	    !flt_relay_trick(p))
		return FLT_CONTINUE;
	return flt_answer(res, FLT_REJECT, pol->relay_reject_code,
	    "5.7.1 <%.*s>: Relay access denied", (int)p->mailboxlen,
	    p->mailbox);
}

const struct flt_def flt_relay = {
	.name = "relay",
	.stages = FLT_STAGE(FLT_RCPT),
	.hook = flt_relay_hook,
};
