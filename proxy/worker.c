/*
 * worker.c: a worker thread: one loop, its listeners, its sessions.
 */
#include <sys/socket.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "ratelimit.h"
#include "smtp_reply.h"
#include "smtp_session.h"

#define ACCEPT_BATCH	64	/* connections accepted per wake-up, so one
				 * busy listener does not starve the loop */
/* Descriptors kept free out of a limit of n (backend connections, files). */
#define FD_SPARE(n)	((n) / 16 < 64 ? (n) / 16 : 64)
#define ACCEPT_PAUSE_MS	500	/* out of file descriptors: time before
				 * accepting again, unless a session ends
				 * first */

char *
worker_buf_get(struct worker *w)
{
	if (w->npool > 0)
		return w->pool[--w->npool];
	return malloc(IOBUF_SIZE);
}

void
worker_buf_put(struct worker *w, char *buf)
{
	if (w->npool < IOBUF_POOL)
		w->pool[w->npool++] = buf;
	else
		free(buf);
}

/* Opens the reserve descriptor if it is not open. */
static void
worker_reserve_open(struct worker *w)
{
	if (w->reserve_fd < 0)
		w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void worker_accept_cb(uv_poll_t *, int, int);

static void
worker_accept_resume(struct worker *w)
{
	unsigned i;

	if (!w->accept_paused || w->draining)
		return;
	w->accept_paused = 0;
	uv_timer_stop(&w->accept_timer);
	worker_reserve_open(w);
	for (i = 0; i < w->nlisteners; i++)
		uv_poll_start(&w->listeners[i], UV_READABLE, worker_accept_cb);
}

static void
worker_accept_timer_cb(uv_timer_t *t)
{
	worker_accept_resume(t->data);
}

/*
 * Stops accepting until a session of this worker ends or ACCEPT_PAUSE_MS
 * pass.  A listening socket with connections waiting stays readable: going
 * on polling it while accept(2) cannot succeed would spin the loop.
 * Waiting connections stay in the kernel's backlog meanwhile.
 */
static void
worker_accept_pause(struct worker *w)
{
	unsigned i;

	if (w->accept_paused)
		return;
	w->accept_paused = 1;
	for (i = 0; i < w->nlisteners; i++)
		uv_poll_stop(&w->listeners[i]);
	uv_timer_start(&w->accept_timer, worker_accept_timer_cb,
	    ACCEPT_PAUSE_MS, 0);
}

/*
 * Tells fd, just accepted on listener idx, 421 4.7.0 (a plain close where
 * TLS or a PROXY header is due) and closes it.
 */
static void
worker_refuse(struct worker *w, unsigned idx, int fd)
{
	const struct cfg_listen	*l = idx < w->cfg->nlisten ?
	    &w->cfg->listen[idx] : NULL;
	char			 msg[400];
	size_t			 len;

	if (l != NULL && l->tls != CFG_TLS_IMPLICIT && !l->proxy_protocol &&
	    (len = smtp_reply_format(msg, sizeof(msg), RPL_TOO_MANY_CONN,
	    w->cfg->hostname)) > 0) {
		/* A new socket's send buffer is empty: this never blocks. */
		(void)send(fd, msg, len, MSG_NOSIGNAL);
		metrics_reply(4);
	}
	close(fd);
}

/*
 * accept(2) failed for want of file descriptors (EMFILE, ENFILE): the
 * reserve descriptor is given up to accept the connections waiting on
 * listener idx and refuse each, then accepting pauses.  Returns how many
 * were refused.
 */
static unsigned
worker_shed(struct worker *w, unsigned idx)
{
	unsigned	n = 0;
	int		fd;

	if (w->reserve_fd >= 0) {
		close(w->reserve_fd);
		w->reserve_fd = -1;
		while (n < ACCEPT_BATCH && (fd = accept4(w->fds[idx], NULL,
		    NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
			worker_refuse(w, idx, fd);
			n++;
		}
		worker_reserve_open(w);
	}
	worker_accept_pause(w);
	return n;
}

/*
 * Nonzero when fd, just accepted, leaves too few descriptors for the
 * sessions' backend connections and the rest: descriptors are handed out
 * lowest first, so every one below fd is in use.  Logs when that starts
 * and ends.
 */
static int
worker_fds_short(struct worker *w, int fd)
{
	int limit = w->ctx->fd_limit;
	int short_now = limit > 0 && fd >= limit - FD_SPARE(limit);

	if (short_now != w->fd_short) {
		w->fd_short = short_now;
		if (short_now)
			log_warn("worker=%u out of file descriptors "
			    "(descriptor %d, limit %d, %d kept for backend "
			    "connections; %u sessions here): new connections "
			    "get 421 4.7.0",
			    w->idx, fd, limit, FD_SPARE(limit),
			    w->nsessions);
		else
			log_info("worker=%u file descriptors available again: "
			    "accepting", w->idx);
	}
	return short_now;
}

static void
worker_accept_cb(uv_poll_t *p, int status, int events)
{
	struct worker	*w = p->data;
	struct sockaddr_storage	 peer;
	socklen_t		 plen;
	unsigned		 idx = (unsigned)(p - w->listeners), i;
	int			 fd, e;

	(void)events;
	if (status < 0) {
		log_warn("worker=%u accept: %s", w->idx, uv_strerror(status));
		worker_accept_pause(w);
		return;
	}
	for (i = 0; i < ACCEPT_BATCH && !w->accept_paused && !w->draining;
	    i++) {
		plen = sizeof(peer);
		memset(&peer, 0, sizeof(peer));
		fd = accept4(w->fds[idx], (struct sockaddr *)&peer, &plen,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			if (worker_fds_short(w, fd))
				worker_refuse(w, idx, fd);
			else
				smtp_session_accept(w, fd, &peer, idx);
			continue;
		}
		switch (e = errno) {
		case EAGAIN:
#if EWOULDBLOCK != EAGAIN
		case EWOULDBLOCK:
#endif
			return;
		case EINTR:
		case ECONNABORTED:
		case EPROTO:
		case ENETDOWN:
		case ENOPROTOOPT:
		case EHOSTDOWN:
		case ENONET:
		case EHOSTUNREACH:
		case ENETUNREACH:
		case EOPNOTSUPP:
			/* The connection's own error (accept(2)): next. */
			continue;
		case EMFILE:
		case ENFILE:
			log_warn("worker=%u out of file descriptors (%s, %u "
			    "sessions): %u connections refused with 421; "
			    "accepting again when a session ends",
			    w->idx, strerror(e), w->nsessions,
			    worker_shed(w, idx));
			return;
		default:
			log_warn("worker=%u accept: %s", w->idx, strerror(e));
			worker_accept_pause(w);
			return;
		}
	}
}

/* Closes what keeps the loop alive once no session is left. */
static void
worker_maybe_exit(struct worker *w)
{
	if (!w->draining || w->nsessions > 0)
		return;
	if (w->rl_own) {
		/* Its handles close on this loop before it ends. */
		rl_store_free(w->rl);
		w->rl_own = 0;
	}
	w->rl = NULL;
	if (!uv_is_closing((uv_handle_t *)&w->async)) {
		/* worker_post() must not wake a closed handle. */
		uv_mutex_lock(&w->lock);
		w->exited = 1;
		uv_mutex_unlock(&w->lock);
		uv_close((uv_handle_t *)&w->async, NULL);
	}
	if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
		uv_close((uv_handle_t *)&w->drain_timer, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->accept_timer))
		uv_close((uv_handle_t *)&w->accept_timer, NULL);
	if (w->reserve_fd >= 0) {
		close(w->reserve_fd);
		w->reserve_fd = -1;
	}
}

void
worker_session_gone(struct worker *w)
{
	w->nsessions--;
	/* Its descriptors are free: there may be room to accept again. */
	worker_accept_resume(w);
	worker_maybe_exit(w);
}

static void
worker_drain_timeout_cb(uv_timer_t *t)
{
	struct worker		*w = t->data;
	struct smtp_session	*s, *next;

	log_warn("worker=%u drain timeout: closing %u sessions", w->idx,
	    w->nsessions);
	for (s = w->sessions; s != NULL; s = next) {
		next = smtp_session_next(s);
		smtp_session_shutdown(s, 1);
	}
}

/* Stops accepting and tells every session to finish. */
static void
worker_stop(struct worker *w)
{
	struct smtp_session	*s, *next;
	unsigned		 i;

	if (w->draining)
		return;
	w->draining = 1;
	uv_timer_stop(&w->accept_timer);
	for (i = 0; i < w->nlisteners; i++) {
		/* A poll handle leaves its descriptor to us. */
		uv_close((uv_handle_t *)&w->listeners[i], NULL);
		close(w->fds[i]);
	}
	for (s = w->sessions; s != NULL; s = next) {
		next = smtp_session_next(s);
		smtp_session_shutdown(s, 0);
	}
	if (w->nsessions > 0)
		uv_timer_start(&w->drain_timer, worker_drain_timeout_cb,
		    w->cfg->to_drain, 0);
	worker_maybe_exit(w);
}

static void
worker_async_cb(uv_async_t *a)
{
	struct worker	*w = a->data;
	struct config	*cfg;
	int		 stop;

	uv_mutex_lock(&w->lock);
	cfg = w->pending_cfg;
	w->pending_cfg = NULL;
	stop = w->stop_req;
	uv_mutex_unlock(&w->lock);
	if (cfg != NULL) {
		config_unref(w->cfg);
		w->cfg = cfg;
	}
	if (stop)
		worker_stop(w);
	/* A second signal: the drain ends now. */
	if (stop > 1 && w->nsessions > 0)
		uv_timer_start(&w->drain_timer, worker_drain_timeout_cb, 0, 0);
}

/*
 * The rate-limit store: a Redis connection of this worker's loop when the
 * config has redis:, else the process's in-process store.  A reload does
 * not change it.
 */
static void
worker_rl_open(struct worker *w)
{
	const struct config	*cfg = w->cfg;
	struct rl_redis_params	 p;
	char			 host[64], name[32];
	const struct sockaddr	*sa = (const struct sockaddr *)&cfg->redis_addr.ss;

	if (cfg->redis_addr.sslen == 0 && cfg->redis_socket == NULL) {
		w->rl = w->ctx->rl_mem;
		return;
	}
	p.path = cfg->redis_socket;
	p.port = 0;
	host[0] = '\0';
	if (p.path == NULL && sa->sa_family == AF_INET6) {
		uv_ip6_name((const struct sockaddr_in6 *)sa, host, sizeof(host));
		p.port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	} else if (p.path == NULL) {
		uv_ip4_name((const struct sockaddr_in *)sa, host, sizeof(host));
		p.port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
	}
	snprintf(name, sizeof(name), "worker %u", w->idx);
	p.host = host;
	p.password = cfg->redis_password[0] ? cfg->redis_password : NULL;
	p.db = (int)cfg->redis_db;
	p.prefix = cfg->redis_prefix;
	p.timeout_ms = cfg->redis_timeout;
	p.name = name;
	w->rl = rl_redis_new(&w->loop, &p);
	w->rl_own = 1;
}

static void
worker_main(void *arg)
{
	struct worker	*w = arg;
	unsigned	 i;
	int		 r;

	metrics_bind(w->ctx->metrics, w->idx);
	worker_rl_open(w);
	for (i = 0; i < w->nlisteners; i++) {
		w->bound[i] = w->cfg->listen[i].addr;
		if (listen(w->fds[i], 511) < 0)
			r = -errno;
		else if ((r = uv_poll_init(&w->loop, &w->listeners[i],
		    w->fds[i])) == 0)
			r = uv_poll_start(&w->listeners[i], UV_READABLE,
			    worker_accept_cb);
		if (r < 0)
			fatalx("worker=%u listen on %s: %s", w->idx,
			    w->cfg->listen[i].addr.text, uv_strerror(r));
		w->listeners[i].data = w;
	}
	uv_run(&w->loop, UV_RUN_DEFAULT);
	while (w->npool > 0)
		free(w->pool[--w->npool]);
	atomic_fetch_add(&w->ctx->ndone, 1);
	uv_async_send(&w->ctx->done_async);
}

int
worker_start(struct proxy_ctx *ctx, struct worker *w, unsigned idx)
{
	w->ctx = ctx;
	w->idx = idx;
	w->cfg = config_ref(ctx->cfg);
	if ((w->scratch = pattern_scratch_new()) == NULL ||
	    (w->tls_buf = malloc(TLSBUF_SIZE)) == NULL)
		return UV_ENOMEM;
	uv_loop_init(&w->loop);
	uv_mutex_init(&w->lock);
	uv_async_init(&w->loop, &w->async, worker_async_cb);
	w->async.data = w;
	uv_timer_init(&w->loop, &w->drain_timer);
	w->drain_timer.data = w;
	uv_timer_init(&w->loop, &w->accept_timer);
	w->accept_timer.data = w;
	w->reserve_fd = -1;
	worker_reserve_open(w);
	return uv_thread_create(&w->thread, worker_main, w);
}

void
worker_join(struct worker *w)
{
	uv_thread_join(&w->thread);
	uv_loop_close(&w->loop);
	uv_mutex_destroy(&w->lock);
	config_unref(w->cfg);
	config_unref(w->pending_cfg);
	pattern_scratch_free(w->scratch);
	free(w->tls_buf);
	free(w->rdns_cache);
}

void
worker_post(struct worker *w, struct config *cfg, int stop)
{
	uv_mutex_lock(&w->lock);
	if (cfg != NULL) {
		config_unref(w->pending_cfg);
		w->pending_cfg = config_ref(cfg);
	}
	if (stop > w->stop_req)
		w->stop_req = stop;
	if (!w->exited)
		uv_async_send(&w->async);
	uv_mutex_unlock(&w->lock);
}
