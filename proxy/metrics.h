/*
 * metrics.h: counters and histograms, and the Prometheus endpoint that
 * shows them (metrics: address:, served by libmicrohttpd).
 *
 * Every worker thread has a shard of its own: the counters it alone
 * writes, with plain relaxed stores (no lock, no atomic read-modify-write)
 * on cache lines no other thread writes.  A scrape runs on the HTTP
 * thread and sums the shards.  The hooks below take no shard argument: a
 * worker binds its shard to its thread once (metrics_bind()), and a hook
 * called from a thread that bound none (the main thread, --explain, the
 * unit tests of other modules) counts nothing.
 *
 * The counters exist whether or not the endpoint is configured; they cost
 * a few stores per event.  README.md, "Metrics", lists what is exported.
 */
#ifndef SMTPGATE_METRICS_H
#define SMTPGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct metrics;
struct metrics_http;
struct cfg_addr;

/* What a backend reply answers: the command= label of its latency. */
enum metrics_cmd {
	MX_CMD_MAIL,		/* MAIL FROM */
	MX_CMD_RCPT,		/* RCPT TO */
	MX_CMD_DATA,		/* DATA (its 354) */
	MX_CMD_DOT,		/* the end of the message data */
	MX_CMD_OTHER,		/* RSET, EXPN */
	MX_CMD__COUNT
};

/*
 * A registry for nworkers workers and the nlisteners listener addresses
 * (copied; the label listener= of the connection counters) of the
 * configuration the process started with.  Returns NULL when out of memory.
 */
struct metrics *metrics_new(unsigned nworkers, const char *const *listeners,
    unsigned nlisteners);

/* Frees the registry; no thread may use it any more.  NULL is ignored. */
void metrics_free(struct metrics *m);

/* The calling thread writes worker's shard from now on (or, with m NULL,
 * none: its hooks count nothing). */
void metrics_bind(struct metrics *m, unsigned worker);

/* ---- Hooks: from a worker's thread ------------------------------------- */

/* A connection was accepted on listener idx (config order) / has ended. */
void metrics_conn_open(unsigned idx);
void metrics_conn_close(unsigned idx);

/*
 * A transaction (from the MAIL forwarded to the backend) ended: status is
 * the reply code its message data got (or a refused MAIL), 0 when it got
 * none (RSET, a new EHLO, the client gone, the session closed).
 */
void metrics_tx_end(int status);

/* A reply of class cls (2 for 2xx ...) was queued for a client. */
void metrics_reply(int cls);

/* n bytes of message data were written to the backend. */
void metrics_data_bytes(uint64_t n);

/*
 * Backend latencies; t0 is uv_hrtime() when the wait began.  connect: a
 * TCP connection to a backend server is up; ready: the server took the
 * session set-up (greeting, EHLO, STARTTLS, XCLIENT) since its connect
 * began; reply: a reply to command cmd arrived.
 */
void metrics_be_connect(uint64_t t0);
void metrics_be_ready(uint64_t t0);
void metrics_be_reply(enum metrics_cmd cmd, uint64_t t0);

/* A backend connection failed for good (why: an enum be_fail). */
void metrics_be_fail(int why);

/*
 * Filter filter decided verdict (an enum flt_verdict: accept, reject,
 * tempfail or refuse; FLT_CONTINUE stands for a warn rule that matched)
 * with rule rule (NULL: none).  FLT_PENDING is ignored.
 */
void metrics_verdict(const char *filter, const char *rule, int verdict);

/* The Redis store answered a rate-limit check with status (an enum
 * rl_status); RL_ERROR counts as an error. */
void metrics_redis_answer(int status);

/* ... one of those errors was a request timing out. */
void metrics_redis_timeout(void);

/* ---- The main thread --------------------------------------------------- */

/* A SIGHUP reload succeeded (ok) or was refused. */
void metrics_reloaded(struct metrics *m, int ok);

/*
 * The Prometheus text format (version 0.0.4) of every metric, summed over
 * the shards.  Returns a malloc'd text (its length in *len) that the
 * caller frees, or NULL when out of memory.  Safe from any thread.
 */
char *metrics_render(struct metrics *m, size_t *len);

/*
 * Serves GET /metrics on addr from a thread of libmicrohttpd's.  Returns
 * the endpoint, or NULL with the reason in err (errsize bytes) when the
 * address cannot be bound or the thread not started.
 */
struct metrics_http *metrics_http_start(struct metrics *m,
    const struct cfg_addr *addr, char *err, size_t errsize);

/* Stops serving and closes the socket.  NULL is ignored. */
void metrics_http_stop(struct metrics_http *h);

#endif /* SMTPGATE_METRICS_H */
