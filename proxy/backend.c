/*
 * backend.c: the connection to the backend MTA.
 *
 * Each attempt to reach a server lives in its own struct be_sock, so a
 * failed attempt can be closed (its callbacks then arrive with
 * UV_ECANCELED and find sk->be == NULL) while the next one starts.
 *
 * Under TLS (STARTTLS, see backend.h) the ciphertext is read into the free
 * tail of rbuf, handed to OpenSSL at once, and the plaintext decrypted into
 * the same place: no buffer of its own for the input.  Output is encrypted
 * into OpenSSL's memory BIO and written from a chunk on the stack; what the
 * kernel does not take at once goes to a buffer of the attempt's own
 * (sk->tls_out) until the write completes.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"
#include "metrics.h"
#include "smtp_parse.h"
#include "tlsio.h"

#define BE_RBUF	2048	/* longest reply we take, all lines together */
#define BE_WBUF	4096	/* queued command lines */
#define BE_TLSCHUNK 16384	/* ciphertext taken per uv_try_write */

enum be_state {
	BE_CONNECTING,		/* TCP connect in progress */
	BE_GREETING,		/* waiting for the 220 */
	BE_EHLO,		/* waiting for the EHLO reply */
	BE_STARTTLS,		/* waiting for STARTTLS's 220 */
	BE_HANDSHAKE,		/* TLS handshake in progress */
	BE_EHLO_TLS,		/* waiting for the EHLO reply under TLS */
	BE_XCLIENT,		/* waiting for XCLIENT's 220 */
	BE_EHLO2,		/* waiting for the EHLO reply after XCLIENT */
	BE_READY,		/* commands flow */
	BE__COUNT
};

static const char *const be_strstate[BE__COUNT] = {
	"CONNECTING", "GREETING", "EHLO", "STARTTLS", "HANDSHAKE", "EHLO_TLS",
	"XCLIENT", "EHLO2", "READY"
};

static const char *const be_strfail[] = {
	[BE_FAIL_CONN] = "connection failed",
	[BE_FAIL_SETUP] = "session setup refused",
	[BE_FAIL_PROTO] = "protocol error",
	[BE_FAIL_CLOSED] = "connection lost",
	[BE_FAIL_TIMEOUT] = "timeout",
	[BE_FAIL_TLS] = "TLS failed",
};

#define BE_F_WRITING	0x01	/* a uv_write is pending */
#define BE_F_DATAWRITE	0x02	/* ... and it is message data */
#define BE_F_HELD	0x04	/* on_reply refused a reply; reading stopped */
#define BE_F_CLOSED	0x08	/* be_close() done: no more callbacks */
#define BE_F_DEFERRED	0x10	/* the timer carries a deferred failure */
#define BE_F_TLS	0x20	/* the TLS handshake is done: I/O is encrypted */

/* One attempt to reach one server. */
struct be_sock {
	uv_tcp_t	 tcp;		/* the connection */
	uv_connect_t	 creq;		/* its connect request */
	uv_write_t	 wreq;		/* its one pending write */
	char		*tls_out;	/* ciphertext of that write (malloc'd,
					 * freed when it ends), or NULL */
	struct be_conn	*be;		/* owner, NULL once the attempt is retired */
};

struct be_conn {
	uv_loop_t		*loop;		/* the worker's loop */
	const struct config	*cfg;		/* the session's config */
	const struct be_callbacks *cb;		/* the session's callbacks */
	void			*arg;		/* ... and their argument */
	struct be_client	 client;	/* XCLIENT attributes */
	struct be_sock		*sock;		/* current attempt, or NULL */
	uv_timer_t		 timer;		/* connect, setup and reply timer */
	int			 nopen;		/* handles still to be closed */
	enum be_state		 state;		/* where the dialogue is */
	unsigned		 server;	/* index of the server tried */
	uint64_t		 t_attempt;	/* uv_hrtime() when that attempt
						 * began, for the metrics */
	enum be_fail		 fail;		/* the deferred or last failure */
	unsigned		 ext;		/* SMTP_EXT_* of the backend */
	unsigned		 xattrs;	/* SMTP_XCLIENT_* it accepts */
	uint64_t		 size;		/* its SIZE, 0 if none */
	unsigned		 flags;		/* BE_F_* */
	size_t			 roff;		/* start of unparsed input */
	size_t			 rlen;		/* end of input in rbuf */
	size_t			 wlen;		/* queued bytes in wbuf */
	struct tlsio		*tls;		/* TLS state once the server said
						 * 220 to STARTTLS, else NULL;
						 * belongs to the current attempt */
	char			 rbuf[BE_RBUF];	/* replies being read (under TLS,
						 * also the ciphertext just read) */
	char			 wbuf[BE_WBUF];	/* commands being written */
};

