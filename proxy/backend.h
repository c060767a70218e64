/*
 * backend.h: the SMTP client side: one connection to the backend MTA per
 * client session, opened at the session's first MAIL and reused for its
 * later transactions.
 *
 * be_open() walks the configured servers in order until one greets, takes
 * EHLO and, when configured and offered, XCLIENT (then EHLO again).  With
 * backend: xclient_before_ehlo (and no backend TLS), XCLIENT comes right
 * after the greeting instead, with every attribute, then the one EHLO.  Then
 * the session sends commands with be_send() and message data with
 * be_write_data(); replies come back, in order, through on_reply.
 *
 * With backend: tls: other than none, STARTTLS (RFC 3207) comes right after
 * the first EHLO: STARTTLS, its 220, the handshake (client side, SNI and
 * certificate name tls_name when set), EHLO again, and XCLIENT (then EHLO)
 * over TLS.  Bytes the server sent after its 220 in plaintext are dropped
 * unread (never taken as replies).  After that, commands, replies and
 * message data all go through TLS; data is encrypted as it is written, so
 * it is not zero-copy then, but the caller sees the same contract.
 *
 * Which failures end the attempt on a server (the next server is tried;
 * when none is left the session fails, its client gets 451 4.4.1):
 *   - STARTTLS not offered: with required; opportunistic goes on in
 *     plaintext.
 *   - STARTTLS answered with a 4xx or 5xx: with required; opportunistic
 *     goes on in plaintext (the server declined and nothing changed, RFC
 *     3207 4).  Any other answer but 220 (a 2xx or 3xx) is a confused
 *     server, and ends the attempt in both modes.
 *   - The handshake failed (certificate verification included, with
 *     verify): in both modes, since after the 220 the server expects TLS
 *     and there is no way back to plaintext on that connection.
 */
#ifndef SMTPGATE_BACKEND_H
#define SMTPGATE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

struct be_conn;

/* Why a backend connection failed; each maps to a 4xx for the client. */
enum be_fail {
	BE_FAIL_CONN,		/* no server could be reached or greeted us */
	BE_FAIL_SETUP,		/* EHLO or XCLIENT refused by every server */
	BE_FAIL_PROTO,		/* malformed or over-long reply */
	BE_FAIL_CLOSED,		/* connection closed or reset by the backend */
	BE_FAIL_TIMEOUT,	/* no reply within the configured timeout */
	BE_FAIL_TLS		/* STARTTLS refused or missing (when required)
				 * or the TLS handshake failed */
};

/* What the backend is told about the real client (XCLIENT). */
struct be_client {
	char		addr[64];	/* "192.0.2.1" or "IPV6:2001:db8::1" */
	unsigned	port;		/* client's source port */
	char		name[256];	/* verified reverse name or "[UNAVAILABLE]" */
	char		helo[256];	/* the client's HELO/EHLO argument */
	int		esmtp;		/* 1 after EHLO, 0 after HELO */
	char		login[256];	/* the SMTP AUTH user, "" if none */
};

struct be_callbacks {
	/* The connection is set up; commands may be sent. */
	void	(*on_ready)(void *arg);
	/*
	 * One complete reply (raw bytes, CRLF-terminated lines).  Returns 0
	 * when it was taken, -1 when the session cannot take it now: the
	 * backend then keeps it and stops reading until be_resume().
	 */
	int	(*on_reply)(void *arg, int code, const char *reply, size_t len);
	/* Called after each batch of replies taken from one read. */
	void	(*on_batch)(void *arg);
	/* A zero-copy data write of be_write_data() has completed. */
	void	(*on_write_done)(void *arg);
	/*
	 * The connection failed.  The backend has already begun to close
	 * itself and frees itself later: the session must drop its pointer
	 * and not call into it again.
	 */
	void	(*on_fail)(void *arg, enum be_fail why);
};

/*
 * Starts connecting.  cfg must outlive the connection (the session holds a
 * reference).  Returns the connection, or NULL when out of memory.
 * Callbacks are made with arg; none is made from within be_open().
 */
struct be_conn *be_open(uv_loop_t *loop, const struct config *cfg,
    const struct be_client *client, const struct be_callbacks *cb, void *arg);

/* Nonzero once on_ready has been called. */
int be_ready(const struct be_conn *be);

/* The EHLO keywords (SMTP_EXT_*) of the backend, once ready. */
unsigned be_extensions(const struct be_conn *be);

/* The server in use, as configured ("127.0.0.1:10025"). */
const char *be_server_name(const struct be_conn *be);

/*
 * The TLS protocol version of the connection ("TLSv1.3"), or NULL while it
 * is plaintext.  The string is static.
 */
const char *be_tls_version(const struct be_conn *be);

/*
 * Queues a command line (without CRLF; it is added) for the next
 * be_flush().  Returns 0, or -1 when the output buffer has no room now
 * (the caller retries after be_flush() and once be_busy() is 0).
 */
int be_send(struct be_conn *be, const char *line, size_t len);

/*
 * Writes what be_send() queued.  Returns 0 when all of it reached the
 * kernel, 1 when a write is still pending (be_busy() until it ends).
 * Errors are reported later through on_fail, never from here.
 */
int be_flush(struct be_conn *be);

/* Nonzero while a write is pending: no be_send() or data write then. */
int be_busy(const struct be_conn *be);

/*
 * Writes message data straight from the caller's memory.  Returns 0 when
 * all of it reached the kernel, 1 when the rest is pending: the caller
 * keeps buf unchanged until on_write_done.  Errors come through on_fail.
 * Under TLS buf is encrypted at once and the ciphertext is what stays
 * pending (held by the connection); the caller may keep buf pinned all
 * the same, and may not write more before on_write_done either way.
 */
int be_write_data(struct be_conn *be, const char *buf, size_t len);

/* Arms the reply timer for ms milliseconds; 0 stops it. */
void be_expect_reply(struct be_conn *be, unsigned ms);

/* Delivers replies held back after on_reply returned -1. */
void be_resume(struct be_conn *be);

/*
 * Ends the connection.  With quit, QUIT is sent first (best effort); without
 * it the connection is simply closed, which aborts any transaction in
 * progress (a backend never completes a message without its final dot).
 * No callback is made after this; the memory is freed later.
 */
void be_close(struct be_conn *be, int quit);

#endif /* SMTPGATE_BACKEND_H */
