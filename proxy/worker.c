/*
 * worker.c: a worker thread: one loop, its listeners, its sessions.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "ratelimit.h"
#include "smtp_session.h"

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

static void
worker_on_conn(uv_stream_t *listener, int status)
{
	struct worker *w = listener->data;

	if (status < 0) {
		log_warn("worker=%u accept: %s", w->idx, uv_strerror(status));
		return;
	}
	smtp_session_accept(w, listener);
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
}

void
worker_session_gone(struct worker *w)
{
	w->nsessions--;
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
	for (i = 0; i < w->nlisteners; i++)
		uv_close((uv_handle_t *)&w->listeners[i], NULL);
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

	if (cfg->redis_addr.sslen == 0) {
		w->rl = w->ctx->rl_mem;
		return;
	}
	if (sa->sa_family == AF_INET6) {
		uv_ip6_name((const struct sockaddr_in6 *)sa, host, sizeof(host));
		p.port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	} else {
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
		uv_tcp_init(&w->loop, &w->listeners[i]);
		w->listeners[i].data = w;
		w->bound[i] = w->cfg->listen[i].addr;
		if ((r = uv_tcp_open(&w->listeners[i], w->fds[i])) < 0 ||
		    (r = uv_listen((uv_stream_t *)&w->listeners[i], 511,
		    worker_on_conn)) < 0)
			fatalx("worker=%u listen on %s: %s", w->idx,
			    w->cfg->listen[i].addr.text, uv_strerror(r));
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