static void be_attempt(struct be_conn *);
static void be_attempt_failed(struct be_conn *, enum be_fail);
static void be_fail(struct be_conn *, enum be_fail);
static int be_tls_send(struct be_conn *, unsigned);
static void be_tls_input(struct be_conn *);

static void
be_set_state(struct be_conn *be, enum be_state st)
{
	log_debug("backend=%s state %s -> %s",
	    be->cfg->backends[be->server].text, be_strstate[be->state],
	    be_strstate[st]);
	be->state = st;
}

static void
be_handle_closed_cb(uv_handle_t *h)
{
	struct be_conn *be = h->data;

	if (--be->nopen == 0)
		free(be);
}

static void
be_sock_closed_cb(uv_handle_t *h)
{
	struct be_sock *sk = (struct be_sock *)h;
	struct be_conn *be = sk->be;

	free(sk->tls_out);	/* normally freed by be_write_cb already */
	free(sk);
	if (be != NULL && --be->nopen == 0)
		free(be);
}

/* Closes the current attempt's socket without touching be afterwards. */
static void
be_retire_sock(struct be_conn *be)
{
	struct be_sock *sk = be->sock;

	if (sk == NULL)
		return;
	sk->be = NULL;
	uv_close((uv_handle_t *)&sk->tcp, be_sock_closed_cb);
	be->sock = NULL;
	be->flags &= ~(BE_F_WRITING | BE_F_DATAWRITE | BE_F_HELD | BE_F_TLS);
	be->wlen = be->roff = be->rlen = 0;
	tlsio_free(be->tls);
	be->tls = NULL;
}

/*
 * Reports a failure from a later loop iteration: used where a callback
 * must not run from within the caller (be_open, be_flush).  Set-up steps
 * start the timer with be_setup_timer(), which leaves such a failure be.
 */
static void be_timer_cb(uv_timer_t *);

static void
be_defer_fail(struct be_conn *be, enum be_fail why)
{
	be->fail = why;
	be->flags |= BE_F_DEFERRED;
	uv_timer_start(&be->timer, be_timer_cb, 0, 0);
}

static void
be_timer_cb(uv_timer_t *t)
{
	struct be_conn *be = t->data;
	enum be_fail why = BE_FAIL_TIMEOUT;

	if (be->flags & BE_F_DEFERRED) {
		be->flags &= ~BE_F_DEFERRED;
		why = be->fail;
	}
	if (be->state == BE_READY) {
		be_fail(be, why);
		return;
	}
	if (why == BE_FAIL_TIMEOUT) {
		log_warn("backend=%s timeout in state %s",
		    be->cfg->backends[be->server].text,
		    be_strstate[be->state]);
		why = BE_FAIL_CONN;
	}
	be_attempt_failed(be, why);
}

/* Arms the timer for a set-up step, unless a failure is deferred on it. */
static void
be_setup_timer(struct be_conn *be, unsigned ms)
{
	if (!(be->flags & BE_F_DEFERRED))
		uv_timer_start(&be->timer, be_timer_cb, ms, 0);
}

/*
 * Moves the unparsed input to the front of rbuf.  Called only between
 * reads, never within be_parse(): replies handed out are consumed by then.
 */
static void
be_compact(struct be_conn *be)
{
	if (be->roff > 0) {
		memmove(be->rbuf, be->rbuf + be->roff, be->rlen - be->roff);
		be->rlen -= be->roff;
		be->roff = 0;
	}
}

static void
be_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct be_sock *sk = (struct be_sock *)h;
	struct be_conn *be = sk->be;

	(void)hint;
	if (be == NULL) {
		buf->base = NULL;
		buf->len = 0;
		return;
	}
	/*
	 * Under TLS too: the ciphertext is fed to OpenSSL in be_read_cb()
	 * before anything else, so the same room then takes the plaintext.
	 */
	be_compact(be);
	buf->base = be->rbuf + be->rlen;
	buf->len = sizeof(be->rbuf) - be->rlen;
}

static int
be_queue(struct be_conn *be, const char *line, size_t len)
{
	if (be->wlen + len + 2 > sizeof(be->wbuf))
		return -1;
	memcpy(be->wbuf + be->wlen, line, len);
	be->wlen += len;
	be->wbuf[be->wlen++] = '\r';
	be->wbuf[be->wlen++] = '\n';
	return 0;
}

