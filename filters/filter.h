/*
 * filter.h: the filter interface.
 *
 * A filter is a table entry (struct flt_def): a name, the stages it hooks
 * and one decision function.  At each stage of a session the filters of
 * that stage run in order (the policy's `filters:` list, or the table's
 * order); each answers with a verdict.  The first verdict other than
 * FLT_CONTINUE ends the stage.  A filter that must ask someone else (Redis)
 * answers FLT_PENDING, keeps the handle flt_defer() gave it and answers
 * later with flt_resume(); the session reads nothing from its client until
 * then.  If the session ends in between, flt_resume() finds that out and
 * only frees the handle.
 *
 * Filters decide; they never write to a socket.  docs/filters.md is the
 * reference for writing one.
 */
#ifndef SMTPGATE_FILTER_H
#define SMTPGATE_FILTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "policy.h"
#include "smtp_parse.h"

enum flt_stage {
	FLT_CONNECT,	/* before the greeting: address, port, reverse name */
	FLT_HELO,	/* HELO/EHLO: its argument */
	FLT_MAIL,	/* MAIL: reverse path and parameters */
	FLT_RCPT,	/* each RCPT: forward path and parameters */
	FLT_DATA,	/* the DATA command, before it reaches the backend */
	FLT_HEADER,	/* each header line, as it streams past (no
			 * FLT_PENDING here: the data does not wait) */
	FLT_EOM,	/* the final dot, before it reaches the backend */
	FLT__STAGES
};

#define FLT_STAGE(st)	(1u << (st))

enum flt_verdict {
	FLT_CONTINUE,	/* no objection: the next filter decides */
	FLT_ACCEPT,	/* accept-rest: no further filter runs at this stage */
	FLT_REJECT,	/* refuse this command with the reply (5xx) */
	FLT_TEMPFAIL,	/* refuse it for now with the reply (4xx) */
	FLT_REFUSE,	/* refuse the session: the reply (554), then 503 to
			 * every command but QUIT until the client quits */
	FLT_PENDING	/* the answer comes later through flt_resume() */
};

/* Changes a filter asks for; the session applies them. */
#define FLT_RW_STRIP_ROUTE	0x01	/* forward the path without its
					 * source route */

/* A filter's answer. */
struct flt_result {
	enum flt_verdict	 verdict;	/* the decision */
	int			 code;		/* reply code for REJECT, TEMPFAIL,
						 * REFUSE */
	const char		*filter;	/* name of the filter that decided */
	const char		*rule;		/* the rule that decided (or, with
						 * FLT_CONTINUE, the last rule that
						 * matched with action warn), or
						 * NULL */
	unsigned		 rewrite;	/* FLT_RW_*, gathered over the stage */
	char			 reply[480];	/* reply text after the code,
						 * enhanced code first (last, so
						 * the rest is cleared cheaply) */
};

struct flt_run;
struct rl_store;

/* What a filter sees of the session.  Read-only. */
struct flt_env {
	const struct policy	*pol;		/* the session's policy snapshot */
	struct pattern_scratch	*scratch;	/* the worker's PCRE2 scratch */
	const char		*session;	/* session id, for logs */
	const char		*hostname;	/* our hostname, for replies */
	const struct sockaddr	*addr;		/* client address */
	const char		*addr_text;	/* ... as text ("192.0.2.7") */
	unsigned		 port;		/* client port */
	const char		*client_name;	/* verified reverse name, or
						 * "unknown" */
	const char		*helo;		/* HELO/EHLO argument, or "" */
	int			 authenticated;	/* SMTP AUTH succeeded */
	const char		*auth_user;	/* ... as this user ("" if not) */
	const struct smtp_path	*sender;	/* MAIL and later; else NULL */
	const struct smtp_path	*rcpt;		/* FLT_RCPT: the recipient */
	const char		*header;	/* FLT_HEADER: "Name: value",
						 * unfolded */
	size_t			 headerlen;
	uint64_t		 size;		/* FLT_EOM: message bytes */
	struct rl_store		*rl;		/* the worker's rate-limit store,
						 * or NULL */
	int			 rl_tempfail;	/* the store failing means 4xx
						 * (redis: on_error: tempfail) */
	unsigned		 max_failures;	/* limits: max_failures_per_client */
	unsigned		 failure_window;	/* limits: failure_window (ms) */
	struct flt_run		*run;		/* the session's run of this stage,
						 * for flt_defer() */
};
/* Everything env points to is valid only during the hook call. */

/* A pending answer's handle (see flt_defer). */
struct flt_call;

struct flt_def {
	const char	*name;		/* as in the policy's filters: list */
	unsigned	 stages;	/* FLT_STAGE() bits it hooks */
	/*
	 * Decides at stage st.  Fills res (verdict, and code and reply for
	 * the refusing verdicts; res->rewrite bits may be or'ed in) and
	 * returns the verdict.  For FLT_PENDING it has called flt_defer().
	 */
	enum flt_verdict (*hook)(enum flt_stage st, const struct flt_env *env,
	    struct flt_result *res);
};

