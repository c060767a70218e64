/*
 * backend.c: the connection to the backend MTA.
 *
 * Each attempt to reach a server lives in its own struct be_sock, so a
 * failed attempt can be closed (its callbacks then arrive with
 * UV_ECANCELED and find sk->be == NULL) while the next one starts.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"
#include "smtp_parse.h"

#define BE_RBUF	2048	/* longest reply we take, all lines together */
#define BE_WBUF	4096	/* queued command lines */

enum be_state {
	BE_CONNECTING,		/* TCP connect in progress */
	BE_GREETING,		/* waiting for the 220 */
	BE_EHLO,		/* waiting for the EHLO reply */
	BE_XCLIENT,		/* waiting for XCLIENT's 220 */
	BE_EHLO2,		/* waiting for the EHLO reply after XCLIENT */
	BE_READY,		/* commands flow */
	BE__COUNT
};

static const char *const be_strstate[BE__COUNT] = {
	"CONNECTING", "GREETING", "EHLO", "XCLIENT", "EHLO2", "READY"
};

static const char *const be_strfail[] = {
	[BE_FAIL_CONN] = "connection failed",
	[BE_FAIL_SETUP] = "session setup refused",
	[BE_FAIL_PROTO] = "protocol error",
	[BE_FAIL_CLOSED] = "connection lost",
	[BE_FAIL_TIMEOUT] = "timeout",
};

#define BE_F_WRITING	0x01	/* a uv_write is pending */
#define BE_F_DATAWRITE	0x02	/* ... and it is message data */
#define BE_F_HELD	0x04	/* on_reply refused a reply; reading stopped */
#define BE_F_CLOSED	0x08	/* be_close() done: no more callbacks */
#define BE_F_DEFERRED	0x10	/* the timer carries a deferred failure */

/* One attempt to reach one server. */
struct be_sock {
	uv_tcp_t	 tcp;		/* the connection */
	uv_connect_t	 creq;		/* its connect request */
	uv_write_t	 wreq;		/* its one pending write */
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
	enum be_fail		 fail;		/* the deferred or last failure */
	unsigned		 ext;		/* SMTP_EXT_* of the backend */
	unsigned		 xattrs;	/* SMTP_XCLIENT_* it accepts */
	uint64_t		 size;		/* its SIZE, 0 if none */
	unsigned		 flags;		/* BE_F_* */
	size_t			 roff;		/* start of unparsed input */
	size_t			 rlen;		/* end of input in rbuf */
	size_t			 wlen;		/* queued bytes in wbuf */
	char			 rbuf[BE_RBUF];	/* replies being read */
	char			 wbuf[BE_WBUF];	/* commands being written */
};

static void be_attempt(struct be_conn *);
static void be_attempt_failed(struct be_conn *, enum be_fail);
static void be_fail(struct be_conn *, enum be_fail);

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
	be->flags &= ~(BE_F_WRITING | BE_F_DATAWRITE | BE_F_HELD);
	be->wlen = be->roff = be->rlen = 0;
}

/*
 * Reports a failure from a later loop iteration: used where a callback
 * must not run from within the caller (be_open, be_flush).
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
	if (be->state == BE_READY)
		be_fail(be, why);
	else
		be_attempt_failed(be, why == BE_FAIL_TIMEOUT ? BE_FAIL_CONN :
		    why);
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
	/* Compact only here: replies handed out are consumed by then. */
	if (be->roff > 0) {
		memmove(be->rbuf, be->rbuf + be->roff, be->rlen - be->roff);
		be->rlen -= be->roff;
		be->roff = 0;
	}
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
	uv_timer_start(&be->timer, be_timer_cb, be->cfg->to_be_helo, 0);
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
	uv_timer_start(&be->timer, be_timer_cb, be->cfg->to_be_helo, 0);
}

static void
be_set_ready(struct be_conn *be)
{
	uv_timer_stop(&be->timer);
	be_set_state(be, BE_READY);
	be->cb->on_ready(be->arg);
}

/*
 * Handles one reply during connection setup.  Returns 0 to go on reading,
 * -1 when the attempt was given up.
 */
static int
be_setup_reply(struct be_conn *be, int code, const char *r, size_t len)
{
	switch (be->state) {
	case BE_GREETING:
		if (code / 100 != 2)
			break;
		be_send_ehlo(be, BE_EHLO);
		return 0;
	case BE_EHLO:
	case BE_EHLO2:
		if (code != 250)
			break;
		be->ext = smtp_ehlo_parse(r, len, &be->size, &be->xattrs);
		if (be->state == BE_EHLO && be->cfg->xclient &&
		    (be->ext & SMTP_EXT_XCLIENT))
			be_send_xclient(be);
		else
			be_set_ready(be);
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
	be_attempt_failed(be, be->state == BE_GREETING ? BE_FAIL_CONN :
	    BE_FAIL_SETUP);
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

static void
be_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct be_sock *sk = (struct be_sock *)st;
	struct be_conn *be = sk->be;

	(void)buf;
	if (be == NULL || (be->flags & BE_F_CLOSED) || nread == 0)
		return;
	if (nread < 0) {
		enum be_fail why = nread == UV_ENOBUFS ? BE_FAIL_PROTO :
		    BE_FAIL_CLOSED;

		log_debug("backend=%s read: %s",
		    be->cfg->backends[be->server].text, uv_strerror(nread));
		if (be->state == BE_READY)
			be_fail(be, why);
		else
			be_attempt_failed(be, why);
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
	int data;

	if (be == NULL || (be->flags & BE_F_CLOSED))
		return;
	data = be->flags & BE_F_DATAWRITE;
	be->flags &= ~(BE_F_WRITING | BE_F_DATAWRITE);
	if (!data)
		be->wlen = 0;
	if (status < 0) {
		log_debug("backend=%s write: %s",
		    be->cfg->backends[be->server].text, uv_strerror(status));
		if (be->state == BE_READY)
			be_fail(be, BE_FAIL_CLOSED);
		else
			be_attempt_failed(be, BE_FAIL_CLOSED);
		return;
	}
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

int
be_flush(struct be_conn *be)
{
	if (be->flags & BE_F_WRITING)
		return 1;
	if (be->wlen == 0 || be->sock == NULL || (be->flags & BE_F_CLOSED))
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
		    !(be->flags & BE_F_WRITING))
			(void)uv_try_write((uv_stream_t *)&be->sock->tcp, &b, 1);
		be->nopen++;
		uv_close((uv_handle_t *)&be->sock->tcp, be_sock_closed_cb);
		be->sock = NULL;
	}
	uv_close((uv_handle_t *)&be->timer, be_handle_closed_cb);
}