/*
 * Sends EHLO: with our own name first, and after XCLIENT with the client's
 * HELO name, which is what the backend then records for the client (as
 * Postfix's XCLIENT_README describes).
 */
static void
be_send_ehlo(struct be_conn *be, enum be_state next)
{
	const char	*name = be->cfg->backend_helo;
	char		 line[300];
	int		 n;

	if (next == BE_EHLO2 && be->client.helo[0] != '\0')
		name = be->client.helo;
	n = snprintf(line, sizeof(line), "EHLO %s", name);
	be_queue(be, line, (size_t)n);
	be_flush(be);
	be_set_state(be, next);
	be_setup_timer(be, be->cfg->to_be_helo);
}

/* Appends " KEY=xtext(val)" to line; returns the new length or 0. */
static size_t
be_xattr(char *line, size_t len, size_t max, const char *key, const char *val)
{
	size_t klen = strlen(key), n;

	if (len + klen + 2 >= max)
		return 0;
	line[len++] = ' ';
	memcpy(line + len, key, klen);
	len += klen;
	line[len++] = '=';
	n = smtp_xtext_encode(line + len, max - len, val, strlen(val));
	if (n >= max - len)
		return 0;
	return len + n;
}

static void
be_send_xclient(struct be_conn *be)
{
	char		 line[1024], port[16];
	size_t		 len = strlen("XCLIENT");
	const struct be_client *c = &be->client;

	memcpy(line, "XCLIENT", len);
	snprintf(port, sizeof(port), "%u", c->port);
	if (len && (be->xattrs & SMTP_XCLIENT_ADDR))
		len = be_xattr(line, len, sizeof(line), "ADDR", c->addr);
	if (len && (be->xattrs & SMTP_XCLIENT_PORT))
		len = be_xattr(line, len, sizeof(line), "PORT", port);
	if (len && (be->xattrs & SMTP_XCLIENT_NAME))
		len = be_xattr(line, len, sizeof(line), "NAME", c->name);
	if (len && (be->xattrs & SMTP_XCLIENT_HELO) && c->helo[0])
		len = be_xattr(line, len, sizeof(line), "HELO", c->helo);
	if (len && (be->xattrs & SMTP_XCLIENT_PROTO))
		len = be_xattr(line, len, sizeof(line), "PROTO",
		    c->esmtp ? "ESMTP" : "SMTP");
	/* An authenticated client: Postfix then applies its
	 * permit_sasl_authenticated and logs sasl_username. */
	if (len && (be->xattrs & SMTP_XCLIENT_LOGIN) && c->login[0])
		len = be_xattr(line, len, sizeof(line), "LOGIN", c->login);
	if (len == 0) {
		/* Cannot happen with our field sizes; fail the attempt. */
		be_attempt_failed(be, BE_FAIL_SETUP);
		return;
	}
	log_debug("backend=%s %.*s", be->cfg->backends[be->server].text,
	    (int)len, line);
	be_queue(be, line, len);
	be_flush(be);
	be_set_state(be, BE_XCLIENT);
	be_setup_timer(be, be->cfg->to_be_helo);
}

static void
be_set_ready(struct be_conn *be)
{
	uv_timer_stop(&be->timer);
	be_set_state(be, BE_READY);
	metrics_be_ready(be->t_attempt);
	be->cb->on_ready(be->arg);
}

/*
 * After the EHLO reply the session goes on with (in plaintext, or the
 * first one under TLS): XCLIENT when configured and offered, else ready.
 */
static void
be_after_ehlo(struct be_conn *be)
{
	if (be->cfg->xclient && (be->ext & SMTP_EXT_XCLIENT))
		be_send_xclient(be);
	else
		be_set_ready(be);
}

/*
 * After the first EHLO reply, with backend TLS configured: STARTTLS when
 * the server offers it; otherwise on in plaintext (opportunistic) or the
 * attempt is given up (required).  Returns 0 to go on reading, -1 when the
 * attempt was given up.
 */
static int
be_tls_offer(struct be_conn *be)
{
	const char *srv = be->cfg->backends[be->server].text;

	if (be->ext & SMTP_EXT_STARTTLS) {
		be_queue(be, "STARTTLS", 8);
		be_flush(be);
		be_set_state(be, BE_STARTTLS);
		be_setup_timer(be, be->cfg->to_be_helo);
		return 0;
	}
	if (be->cfg->be_tls == CFG_BETLS_REQUIRED) {
		log_warn("backend=%s does not offer STARTTLS and TLS is "
		    "required", srv);
		be_attempt_failed(be, BE_FAIL_TLS);
		return -1;
	}
	log_info("backend=%s does not offer STARTTLS: going on without TLS",
	    srv);
	be_after_ehlo(be);
	return 0;
}