/* Every filter, in the default order.  Adding a filter: one file, one
 * line in filter.c. */
extern const struct flt_def *const flt_table[];
extern const size_t flt_ntable;

/* The filter named name, or NULL. */
const struct flt_def *flt_lookup(const char *name);

/* Name of a stage ("connect", "helo", ...). */
const char *flt_stage_name(enum flt_stage);

/* ---- Running a stage (the session's side) ------------------------------- */

/* The session's end of a stage's run; embedded in the session. */
struct flt_run {
	void		*owner;		/* the session */
	void		(*resumed)(void *owner);	/* called when a pending
						 * filter answered and the stage
						 * has a verdict, or went pending
						 * again */
	enum flt_stage	 stage;		/* the stage being run */
	int		 state;		/* FLT_RUN_IDLE, _PENDING, _DONE */
	size_t		 next;		/* index of the next filter to run */
	struct flt_call	*call;		/* the pending call, or NULL */
	struct flt_result res;		/* the verdict, once DONE */
};

#define FLT_RUN_IDLE	0	/* no stage in progress */
#define FLT_RUN_PENDING	1	/* a filter owes an answer */
#define FLT_RUN_RESUME	2	/* it answered "continue": the next
				 * flt_run_stage() goes on from run->next */
#define FLT_RUN_DONE	3	/* res holds the stage's verdict */

/*
 * Runs stage st with env, unless run already holds the verdict of st (then
 * it is returned again).  env, and what it points to, need only be valid
 * during the call: a filter copies what it keeps, and after a pending
 * filter answered "continue" the caller calls again with a fresh env.  Returns the stage's verdict: FLT_CONTINUE when no
 * filter objected, FLT_PENDING while a filter owes an answer (run->resumed
 * is called when it comes).  The caller resets the run with
 * flt_run_reset() once it has acted on the verdict.
 */
enum flt_verdict flt_run_stage(struct flt_run *run, enum flt_stage st,
    const struct flt_env *env);

/* Forgets the verdict; the next flt_run_stage() runs anew. */
void flt_run_reset(struct flt_run *run);

/*
 * The session is going away: a pending call is orphaned (its answer will
 * be dropped).  The run must not be used afterwards.
 */
void flt_run_abandon(struct flt_run *run);

/* ---- Answering later (the async filter's side) ------------------------- */

/*
 * Returns a handle for answering env's stage later; the filter then returns
 * FLT_PENDING.  Never NULL (aborts when out of memory).
 */
struct flt_call *flt_defer(const struct flt_env *env);

/*
 * Nonzero while the session still waits for call's answer; 0 once the
 * session (or the stage) went away and the answer would be dropped.
 * While it is nonzero, what the session's env pointed to (its policy, its
 * config, its address text) is still valid, so a filter may keep pointers
 * to it instead of copies and build its answer from them.
 */
int flt_call_waiting(const struct flt_call *call);

/*
 * Answers a pending call with res (its verdict must not be FLT_PENDING) and
 * frees the handle.  Safe when the session has ended meanwhile: then the
 * answer is dropped.  Returns 1 when the session took the answer, 0 when it
 * was gone.
 */
int flt_resume(struct flt_call *call, const struct flt_result *res);

/* The filters shipped. */
extern const struct flt_def flt_refuse;
extern const struct flt_def flt_srcroute;
extern const struct flt_def flt_relay;
extern const struct flt_def flt_rules;
extern const struct flt_def flt_ratelimit;

/* Nonzero when every matcher of m matches the session env describes
 * (the policy's rules and rate limits match this way). */
int flt_match(const struct pol_match *m, const struct flt_env *env);

/* Fills subj with what the rules match in env (pointing into it), each
 * text's length measured once. */
void flt__subject(const struct flt_env *env, struct pol_subject *subj);

/* flt_match() with env's subject from flt__subject(). */
int flt__match(const struct pol_match *m, const struct flt_env *env,
    const struct pol_subject *subj);

/* Fills c with the check of env's client against limits:
 * max_failures_per_client: cost 0 asks whether it is over, cost 1 counts a
 * failed command (forced: the penalty grows while it fails). */
struct rl_check;
void flt_ratelimit_failure_check(const struct flt_env *env,
    struct rl_check *c, uint64_t cost);

/* The stage at which a rate limit is checked and counted. */
struct pol_ratelimit;
enum flt_stage flt_ratelimit_stage(const struct pol_ratelimit *rl);

/* Fills res with a refusing verdict and its reply. */
enum flt_verdict flt_answer(struct flt_result *res, enum flt_verdict v,
    int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif /* SMTPGATE_FILTER_H */
