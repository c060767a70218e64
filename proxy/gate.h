/*
 * gate.h: the process and its worker threads.
 *
 * The main thread owns the configuration and the signals; each worker owns
 * one libuv loop, its listening sockets (SO_REUSEPORT, one set per worker)
 * and the sessions it accepted.  The main thread talks to a worker only
 * through worker->lock and worker->async.
 */
#ifndef SMTPGATE_GATE_H
#define SMTPGATE_GATE_H

#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

#define WORKER_MAX	64
#define IOBUF_SIZE	(32 * 1024)	/* a session's input buffer */
#define IOBUF_POOL	64		/* idle buffers a worker keeps */
#define TLSBUF_SIZE	(64 * 1024)	/* a worker's TLS scratch buffer */

struct smtp_session;
struct pattern_scratch;
struct rl_store;
struct client_table;
struct metrics;
struct metrics_http;

struct proxy_ctx {
	const char		*config_path;	/* -c FILE */
	struct config		*cfg;		/* main thread's current config */
	struct worker		*workers;	/* nworkers of them */
	unsigned		 nworkers;
	atomic_uint		 nconns;	/* client connections, all workers */
	atomic_uint_fast64_t	 ntx;		/* transactions relayed, all workers */
	struct rl_store		*rl_mem;	/* the in-process rate-limit store,
						 * shared (used without redis:) */
	struct client_table	*clients;	/* connections per client address */
	int			 fd_limit;	/* RLIMIT_NOFILE once raised (0:
						 * none): see worker.c */
	struct metrics		*metrics;	/* every worker's counters */
	struct metrics_http	*metrics_http;	/* the endpoint (metrics:), or
						 * NULL */
	struct cfg_addr		 metrics_addr;	/* ... its address, from the
						 * config the process started
						 * with (sslen 0: none) */
	uv_async_t		 done_async;	/* worker -> main: a worker ended */
	atomic_uint		 ndone;		/* workers that ended */
};

struct worker {
	struct proxy_ctx	*ctx;		/* the process */
	unsigned		 idx;		/* 0..nworkers-1, in session ids */
	uv_loop_t		 loop;		/* this thread's loop */
	uv_thread_t		 thread;	/* the thread */
	uv_async_t		 async;		/* main -> worker wake-up */
	uv_mutex_t		 lock;		/* guards the two fields below */
	struct config		*pending_cfg;	/* reload: new config, or NULL */
	int			 stop_req;	/* 1: drain, 2: drain now (again) */
	int			 exited;	/* the async handle is closed */
	struct config		*cfg;		/* config new sessions start with */
	uv_os_sock_t		 fds[CFG_MAX_LISTEN];	/* bound sockets, by main */
	uv_poll_t		 listeners[CFG_MAX_LISTEN];	/* readiness
						 * of fds[]: we accept(2)
						 * ourselves, to answer and
						 * pause when out of file
						 * descriptors */
	struct cfg_addr		 bound[CFG_MAX_LISTEN];	/* each listener's
						 * address, from the config the
						 * worker started with */
	unsigned		 nlisteners;
	uv_timer_t		 drain_timer;	/* shutdown: drain deadline */
	uv_timer_t		 accept_timer;	/* ends a pause in accepting */
	int			 accept_paused;	/* listeners stopped: out of
						 * file descriptors */
	int			 fd_short;	/* the last one was refused */
	int			 reserve_fd;	/* /dev/null, kept open to be
						 * closed when out of file
						 * descriptors, or -1 */
	int			 draining;	/* shutdown in progress */
	struct smtp_session	*sessions;	/* every open session */
	unsigned		 nsessions;
	uint64_t		 next_id;	/* session counter */
	struct pattern_scratch	*scratch;	/* PCRE2 match data of this thread */
	struct rl_store		*rl;		/* rate-limit store: this worker's
						 * Redis connection, or the shared
						 * in-process store */
	int			 rl_own;	/* rl is ours (Redis): free it */
	char			*tls_buf;	/* TLSBUF_SIZE bytes: ciphertext on
						 * its way in or out, used within
						 * one callback only */
	char			*pool[IOBUF_POOL];	/* free input buffers */
	unsigned		 npool;
	struct rdns_entry	*rdns_cache;	/* reverse lookups' answers
						 * (smtp_session.c), made at
						 * the first one; or NULL */
};

/* Takes an IOBUF_SIZE buffer from the worker's pool; NULL if out of memory. */
char *worker_buf_get(struct worker *w);

/* Gives a buffer back to the pool (or frees it when the pool is full). */
void worker_buf_put(struct worker *w, char *buf);

/* A session has ended; the worker stops when draining and none are left. */
void worker_session_gone(struct worker *w);

/*
 * Sets up worker idx (loop, async, its reference to ctx->cfg) and starts
 * its thread; w->fds and w->nlisteners must be filled.  Returns 0 or a
 * UV_E* code.
 */
int worker_start(struct proxy_ctx *ctx, struct worker *w, unsigned idx);

/* Waits for the thread to end and frees what the worker holds. */
void worker_join(struct worker *w);

/*
 * From the main thread: hands the worker a new config (it takes its own
 * reference) and/or asks it to stop: stop 1 drains (idle sessions get
 * 421, transactions in flight finish within timeouts.drain), stop 2 ends
 * the drain at once.
 */
void worker_post(struct worker *w, struct config *cfg, int stop);

#endif /* SMTPGATE_GATE_H */