/*
 * Writes what ciphertext the socket takes now, best effort, and drops the
 * rest: the alert after a failed handshake, QUIT and close_notify before
 * a close.
 */
static void
be_tls_send_now(struct be_conn *be)
{
	char		 chunk[BE_TLSCHUNK];
	uv_buf_t	 b;
	size_t		 n;

	if (be->sock == NULL || (be->flags & BE_F_WRITING))
		return;
	while ((n = tlsio_take(be->tls, chunk, sizeof(chunk))) > 0) {
		b = uv_buf_init(chunk, (unsigned)n);
		if (uv_try_write((uv_stream_t *)&be->sock->tcp, &b, 1) !=
		    (int)n)
			break;
	}
}

/*
 * Advances the handshake with the input fed so far and sends what that
 * produced; once it is done, sends EHLO again, encrypted.  Returns 0 to go
 * on, -1 when the attempt was given up.
 */
static int
be_tls_handshake(struct be_conn *be)
{
	const char	*srv = be->cfg->backends[be->server].text;
	int		 r;

	if ((r = tlsio_handshake(be->tls)) < 0) {
		log_warn("backend=%s TLS handshake failed: %s", srv,
		    tlsio_error(be->tls));
		be_tls_send_now(be);	/* the alert, if any */
		be_attempt_failed(be, BE_FAIL_TLS);
		return -1;
	}
	be_flush(be);
	if (r == 0)
		return 0;
	be->flags |= BE_F_TLS;
	log_info("backend=%s TLS established: %s %s", srv,
	    tlsio_version(be->tls), tlsio_cipher(be->tls));
	/* RFC 3207 4.2: what the server said before TLS counts no more. */
	be->ext = be->xattrs = 0;
	be->size = 0;
	be_send_ehlo(be, BE_EHLO_TLS);
	return 0;
}

/*
 * STARTTLS was answered with 220: drops whatever the server sent after the
 * 220 (in plaintext, so anyone on the path may have put it there: it must
 * not be taken as replies later, CVE-2011-0411 the other way round) and
 * starts the handshake.  Returns 0 or -1 as be_tls_handshake() does.
 */
static int
be_tls_start(struct be_conn *be)
{
	const struct config	*cfg = be->cfg;
	const char		*srv = cfg->backends[be->server].text;

	if (be->rlen > be->roff)
		log_warn("backend=%s discarded %zu bytes sent after the 220 "
		    "to STARTTLS", srv, be->rlen - be->roff);
	be->roff = be->rlen = 0;
	be->tls = tlsio_new(cfg->be_tls_ctx, false,
	    cfg->be_tls_name[0] != '\0' ? cfg->be_tls_name : NULL);
	if (be->tls == NULL) {
		log_warn("backend=%s cannot start TLS: out of memory", srv);
		be_attempt_failed(be, BE_FAIL_TLS);
		return -1;
	}
	be_set_state(be, BE_HANDSHAKE);
	be_setup_timer(be, cfg->to_be_helo);
	return be_tls_handshake(be);
}

/*
 * Handles one reply during connection setup.  Returns 0 to go on reading,
 * -1 when the attempt was given up.
 */
