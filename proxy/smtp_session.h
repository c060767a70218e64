/*
 * smtp_session.h: one inbound SMTP session.
 */
#ifndef SMTPGATE_SMTP_SESSION_H
#define SMTPGATE_SMTP_SESSION_H

#include <uv.h>

struct worker;
struct smtp_session;

/*
 * Starts the session of fd, a connection from peer (as accept(2) gave it)
 * accepted on listener number listener of w (greeting or, past
 * max_connections, 421 and close).  The session owns fd from then on,
 * whatever happens.  Errors are logged; the listener keeps serving.
 */
void smtp_session_accept(struct worker *w, uv_os_sock_t fd,
    const struct sockaddr_storage *peer, unsigned listener);

/*
 * Shutdown: an idle session is told 421 4.3.2 and closed at once; one with
 * a transaction in flight is closed that way when the transaction ends.
 * With force, every session is closed now (the drain timeout ran out).
 */
void smtp_session_shutdown(struct smtp_session *s, int force);

/* The next session in the worker's list (for walking it). */
struct smtp_session *smtp_session_next(struct smtp_session *s);

#endif /* SMTPGATE_SMTP_SESSION_H */
