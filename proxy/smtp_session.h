/*
 * smtp_session.h: one inbound SMTP session.
 */
#ifndef SMTPGATE_SMTP_SESSION_H
#define SMTPGATE_SMTP_SESSION_H

#include <uv.h>

struct worker;
struct smtp_session;

/*
 * Accepts one connection from listener and starts its session (greeting
 * or, past max_connections, 421 and close).  Errors are logged; the
 * listener keeps serving.
 */
void smtp_session_accept(struct worker *w, uv_stream_t *listener);

/*
 * Shutdown: an idle session is told 421 4.3.2 and closed at once; one with
 * a transaction in flight is closed that way when the transaction ends.
 * With force, every session is closed now (the drain timeout ran out).
 */
void smtp_session_shutdown(struct smtp_session *s, int force);

/* The next session in the worker's list (for walking it). */
struct smtp_session *smtp_session_next(struct smtp_session *s);

#endif /* SMTPGATE_SMTP_SESSION_H */