static int
be_setup_reply(struct be_conn *be, int code, const char *r, size_t len)
{
	enum be_fail why = BE_FAIL_SETUP;

	switch (be->state) {
	case BE_GREETING:
		if (code / 100 != 2) {
			why = BE_FAIL_CONN;
			break;
		}
		/* backend: xclient_before_ehlo: XCLIENT, 220, then EHLO. */
		if (be->cfg->xclient && be->cfg->xclient_first &&
		    be->cfg->be_tls == CFG_BETLS_NONE) {
			be->xattrs = SMTP_XCLIENT_ADDR | SMTP_XCLIENT_PORT |
			    SMTP_XCLIENT_NAME | SMTP_XCLIENT_HELO |
			    SMTP_XCLIENT_PROTO | SMTP_XCLIENT_LOGIN;
			be_send_xclient(be);
			return 0;
		}
		be_send_ehlo(be, BE_EHLO);
		return 0;
	case BE_EHLO:
	case BE_EHLO_TLS:
	case BE_EHLO2:
		if (code != 250)
			break;
		be->ext = smtp_ehlo_parse(r, len, &be->size, &be->xattrs);
		if (be->state == BE_EHLO && be->cfg->be_tls != CFG_BETLS_NONE)
			return be_tls_offer(be);
		if (be->state == BE_EHLO2)
			be_set_ready(be);
		else
			be_after_ehlo(be);
		return 0;
	case BE_STARTTLS:
		if (code == 220)
			return be_tls_start(be);
		/*
		 * A 4xx or 5xx leaves the session as it was (RFC 3207 4):
		 * opportunistic goes on in plaintext.  Anything else is a
		 * confused server, whatever the mode.
		 */
		why = BE_FAIL_TLS;
		if (be->cfg->be_tls == CFG_BETLS_REQUIRED ||
		    (code / 100 != 4 && code / 100 != 5))
			break;
		log_info("backend=%s refused STARTTLS, going on without TLS: "
		    "%.*s", be->cfg->backends[be->server].text,
		    (int)(len > 2 ? len - 2 : len), r);
		be_after_ehlo(be);
		return 0;
	case BE_XCLIENT:
		if (code / 100 != 2)
			break;
		be_send_ehlo(be, BE_EHLO2);
		return 0;
	default:
		fatalx("%s: bad state %d", __func__, be->state);
	}
	log_warn("backend=%s refused in state %s: %.*s",
	    be->cfg->backends[be->server].text, be_strstate[be->state],
	    (int)(len > 2 ? len - 2 : len), r);
	be_attempt_failed(be, why);
	return -1;
}

/* Parses and hands out every complete reply in rbuf. */
static void
be_parse(struct be_conn *be)
{
	int	 code, delivered = 0;
	long	 n;

	while (!(be->flags & (BE_F_CLOSED | BE_F_HELD)) && be->sock != NULL) {
		n = smtp_reply_parse(be->rbuf + be->roff, be->rlen - be->roff,
		    sizeof(be->rbuf), &code);
		if (n == 0)
			break;
		if (n < 0) {
			log_warn("backend=%s malformed or over-long reply",
			    be->cfg->backends[be->server].text);
			if (be->state == BE_READY)
				be_fail(be, BE_FAIL_PROTO);
			else
				be_attempt_failed(be, BE_FAIL_PROTO);
			return;
		}
		if (be->state != BE_READY) {
			be->roff += (size_t)n;
			if (be_setup_reply(be, code, be->rbuf + be->roff - n,
			    (size_t)n) < 0)
				return;
			continue;
		}
		if (be->cb->on_reply(be->arg, code, be->rbuf + be->roff,
		    (size_t)n) < 0) {
			if (be->flags & BE_F_CLOSED)
				return;
			be->flags |= BE_F_HELD;
			uv_read_stop((uv_stream_t *)&be->sock->tcp);
			break;
		}
		be->roff += (size_t)n;
		delivered = 1;
	}
	if (delivered && !(be->flags & BE_F_CLOSED))
		be->cb->on_batch(be->arg);
}

/* Ends the attempt, or the connection once it is ready, for why. */
static void
be_io_failed(struct be_conn *be, enum be_fail why)
{
	if (be->state == BE_READY)
		be_fail(be, why);
	else
		be_attempt_failed(be, why);
}

/*
 * Under TLS, after ciphertext was fed (or replies held back were taken):
 * advances the handshake, or decrypts into rbuf and parses, as long as
 * there is plaintext and room for it.  Ciphertext of a partial record
 * stays with OpenSSL until the rest comes.
 */
static void
be_tls_input(struct be_conn *be)
{
	struct be_sock	*sk = be->sock;
	ssize_t		 n;

	if (be->state == BE_HANDSHAKE &&
	    (be_tls_handshake(be) < 0 || be->state == BE_HANDSHAKE))
		return;
	/*
	 * The callbacks of be_parse() may close the connection or end the
	 * attempt (be->sock is then another or NULL; sk is not freed before
	 * the loop's next iteration, so the comparison is sound).
	 */
	while (!(be->flags & (BE_F_CLOSED | BE_F_HELD)) && be->sock == sk &&
	    be->tls != NULL) {
		be_compact(be);
		if (be->rlen == sizeof(be->rbuf))
			break;	/* be_parse() failed it as over-long */
		n = tlsio_read(be->tls, be->rbuf + be->rlen,
		    sizeof(be->rbuf) - be->rlen);
		if (n == 0)
			break;
		if (n < 0) {
			if (n == TLSIO_EOF)
				log_debug("backend=%s TLS closed by the server",
				    be->cfg->backends[be->server].text);
			else
				log_warn("backend=%s TLS: %s",
				    be->cfg->backends[be->server].text,
				    tlsio_error(be->tls));
			be_io_failed(be, n == TLSIO_EOF ? BE_FAIL_CLOSED :
			    BE_FAIL_PROTO);
			return;
		}
		be->rlen += (size_t)n;
		be_parse(be);
	}
}

static void
be_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct be_sock *sk = (struct be_sock *)st;
	struct be_conn *be = sk->be;

	if (be == NULL || (be->flags & BE_F_CLOSED) || nread == 0)
		return;
	if (nread < 0) {
		enum be_fail why = nread == UV_ENOBUFS ? BE_FAIL_PROTO :
		    BE_FAIL_CLOSED;

		log_debug("backend=%s read: %s",
		    be->cfg->backends[be->server].text, uv_strerror(nread));
		be_io_failed(be, why);
		return;
	}
	if (be->tls != NULL) {
		/* Ciphertext, in rbuf's free tail (be_alloc_cb): feed it. */
		if (tlsio_feed(be->tls, buf->base, (size_t)nread) < 0) {
			log_warn("backend=%s TLS: %s",
			    be->cfg->backends[be->server].text,
			    tlsio_error(be->tls));
			be_io_failed(be, BE_FAIL_CLOSED);
			return;
		}
		be_tls_input(be);
		return;
	}
	be->rlen += (size_t)nread;
	be_parse(be);
}

static void
be_connect_cb(uv_connect_t *req, int status)
{
	struct be_sock *sk = req->data;
	struct be_conn *be = sk->be;

	if (be == NULL || (be->flags & BE_F_CLOSED))
		return;
	if (status < 0) {
		log_warn("backend=%s connect: %s",
		    be->cfg->backends[be->server].text, uv_strerror(status));
		be_attempt_failed(be, BE_FAIL_CONN);
		return;
	}
	uv_tcp_nodelay(&sk->tcp, 1);
	metrics_be_connect(be->t_attempt);
	be_set_state(be, BE_GREETING);
	uv_timer_start(&be->timer, be_timer_cb, be->cfg->to_be_greeting, 0);
	uv_read_start((uv_stream_t *)&sk->tcp, be_alloc_cb, be_read_cb);
}

static void
be_attempt(struct be_conn *be)
{
	const struct cfg_addr	*a;
	struct be_sock		*sk;
	int			 r;

	if (be->server >= be->cfg->nbackends) {
		be_fail(be, be->fail);
		return;
	}
	a = &be->cfg->backends[be->server];
	if ((sk = calloc(1, sizeof(*sk))) == NULL) {
		be_defer_fail(be, BE_FAIL_CONN);
		return;
	}
	uv_tcp_init(be->loop, &sk->tcp);
	sk->be = be;
	sk->creq.data = sk;
	sk->wreq.data = sk;
	be->sock = sk;
	be->state = BE_CONNECTING;
	be->t_attempt = uv_hrtime();
	r = uv_tcp_connect(&sk->creq, &sk->tcp, (const struct sockaddr *)&a->ss,
	    be_connect_cb);
	if (r < 0) {
		log_warn("backend=%s connect: %s", a->text, uv_strerror(r));
		/* Retire this attempt from the timer, never from here. */
		be->fail = BE_FAIL_CONN;
		be_defer_fail(be, BE_FAIL_CONN);
		return;
	}
	uv_timer_start(&be->timer, be_timer_cb, be->cfg->to_be_connect, 0);
}

static void
be_attempt_failed(struct be_conn *be, enum be_fail why)
{
	uv_timer_stop(&be->timer);
	/* Keep the worst reason for the session's log. */
	if (why != BE_FAIL_CONN || be->fail == BE_FAIL_CONN)
		be->fail = why;
	be_retire_sock(be);
	be->server++;
	be_attempt(be);
}

/* Gives up for good: closes, then tells the session. */
static void
be_fail(struct be_conn *be, enum be_fail why)
{
	const struct be_callbacks *cb = be->cb;
	void *arg = be->arg;

	log_warn("backend=%s %s", be->server < be->cfg->nbackends ?
	    be->cfg->backends[be->server].text : "all", be_strfail[why]);
	metrics_be_fail(why);
	be_close(be, 0);
	cb->on_fail(arg, why);
}

struct be_conn *
be_open(uv_loop_t *loop, const struct config *cfg,
    const struct be_client *client, const struct be_callbacks *cb, void *arg)
{
	struct be_conn *be;

	if ((be = malloc(sizeof(*be))) == NULL)
		return NULL;
	memset(be, 0, offsetof(struct be_conn, rbuf));
	be->loop = loop;
	be->cfg = cfg;
	be->cb = cb;
	be->arg = arg;
	be->client = *client;
	be->fail = BE_FAIL_CONN;
	uv_timer_init(loop, &be->timer);
	be->timer.data = be;
	be->nopen = 1;
	be_attempt(be);
	return be;
}

int
be_ready(const struct be_conn *be)
{
	return be->state == BE_READY;
}

unsigned
be_extensions(const struct be_conn *be)
{
	return be->ext;
}

const char *
be_server_name(const struct be_conn *be)
{
	return be->cfg->backends[be->server].text;
}

const char *
be_tls_version(const struct be_conn *be)
{
	return (be->flags & BE_F_TLS) ? tlsio_version(be->tls) : NULL;
}

int
be_send(struct be_conn *be, const char *line, size_t len)
{
	if (be->flags & BE_F_WRITING)
		return -1;
	return be_queue(be, line, len);
}

static void
be_write_cb(uv_write_t *req, int status)
{
	struct be_sock *sk = req->data;
	struct be_conn *be = sk->be;
	unsigned data;

	free(sk->tls_out);
	sk->tls_out = NULL;
	if (be == NULL || (be->flags & BE_F_CLOSED))
		return;
	data = be->flags & BE_F_DATAWRITE;
	be->flags &= ~(BE_F_WRITING | BE_F_DATAWRITE);
	if (!data)
		be->wlen = 0;
	if (status < 0) {
		log_debug("backend=%s write: %s",
		    be->cfg->backends[be->server].text, uv_strerror(status));
		be_io_failed(be, BE_FAIL_CLOSED);
		return;
	}
	/*
	 * Ciphertext made while this write was pending (the handshake's next
	 * flight) goes now; a data write is done when that is out too.
	 */
	if (be->tls != NULL && tlsio_pending(be->tls) > 0 &&
	    be_tls_send(be, data) != 0)
		return;
	if (data)
		be->cb->on_write_done(be->arg);
	else if (be->state == BE_READY)
		be->cb->on_batch(be->arg);
}

/*
 * Writes buf with one uv_try_write and, for what the kernel did not take,
 * one uv_write.  Returns 0 or 1 as be_flush() does.
 */
static int
be_write(struct be_conn *be, const char *buf, size_t len, unsigned flag)
{
	uv_stream_t	*st = (uv_stream_t *)&be->sock->tcp;
	uv_buf_t	 b = uv_buf_init((char *)buf, (unsigned)len);
	int		 n, r;

	n = uv_try_write(st, &b, 1);
	if (n == (int)len)
		return 0;
	if (n < 0)
		n = 0;	/* EAGAIN, or an error uv_write reports in write_cb */
	b = uv_buf_init((char *)buf + n, (unsigned)(len - n));
	if ((r = uv_write(&be->sock->wreq, st, &b, 1, be_write_cb)) < 0) {
		be_defer_fail(be, BE_FAIL_CLOSED);
		return 1;
	}
	be->flags |= BE_F_WRITING | flag;
	return 1;
}

/*
 * Under TLS: writes the ciphertext OpenSSL holds, what the socket takes at
 * once from a chunk on the stack, the rest from sk->tls_out until the
 * write completes (flag, BE_F_DATAWRITE or 0, is kept for be_write_cb).
 * Returns 0 when all of it reached the kernel, 1 when a write is pending
 * or a failure was deferred (nothing more is written then).
 */
static int
be_tls_send(struct be_conn *be, unsigned flag)
{
	struct be_sock	*sk = be->sock;
	uv_stream_t	*st = (uv_stream_t *)&sk->tcp;
	char		 chunk[BE_TLSCHUNK];
	uv_buf_t	 b;
	size_t		 n, rest;
	int		 w;

	while ((n = tlsio_take(be->tls, chunk, sizeof(chunk))) > 0) {
		b = uv_buf_init(chunk, (unsigned)n);
		if ((w = uv_try_write(st, &b, 1)) < 0)
			w = 0;	/* EAGAIN, or an error uv_write reports */
		if ((size_t)w == n)
			continue;
		rest = n - (size_t)w + tlsio_pending(be->tls);
		if ((sk->tls_out = malloc(rest)) == NULL)
			goto fail;
		memcpy(sk->tls_out, chunk + w, n - (size_t)w);
		tlsio_take(be->tls, sk->tls_out + (n - (size_t)w),
		    rest - (n - (size_t)w));
		b = uv_buf_init(sk->tls_out, (unsigned)rest);
		if (uv_write(&sk->wreq, st, &b, 1, be_write_cb) < 0) {
			free(sk->tls_out);
			sk->tls_out = NULL;
			goto fail;
		}
		be->flags |= BE_F_WRITING | flag;
		return 1;
	}
	return 0;
fail:
	/* Busy until the failure is reported: no write goes out of order. */
	be->flags |= BE_F_WRITING;
	be_defer_fail(be, BE_FAIL_CLOSED);
	return 1;
}

/*
 * Encrypts len bytes of buf and sends the ciphertext as be_tls_send()
 * does.  Returns 0 or 1 as that does.
 */
static int
be_tls_write(struct be_conn *be, const char *buf, size_t len, unsigned flag)
{
	if (len > 0 && tlsio_write(be->tls, buf, len) < 0) {
		log_warn("backend=%s TLS: %s",
		    be->cfg->backends[be->server].text, tlsio_error(be->tls));
		be->flags |= BE_F_WRITING;
		be_defer_fail(be, BE_FAIL_PROTO);
		return 1;
	}
	return be_tls_send(be, flag);
}

int
be_flush(struct be_conn *be)
{
	size_t len;

	if (be->flags & BE_F_WRITING)
		return 1;
	if (be->sock == NULL || (be->flags & BE_F_CLOSED))
		return 0;
	if (be->tls != NULL) {
		/*
		 * Until the handshake is done only its own output goes (no
		 * command is queued then).  Encrypting copies: wbuf is free
		 * again at once.
		 */
		len = (be->flags & BE_F_TLS) ? be->wlen : 0;
		be->wlen -= len;
		return be_tls_write(be, be->wbuf, len, 0);
	}
	if (be->wlen == 0)
		return 0;
	if (be_write(be, be->wbuf, be->wlen, 0) == 0) {
		be->wlen = 0;
		return 0;
	}
	return 1;
}

int
be_busy(const struct be_conn *be)
{
	return (be->flags & BE_F_WRITING) != 0;
}

int
be_write_data(struct be_conn *be, const char *buf, size_t len)
{
	if (be->flags & (BE_F_WRITING | BE_F_CLOSED) || be->sock == NULL)
		fatalx("%s: backend busy or closed", __func__);
	if (be->tls != NULL)
		return be_tls_write(be, buf, len, BE_F_DATAWRITE);
	return be_write(be, buf, len, BE_F_DATAWRITE);
}

void
be_expect_reply(struct be_conn *be, unsigned ms)
{
	if (be->state != BE_READY || (be->flags & BE_F_DEFERRED))
		return;
	if (ms)
		uv_timer_start(&be->timer, be_timer_cb, ms, 0);
	else
		uv_timer_stop(&be->timer);
}

void
be_resume(struct be_conn *be)
{
	if (!(be->flags & BE_F_HELD) || (be->flags & BE_F_CLOSED))
		return;
	be->flags &= ~BE_F_HELD;
	be_parse(be);
	/*
	 * Under TLS, more replies may be decrypted already or still be
	 * ciphertext OpenSSL holds: no read would bring them.
	 */
	if (be->tls != NULL)
		be_tls_input(be);
	if (!(be->flags & (BE_F_HELD | BE_F_CLOSED)) && be->sock != NULL)
		uv_read_start((uv_stream_t *)&be->sock->tcp, be_alloc_cb,
		    be_read_cb);
}

void
be_close(struct be_conn *be, int quit)
{
	static const char quitcmd[] = "QUIT\r\n";
	uv_buf_t b = uv_buf_init((char *)quitcmd, sizeof(quitcmd) - 1);

	if (be->flags & BE_F_CLOSED)
		return;
	be->flags |= BE_F_CLOSED;
	if (be->sock != NULL) {
		if (quit && be->state == BE_READY &&
		    !(be->flags & BE_F_WRITING)) {
			if (be->tls == NULL)
				(void)uv_try_write((uv_stream_t *)&be->sock->tcp,
				    &b, 1);
			else if (tlsio_write(be->tls, quitcmd,
			    sizeof(quitcmd) - 1) == 0) {
				tlsio_close_notify(be->tls);
				be_tls_send_now(be);
			}
		}
		be->nopen++;
		uv_close((uv_handle_t *)&be->sock->tcp, be_sock_closed_cb);
		be->sock = NULL;
	}
	tlsio_free(be->tls);
	be->tls = NULL;
	uv_close((uv_handle_t *)&be->timer, be_handle_closed_cb);
}
