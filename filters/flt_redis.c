/*
 * flt_redis.c: the Redis rate-limit store, and the seam between hiredis
 * and libuv (the only file that includes hiredis).
 *
 * One store per worker loop holds one hiredis async connection.  A check
 * (one rl_check(), a request) is decided by the GCRA script below over all
 * its keys, so the keys are read and written atomically with the server's
 * clock.  The requests made in one loop iteration go out together, as one
 * EVALSHA (a batch), when the loop writes: one round trip for each of
 * them still, and the server's fixed cost of a script call (the call, its
 * clock, the keys read once and written once) is paid once for all.
 *
 * Lifetimes.  A request belongs to a batch (struct fr_batch).  The open
 * batch is the store's until the loop writes it (fr_ev_flush_cb); from
 * the moment it is handed to redisAsyncFormattedCommand() it is owned by
 * hiredis until hiredis calls fr_reply_cb() for it: with the reply, or
 * with NULL when the connection is freed (hiredis runs every pending
 * callback then).  fr_reply_cb() always frees the batch and its requests,
 * unless it resends the batch (NOSCRIPT).  An open batch is answered
 * RL_ERROR and freed when the connection goes down or the store closes.
 * Independently, each request sits in the store's list of unanswered
 * requests until done is called: by the reply, by the timeout, or by the
 * loss of the connection.  A request that timed out stays in its batch
 * (marked FR_REQ_ANSWERED) and its late answer is dropped.
 *
 * hiredis 0.14 has no command timeout, hence the store's own deadline
 * timer; requests share one timeout and are answered in order, so the
 * oldest unanswered one always has the nearest deadline.  The timer is
 * lazy: it is started when a request comes and none is running, and not
 * touched when requests are answered; when it fires it answers what is
 * due and is started again for the oldest request left, if any.  While
 * requests are unanswered it is thus always due at or before the oldest
 * one's deadline, so each is answered RL_ERROR within the timeout (as
 * exactly as libuv's timers go), at the cost of a wake-up per timeout at
 * most instead of a timer restart per request.
 *
 * The work per check is kept small, as a check is made at every stage of
 * every message that has a limit: a request's keys and numbers are
 * written in the Redis protocol (RESP) once, when it is made, and a batch
 * is written by putting a header before them (fr_format()) and handing
 * the lot to hiredis as one preformatted command.
 *
 * The event hooks (fr_ev_*) follow hiredis's adapters/libuv.h, with one
 * fix: the 0.14 adapter ignores a uv_poll error (libuv reports POLLERR,
 * as from a refused connect or a reset, as UV_EBADF and stops the
 * handle), so hiredis never learns of it and the connection hangs.
 *
 * hiredis 0.14 runs the connect and disconnect callbacks outside of its
 * REDIS_IN_CALLBACK protection, and frees the context right after them:
 * redisAsyncFree() must never be called from those two, and a context is
 * only freed here from our own timers or from a reply callback (where
 * hiredis defers the free until the callback returns).  rl_store_free()
 * itself only marks the store and starts a zero timer, so it is safe from
 * anywhere, done callbacks included; the memory goes after the last
 * close_cb.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "log.h"
#include "metrics.h"
#include "rl_store.h"

#define FR_BACKOFF_MIN	100	/* ms before the first reconnection */
#define FR_BACKOFF_MAX	5000	/* ms between reconnections, at most */
#define FR_CONNECT_MS	1000	/* connect and handshake, at least (ms) */
#define FR_STALL	3	/* consecutive timeouts that drop the link */
#define FR_SPAN_MAX	(UINT64_C(1) << 48)	/* the largest W and c * T
						 * (µs, 8.9 years), as in
						 * rl_mem.c */
/* The RESP of one number argument, at most: "$20\r\n", 20 digits, CRLF. */
#define FR_RESP_NUM	(5 + 20 + 2)
/* The RESP of one key argument's framing, at most: "$" 5 digits CRLF,
 * then CRLF after the key. */
#define FR_RESP_KEY	(1 + 5 + 2 + 2)

/*
 * The GCRA of rl_gcra() for a batch of checks: every check made in one
 * loop iteration goes out in one EVALSHA.  KEYS: the keys of the first
 * request, then of the second, and so on.  ARGV, per request: its number
 * of checks n, then 3 per check: the increment c * T, the window W (both
 * in microseconds, at most 2^48) and "1" when forced.  The requests are
 * decided in order, each as if it ran alone after the one before: either
 * all its checks pass and all are counted, or none but the forced ones
 * is.  Returns one integer per request: 0 when it passed, or
 * 32 * retry_ms + i + 1 when its check i (0-based) is the first over its
 * limit, retry_ms being when check i would pass (for a forced one, once
 * counted).  A forced check over its own limit is denied too, as
 * rl_gcra() says and the in-process store does.  A key may appear more
 * than once (within a request or across them): each check sees the ones
 * before.  Each key is read once (GET) and written once at the end (SET
 * with a time to live of TAT - now), whatever the number of checks on it.
 * A batch of one request of one check, the common case when the load is
 * light, takes a short path without tables or closures (the same
 * arithmetic), and its answer is that integer alone, not in an array.
 *
 * Lua numbers are doubles: every value here stays an integer below 2^53
 * (now is about 2^50.6 until 2041; a TAT is kept below now + 2^50, so
 * 32 * retry_ms stays below 2^46), so the arithmetic is exact.  The TAT
 * and the time to live (in milliseconds, below 2^40) are written with
 * string.format('%d'), which goes through a C long: exact where that has
 * 64 bits, as the script checks; elsewhere with '%.0f', exact too but a
 * few times as costly (tostring() would give "1.7e+15").  The closures
 * of the path for requests of several checks are made only when a batch
 * has one.
 */
static const char fr_script[] =
"local t = redis.call('TIME')\n"
"local now = t[1] * 1000000 + t[2]\n"
"local cap = now + 1125899906842624\n"
"local na = #ARGV\n"
"if na == 4 then\n"
"  local k = KEYS[1]\n"
"  local o = tonumber(redis.call('GET', k)) or 0\n"
"  if o > cap then o = cap end\n"
"  local inc = tonumber(ARGV[2])\n"
"  local w = tonumber(ARGV[3])\n"
"  local nt = (o > now and o or now) + inc\n"
"  local over = nt - now - w\n"
"  if over > 0 and ARGV[4] ~= '1' then\n"
"    return 32 * math.ceil(over / 1000) + 1\n"
"  end\n"
"  if nt > cap then nt = cap end\n"
"  if nt ~= o and nt > now then\n"
"    local fmt = string.format('%d', 4294967296) == '4294967296' and '%d' or '%.0f'\n"
"    redis.call('SET', k, string.format(fmt, nt), 'PX',\n"
"        string.format(fmt, math.ceil((nt - now) / 1000)))\n"
"  end\n"
"  if over <= 0 then return 0 end\n"
"  local r = nt + inc - now - w\n"
"  if r < 0 then r = 0 end\n"
"  return 32 * math.ceil(r / 1000) + 1\n"
"end\n"
"local tat, old, res = {}, {}, {}\n"
"local get, run\n"
"local a, ki, ri = 1, 0, 0\n"
"while a <= na do\n"
"  local n = tonumber(ARGV[a])\n"
"  ri = ri + 1\n"
"  if n == 1 then\n"
"    ki = ki + 1\n"
"    local k = KEYS[ki]\n"
"    local o = tat[k]\n"
"    if o == nil then\n"
"      o = tonumber(redis.call('GET', k)) or 0\n"
"      if o > cap then o = cap end\n"
"      tat[k] = o\n"
"      old[k] = o\n"
"    end\n"
"    local inc = tonumber(ARGV[a + 1])\n"
"    local nt = (o > now and o or now) + inc\n"
"    local over = nt - now - ARGV[a + 2]\n"
"    if over > 0 and ARGV[a + 3] ~= '1' then\n"
"      res[ri] = 32 * math.ceil(over / 1000) + 1\n"
"    else\n"
"      if nt > cap then nt = cap end\n"
"      tat[k] = nt\n"
"      if over <= 0 then\n"
"        res[ri] = 0\n"
"      else\n"
"        local r = nt + inc - now - ARGV[a + 2]\n"
"        if r < 0 then r = 0 end\n"
"        res[ri] = 32 * math.ceil(r / 1000) + 1\n"
"      end\n"
"    end\n"
"    a = a + 4\n"
"  else\n"
"    if not run then\n"
"      get = function(k)\n"
"        local v = tat[k]\n"
"        if v == nil then\n"
"          v = tonumber(redis.call('GET', k)) or 0\n"
"          if v > cap then v = cap end\n"
"          tat[k] = v\n"
"          old[k] = v\n"
"        end\n"
"        return v\n"
"      end\n"
"      run = function(all, ki, a, n)\n"
"        local tmp = {}\n"
"        for i = 1, n do\n"
"          local k = KEYS[ki + i]\n"
"          local inc = tonumber(ARGV[a + 3 * i - 2])\n"
"          local force = ARGV[a + 3 * i] == '1'\n"
"          if all or force then\n"
"            local cur = tmp[k] or get(k)\n"
"            local nt = (cur > now and cur or now) + inc\n"
"            local over = nt - now - ARGV[a + 3 * i - 1]\n"
"            if all and over > 0 then\n"
"              if force then over = -1 end\n"
"              return nil, i, over\n"
"            end\n"
"            if nt > cap then nt = cap end\n"
"            tmp[k] = nt\n"
"          end\n"
"        end\n"
"        return tmp\n"
"      end\n"
"    end\n"
"    local tmp, i, retry = run(true, ki, a, n)\n"
"    if tmp then\n"
"      res[ri] = 0\n"
"    else\n"
"      tmp = run(false, ki, a, n)\n"
"    end\n"
"    for k, v in pairs(tmp) do tat[k] = v end\n"
"    if i then\n"
"      if retry < 0 then\n"
"        retry = math.max(tat[KEYS[ki + i]], now) +\n"
"            ARGV[a + 3 * i - 2] - now - ARGV[a + 3 * i - 1]\n"
"        if retry < 0 then retry = 0 end\n"
"      end\n"
"      res[ri] = 32 * math.ceil(retry / 1000) + i\n"
"    end\n"
"    ki = ki + n\n"
"    a = a + 1 + 3 * n\n"
"  end\n"
"end\n"
"local fmt = string.format('%d', 4294967296) == '4294967296' and '%d' or '%.0f'\n"
"for k, v in pairs(tat) do\n"
"  if v ~= old[k] and v > now then\n"
"    redis.call('SET', k, string.format(fmt, v), 'PX',\n"
"        string.format(fmt, math.ceil((v - now) / 1000)))\n"
"  end\n"
"end\n"
"return res\n";

enum fr_state {
	FR_DOWN,	/* no connection; the retry timer will make one */
	FR_CONNECTING,	/* TCP connect, AUTH, SELECT, SCRIPT LOAD */
	FR_READY	/* checks are sent */
};

#define FR_REQ_ANSWERED	0x01	/* done was called; a late reply is dropped */

/* One rl_check() in flight. */
struct fr_req {
	struct flt_redis	*st;		/* the store */
	struct fr_req		*prev, *next;	/* in st's unanswered list */
	struct fr_req		*bnext;		/* the next of its batch */
	rl_done_fn		 done;		/* the caller's callback ... */
	void			*arg;		/* ... and its argument */
	uint64_t		 deadline;	/* uv_now() when it times out */
	int			 flags;		/* FR_REQ_* */
	size_t			 n;		/* checks in it */
	size_t			 keyslen;	/* the keys' RESP: buf[0..keyslen) */
	size_t			 numslen;	/* the numbers' RESP, right after */
	char			 buf[];		/* the prefixed keys, then the
						 * numbers (n, then 3 per check),
						 * each as a RESP bulk string */
};

#define FR_BATCH_RESENT	0x01	/* sent again as EVAL after NOSCRIPT */

/*
 * The requests of one loop iteration, in one EVALSHA.  Open (st->open)
 * until the loop writes it; then owned by hiredis until fr_reply_cb(),
 * which frees it and its requests.
 */
struct fr_batch {
	struct flt_redis	*st;		/* the store */
	struct fr_req		*first, *last;	/* its requests, in order */
	size_t			 nreq;		/* requests in it */
	size_t			 nkeys;		/* keys over all of them */
	size_t			 nnums;		/* numbers over all of them */
	int			 flags;		/* FR_BATCH_* */
};

#define FR_NCACHE_BITS	3
#define FR_NCACHE	(1 << FR_NCACHE_BITS)	/* numbers kept in RESP */

/* A number written in RESP, kept: the same windows and increments come
 * back check after check. */
struct fr_num {
	uint64_t		 v;		/* the number */
	size_t			 len;		/* resp's length; 0: empty slot */
	char			 resp[FR_RESP_NUM];	/* "$len\r\ndigits\r\n" */
};

struct flt_redis {
	struct rl_store		 base;		/* first: what rl_check() sees */
	uv_loop_t		*loop;		/* the worker's loop */
	char			*host;		/* params->host, copied */
	int			 port;		/* params->port */
	char			*path;		/* params->path, copied, or NULL */
	char			*where;		/* for logs: "host:port" or
					 * "unix:path" */
	char			*password;	/* params->password, or NULL */
	int			 db;		/* params->db */
	char			*prefix;	/* params->prefix, or "" */
	size_t			 prefixlen;	/* its length */
	unsigned		 timeout_ms;	/* params->timeout_ms, at least 1 */
	char			*name;		/* params->name, for logs */

	redisAsyncContext	*ac;		/* the connection, or NULL; set
						 * to NULL before it is freed, so
						 * callbacks of an old one are
						 * told apart */
	enum fr_state		 state;		/* see above */
	int			 closing;	/* rl_store_free() was called */
	int			 handles;	/* timers not closed yet */
	uv_timer_t		 retry;		/* the reconnection; then the
						 * deferred close */
	uv_timer_t		 deadline;	/* timeouts: the handshake's,
						 * then the oldest request's */
	uint64_t		 hs_deadline;	/* FR_CONNECTING: uv_now() limit */
	unsigned		 backoff_ms;	/* delay of the next retry */
	unsigned		 stalls;	/* timeouts since the last reply */
	int			 down;		/* in an outage (logged once) */
	uint64_t		 down_since;	/* uv_now() when it began */
	int			 err_logged;	/* an error reply was logged since
						 * the last good one */
	char			 sha[41];	/* the script's SHA1, hex */
	struct fr_req		*head, *tail;	/* unanswered, oldest first */
	struct fr_batch		*open;		/* the requests not written yet,
						 * or NULL */
	char			*cmd;		/* the batch being written, as
						 * RESP (hiredis copies it) */
	size_t			 cmdsize;	/* cmd's size */
	size_t			 evalsha_len;	/* cmd's "*" line excluded, the
						 * length of the EVALSHA and SHA
						 * arguments' RESP (once
						 * loaded) */
	char			 evalsha[64];	/* that RESP */
	struct fr_num		 ncache[FR_NCACHE];	/* numbers in RESP, by
						 * a hash of their value */
};

/* hiredis's event hooks on one connection's socket. */
struct fr_ev {
	redisAsyncContext	*ac;		/* NULL once hiredis cleaned up */
	uv_poll_t		 poll;		/* on ac's socket */
	uv_check_t		 flush;		/* writes what commands queued, once
					 * per loop iteration */
	int			 events;	/* UV_READABLE, UV_WRITABLE wanted */
	int			 flushing;	/* inside fr_ev_flush_cb() */
	int			 want_write;	/* hiredis asked for write within
					 * fr_ev_flush_cb() and has not
					 * withdrawn it */
	int			 nopen;		/* handles not yet closed */
};

static int	fr_check(struct rl_store *, const struct rl_check *, size_t,
		    struct rl_result *, rl_done_fn, void *);
static void	fr_free(struct rl_store *);
static void	fr_deadline_cb(uv_timer_t *);
static void	fr_retry_cb(uv_timer_t *);
static int	fr_send(redisAsyncContext *, struct fr_batch *, int);
static void	fr_batch_flush(struct flt_redis *);
static void	fr_batch_fail(struct flt_redis *);

static const struct rl_store_ops fr_ops = { fr_check, fr_free };

static const struct rl_result fr_error = { RL_ERROR, 0, 0 };

/* Returns a copy of s; aborts when out of memory. */
static char *
fr_xstrdup(const char *s)
{
	char *p;

	if ((p = strdup(s)) == NULL)
		fatalx("%s: out of memory", __func__);
	return p;
}

static const char *
fr_name(const struct flt_redis *st)
{
	return st->name != NULL ? st->name : "-";
}

static void
fr_ev_poll_cb(uv_poll_t *h, int status, int events)
{
	struct fr_ev *ev = h->data;

	/* An error: let hiredis find it (SO_ERROR, or a failing read). */
	if (status < 0)
		events = ev->events;
	if (ev->ac != NULL && (events & UV_READABLE))
		redisAsyncHandleRead(ev->ac);
	/* The read may have freed the context (then ev->ac is NULL). */
	if (ev->ac != NULL && (events & UV_WRITABLE))
		redisAsyncHandleWrite(ev->ac);
}

static void
fr_ev_update(struct fr_ev *ev, int add, int del)
{
	int events = (ev->events | add) & ~del;

	/*
	 * hiredis asks for read after every read and for write with every
	 * command; each uv_poll_start() is an epoll_ctl() in libuv, so only
	 * a change is passed on.
	 */
	if (events == ev->events)
		return;
	ev->events = events;
	if (ev->events != 0)
		uv_poll_start(&ev->poll, ev->events, fr_ev_poll_cb);
	else
		uv_poll_stop(&ev->poll);
}

static void
fr_ev_add_read(void *p)
{
	fr_ev_update(p, UV_READABLE, 0);
}

static void
fr_ev_del_read(void *p)
{
	fr_ev_update(p, 0, UV_READABLE);
}

/*
 * Writes the checks of this loop iteration (the store's open batch, as one
 * command) and whatever else hiredis queued, in one go, from the loop
 * (never from within rl_check(), so errors are reported from the loop
 * too).  Only what the kernel would not take waits for writability.
 */
static void
fr_ev_flush_cb(uv_check_t *h)
{
	struct fr_ev *ev = h->data;

	uv_check_stop(h);
	if (ev->ac == NULL)
		return;
	ev->flushing = 1;
	ev->want_write = 0;
	fr_batch_flush(ev->ac->data);
	/* A failed batch may have let go of the connection. */
	if (ev->ac != NULL)
		redisAsyncHandleWrite(ev->ac);
	ev->flushing = 0;
	/*
	 * Only what the kernel did not take waits for writability.  Every
	 * uv_poll_start() is an epoll_ctl() at once (and one more at the
	 * next poll), so the write event is not set and withdrawn around a
	 * write that went through.
	 */
	if (ev->ac != NULL && ev->want_write)
		fr_ev_update(ev, UV_WRITABLE, 0);
}

/* Makes sure fr_ev_flush_cb() runs in this loop iteration (the open batch
 * is written there). */
static void
fr_ev_want_flush(redisAsyncContext *ac)
{
	struct fr_ev *ev = ac->ev.data;

	if (!ev->flushing && !uv_is_active((uv_handle_t *)&ev->flush))
		uv_check_start(&ev->flush, fr_ev_flush_cb);
}

static void
fr_ev_add_write(void *p)
{
	struct fr_ev *ev = p;

	/*
	 * hiredis asks for write with every command.  Connected, the write
	 * waits for the end of this iteration (no epoll_ctl); still
	 * unwritten after a flush, or while connecting, for writability.
	 */
	if (ev->ac != NULL && (ev->ac->c.flags & REDIS_CONNECTED)) {
		if (ev->flushing)
			ev->want_write = 1;	/* decided on after the write */
		else if (!uv_is_active((uv_handle_t *)&ev->flush))
			uv_check_start(&ev->flush, fr_ev_flush_cb);
		return;
	}
	fr_ev_update(ev, UV_WRITABLE, 0);
}

static void
fr_ev_del_write(void *p)
{
	struct fr_ev *ev = p;

	ev->want_write = 0;
	uv_check_stop(&ev->flush);
	fr_ev_update(ev, 0, UV_WRITABLE);
}

static void
fr_ev_closed_cb(uv_handle_t *h)
{
	struct fr_ev *ev = h->data;

	if (--ev->nopen == 0)
		free(ev);
}

/* hiredis is freeing the context: the handles go, ev after their
 * close_cb. */
static void
fr_ev_cleanup(void *p)
{
	struct fr_ev *ev = p;

	ev->ac = NULL;
	uv_close((uv_handle_t *)&ev->poll, fr_ev_closed_cb);
	uv_close((uv_handle_t *)&ev->flush, fr_ev_closed_cb);
}

/* Hooks ac to loop.  Returns 0, or -1 (then nothing is left to free). */
static int
fr_ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
	struct fr_ev *ev;

	if ((ev = calloc(1, sizeof(*ev))) == NULL)
		return -1;
	if (uv_poll_init(loop, &ev->poll, ac->c.fd) != 0) {
		free(ev);
		return -1;
	}
	uv_check_init(loop, &ev->flush);
	ev->poll.data = ev;
	ev->flush.data = ev;
	ev->nopen = 2;
	ev->ac = ac;
	ac->ev.data = ev;
	ac->ev.addRead = fr_ev_add_read;
	ac->ev.delRead = fr_ev_del_read;
	ac->ev.addWrite = fr_ev_add_write;
	ac->ev.delWrite = fr_ev_del_write;
	ac->ev.cleanup = fr_ev_cleanup;
	return 0;
}

/* (Re)starts the deadline timer for what is pending now, or stops it. */
static void
fr_arm(struct flt_redis *st)
{
	uint64_t when, now;

	if (st->closing)
		return;
	if (st->state == FR_CONNECTING)
		when = st->hs_deadline;
	else if (st->head != NULL)
		when = st->head->deadline;
	else {
		uv_timer_stop(&st->deadline);
		return;
	}
	now = uv_now(st->loop);
	uv_timer_start(&st->deadline, fr_deadline_cb,
	    when > now ? when - now : 0, 0);
}

/*
 * Takes req off the unanswered list and calls its done with res.  The
 * request itself stays with hiredis (fr_reply_cb frees it).  done may call
 * rl_check() or rl_store_free(): neither frees anything under our feet.
 */
static void
fr_answer(struct fr_req *req, const struct rl_result *res)
{
	struct flt_redis *st = req->st;

	if (req->prev != NULL)
		req->prev->next = req->next;
	else
		st->head = req->next;
	if (req->next != NULL)
		req->next->prev = req->prev;
	else
		st->tail = req->prev;
	req->prev = req->next = NULL;
	req->flags |= FR_REQ_ANSWERED;
	metrics_redis_answer(res->status);

	if (res->status == RL_DENY)
		st->base.stats.denied++;
	else if (res->status == RL_ERROR)
		st->base.stats.errors++;
	/* The deadline timer is left as it is (see the top of the file). */
	req->done(req->arg, res);
}

/*
 * The connection failed or was dropped: counts and logs the outage when
 * it starts (once), and schedules the next attempt with backoff.  The
 * caller has already let go of st->ac.
 */
static void
fr_down(struct flt_redis *st, const char *why)
{
	st->state = FR_DOWN;
	st->stalls = 0;
	if (!st->down) {
		st->down = 1;
		st->down_since = uv_now(st->loop);
		st->base.stats.outages++;
		log_warn("ratelimit store=%s redis=%s unavailable: %s",
		    fr_name(st), st->where, why);
	} else
		log_debug("ratelimit store=%s redis=%s still unavailable: "
		    "%s (retry in %u ms)", fr_name(st), st->where,
		    why, st->backoff_ms);
	/* The retry timer carries the close, if closing. */
	if (!st->closing) {
		uv_timer_start(&st->retry, fr_retry_cb, st->backoff_ms, 0);
		st->backoff_ms = st->backoff_ms * 2 > FR_BACKOFF_MAX ?
		    FR_BACKOFF_MAX : st->backoff_ms * 2;
	}
	/* Last: the answers may call rl_check() or rl_store_free(). */
	fr_batch_fail(st);
	fr_arm(st);
}

/*
 * Lets go of the connection and frees it: hiredis then calls every
 * pending reply callback with NULL, which answers the unanswered requests
 * RL_ERROR.  Not from hiredis's connect or disconnect callbacks (see the
 * top of the file); from a reply callback, hiredis frees it on return.
 */
static void
fr_drop(struct flt_redis *st, const char *why)
{
	redisAsyncContext *ac = st->ac;

	st->ac = NULL;
	fr_down(st, why);
	if (ac != NULL)
		redisAsyncFree(ac);
}

/* The handshake is over: checks may flow. */
static void
fr_ready(struct flt_redis *st)
{
	st->state = FR_READY;
	st->backoff_ms = FR_BACKOFF_MIN;
	st->stalls = 0;
	if (st->down) {
		st->down = 0;
		log_info("ratelimit store=%s redis=%s available again "
		    "after %llu ms", fr_name(st), st->where,
		    (unsigned long long)(uv_now(st->loop) - st->down_since));
	} else
		log_debug("ratelimit store=%s redis=%s connected",
		    fr_name(st), st->where);
	fr_arm(st);
}

/* Replies to AUTH and SELECT (privdata: the command's name, for logs). */
static void
fr_setup_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	struct flt_redis *st = ac->data;
	redisReply *reply = r;
	char why[160];

	if (st->ac != ac || reply == NULL)
		return;		/* dropped or lost: already handled */
	if (reply->type == REDIS_REPLY_ERROR) {
		snprintf(why, sizeof(why), "%s: %s", (const char *)privdata,
		    reply->str);
		fr_drop(st, why);
	}
}

/* Reply to SCRIPT LOAD: the last step of the handshake. */
static void
fr_load_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	struct flt_redis *st = ac->data;
	redisReply *reply = r;
	char why[160];

	(void)privdata;
	if (st->ac != ac || reply == NULL)
		return;
	if (reply->type != REDIS_REPLY_STRING ||
	    reply->len != sizeof(st->sha) - 1) {
		snprintf(why, sizeof(why), "SCRIPT LOAD: %s",
		    reply->type == REDIS_REPLY_ERROR ? reply->str :
		    "unexpected reply");
		fr_drop(st, why);
		return;
	}
	memcpy(st->sha, reply->str, sizeof(st->sha) - 1);
	st->sha[sizeof(st->sha) - 1] = '\0';
	st->evalsha_len = (size_t)snprintf(st->evalsha, sizeof(st->evalsha),
	    "$7\r\nEVALSHA\r\n$40\r\n%s\r\n", st->sha);
	fr_ready(st);
}

/*
 * hiredis's connect callback.  On failure hiredis frees the context as
 * soon as this returns (no disconnect callback follows).
 */
static void
fr_connect_cb(const redisAsyncContext *cac, int status)
{
	redisAsyncContext *ac = (redisAsyncContext *)cac;
	struct flt_redis *st = ac->data;
	const char *argv[3];
	size_t argvlen[3];
	char dbstr[16];
	int r = REDIS_OK;

	if (st->ac != ac)
		return;
	if (status != REDIS_OK) {
		st->ac = NULL;
		/* Not copied into ac->errstr yet at this point. */
		fr_down(st, ac->c.errstr[0] != '\0' ? ac->c.errstr :
		    "connect failed");
		return;
	}

	/*
	 * Pipelined.  A failure to queue (out of memory) is left to the
	 * handshake timeout: the context cannot be freed from here.
	 */
	if (st->password != NULL) {
		argv[0] = "AUTH";
		argv[1] = st->password;
		argvlen[0] = 4;
		argvlen[1] = strlen(st->password);
		r |= redisAsyncCommandArgv(ac, fr_setup_cb, "AUTH", 2, argv,
		    argvlen);
	}
	if (st->db != 0) {
		snprintf(dbstr, sizeof(dbstr), "%d", st->db);
		argv[0] = "SELECT";
		argv[1] = dbstr;
		argvlen[0] = 6;
		argvlen[1] = strlen(dbstr);
		r |= redisAsyncCommandArgv(ac, fr_setup_cb, "SELECT", 2, argv,
		    argvlen);
	}
	argv[0] = "SCRIPT";
	argv[1] = "LOAD";
	argv[2] = fr_script;
	argvlen[0] = 6;
	argvlen[1] = 4;
	argvlen[2] = sizeof(fr_script) - 1;
	r |= redisAsyncCommandArgv(ac, fr_load_cb, NULL, 3, argv, argvlen);
	if (r != REDIS_OK)
		log_warn("ratelimit store=%s redis=%s cannot queue the "
		    "handshake", fr_name(st), st->where);
}

/*
 * hiredis's disconnect callback, only for a connection that got through
 * connect: the server closed it, or an I/O or protocol error.  Pending
 * reply callbacks have had their NULL already; hiredis frees the context
 * after this returns.  A connection we dropped ourselves is not st->ac.
 */
static void
fr_disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct flt_redis *st = ac->data;

	(void)status;
	if (st->ac != ac)
		return;
	st->ac = NULL;
	fr_down(st, ac->err != 0 && ac->errstr != NULL ? ac->errstr :
	    "connection closed");
}

/* Starts a connection; on an immediate failure, schedules the next. */
static void
fr_connect(struct flt_redis *st)
{
	redisAsyncContext *ac;
	unsigned ms;
	char why[160];

	ac = st->path != NULL ? redisAsyncConnectUnix(st->path) :
	    redisAsyncConnect(st->host, st->port);
	if (ac == NULL) {
		fr_down(st, "out of memory");
		return;
	}
	if (ac->err) {
		snprintf(why, sizeof(why), "%s", ac->errstr);
		redisAsyncFree(ac);
		fr_down(st, why);
		return;
	}
	ac->data = st;
	/* Before setting the connect callback, which adds a write event. */
	if (fr_ev_attach(ac, st->loop) == -1) {
		redisAsyncFree(ac);
		fr_down(st, "cannot watch the socket");
		return;
	}
	redisAsyncSetConnectCallback(ac, fr_connect_cb);
	redisAsyncSetDisconnectCallback(ac, fr_disconnect_cb);
	st->ac = ac;
	st->state = FR_CONNECTING;
	ms = st->timeout_ms > FR_CONNECT_MS ? st->timeout_ms : FR_CONNECT_MS;
	st->hs_deadline = uv_now(st->loop) + ms;
	fr_arm(st);
}

static void
fr_retry_cb(uv_timer_t *t)
{
	fr_connect(t->data);
}

/*
 * Reads a request's element of the script's reply into *res.  Returns 0,
 * or -1 when it is not one the script can give.
 */
static int
fr_parse(const redisReply *e, size_t n, struct rl_result *res)
{
	long long v;

	if (e->type != REDIS_REPLY_INTEGER || e->integer < 0)
		return -1;
	if ((v = e->integer) == 0) {
		res->status = RL_ALLOW;
		res->denied = 0;
		res->retry_ms = 0;
		return 0;
	}
	if (v % 32 == 0 || (unsigned long long)(v % 32) > n)
		return -1;
	res->status = RL_DENY;
	res->denied = (size_t)(v % 32 - 1);
	res->retry_ms = (uint64_t)(v / 32);
	return 0;
}

/* Frees a batch and its requests. */
static void
fr_batch_free(struct fr_batch *b)
{
	struct fr_req *req, *next;

	for (req = b->first; req != NULL; req = next) {
		next = req->bnext;
		free(req);
	}
	free(b);
}

/*
 * The reply to a batch (NULL when the connection goes away): answers each
 * request not answered yet.  Frees the batch, unless it goes out again as
 * EVAL.
 */
static void
fr_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	struct fr_batch *b = privdata;
	struct flt_redis *st = b->st;
	redisReply *reply = r;
	struct fr_req *req;
	struct rl_result res;
	size_t i;
	int bad;

	if (reply != NULL)
		st->stalls = 0;		/* slow perhaps, but alive */
	if (reply != NULL && !st->closing &&
	    reply->type == REDIS_REPLY_ERROR &&
	    !(b->flags & FR_BATCH_RESENT) &&
	    strncmp(reply->str, "NOSCRIPT", 8) == 0) {
		/* SCRIPT FLUSH, a restart or a failover: EVAL caches it. */
		b->flags |= FR_BATCH_RESENT;
		if (fr_send(ac, b, 1) == REDIS_OK)
			return;
	}
	/* An array of an element per request; or, for a lone request of
	 * one check, that element alone. */
	bad = reply != NULL && !st->closing &&
	    !(reply->type == REDIS_REPLY_INTEGER && b->nreq == 1) &&
	    (reply->type != REDIS_REPLY_ARRAY || reply->elements != b->nreq);
	for (req = b->first, i = 0; req != NULL; req = req->bnext, i++) {
		/* A request that timed out is not answered again. */
		if (req->flags & FR_REQ_ANSWERED)
			continue;
		if (reply == NULL || st->closing) {
			fr_answer(req, &fr_error);
			continue;
		}
		if (bad || fr_parse(reply->type == REDIS_REPLY_ARRAY ?
		    reply->element[i] : reply, req->n, &res) == -1) {
			if (!st->err_logged) {
				st->err_logged = 1;
				log_warn("ratelimit store=%s redis=%s bad "
				    "reply: %s", fr_name(st), st->where,
				    reply->type == REDIS_REPLY_ERROR ?
				    reply->str : "not the script's");
			}
			fr_answer(req, &fr_error);
			continue;
		}
		st->err_logged = 0;
		fr_answer(req, &res);
	}
	fr_batch_free(b);
}

/* Writes v in decimal at p; returns the number of digits (at most 20).
 * Two digits at a time, from the end. */
static size_t
fr_u64(char *p, uint64_t v)
{
	static const char pairs[] =
	    "00010203040506070809101112131415161718192021222324"
	    "25262728293031323334353637383940414243444546474849"
	    "50515253545556575859606162636465666768697071727374"
	    "75767778798081828384858687888990919293949596979899";
	char tmp[20];
	size_t i = sizeof(tmp), n;

	while (v >= 100) {
		i -= 2;
		memcpy(tmp + i, pairs + 2 * (v % 100), 2);
		v /= 100;
	}
	if (v >= 10) {
		i -= 2;
		memcpy(tmp + i, pairs + 2 * v, 2);
	} else
		tmp[--i] = (char)('0' + v);
	n = sizeof(tmp) - i;
	memcpy(p, tmp + i, n);
	return n;
}

/* Writes the RESP of a bulk string's head ("$len\r\n") at p; returns its
 * length. */
static size_t
fr_resp_head(char *p, char mark, uint64_t len)
{
	size_t n;

	p[0] = mark;
	n = 1 + fr_u64(p + 1, len);
	p[n++] = '\r';
	p[n++] = '\n';
	return n;
}

/* Writes number v as a RESP bulk string at p; returns its length (at most
 * FR_RESP_NUM). */
static size_t
fr_resp_num(char *p, uint64_t v)
{
	char digits[20];
	size_t len = fr_u64(digits, v), n;

	n = fr_resp_head(p, '$', len);
	memcpy(p + n, digits, len);
	n += len;
	p[n++] = '\r';
	p[n++] = '\n';
	return n;
}

/* fr_resp_num() through the store's cache of numbers. */
static size_t
fr_resp_num_cached(struct flt_redis *st, char *p, uint64_t v)
{
	struct fr_num *e;

	e = &st->ncache[(v * UINT64_C(0x9e3779b97f4a7c15)) >>
	    (64 - FR_NCACHE_BITS)];
	if (e->len == 0 || e->v != v) {
		e->v = v;
		e->len = fr_resp_num(e->resp, v);
	}
	memcpy(p, e->resp, e->len);
	return e->len;
}

/*
 * Writes batch b as one command in RESP into st->cmd: EVALSHA (or EVAL
 * with the script's text), the number of keys, the keys of every request,
 * then the numbers of every request.  Returns its length.
 */
static size_t
fr_format(struct flt_redis *st, struct fr_batch *b, int eval)
{
	struct fr_req *req;
	size_t need, off;
	uint64_t argc = 3 + b->nkeys + b->nnums;

	need = 64 + FR_RESP_NUM + (eval ? 32 + sizeof(fr_script) :
	    st->evalsha_len);
	for (req = b->first; req != NULL; req = req->bnext)
		need += req->keyslen + req->numslen;
	if (need > st->cmdsize) {
		free(st->cmd);
		st->cmdsize = need > 4096 ? need : 4096;
		if ((st->cmd = malloc(st->cmdsize)) == NULL)
			fatalx("%s: out of memory", __func__);
	}
	off = fr_resp_head(st->cmd, '*', argc);
	if (eval) {
		memcpy(st->cmd + off, "$4\r\nEVAL\r\n", 10);
		off += 10;
		off += fr_resp_head(st->cmd + off, '$', sizeof(fr_script) - 1);
		memcpy(st->cmd + off, fr_script, sizeof(fr_script) - 1);
		off += sizeof(fr_script) - 1;
		st->cmd[off++] = '\r';
		st->cmd[off++] = '\n';
	} else {
		memcpy(st->cmd + off, st->evalsha, st->evalsha_len);
		off += st->evalsha_len;
	}
	off += fr_resp_num(st->cmd + off, b->nkeys);
	for (req = b->first; req != NULL; req = req->bnext) {
		memcpy(st->cmd + off, req->buf, req->keyslen);
		off += req->keyslen;
	}
	for (req = b->first; req != NULL; req = req->bnext) {
		memcpy(st->cmd + off, req->buf + req->keyslen, req->numslen);
		off += req->numslen;
	}
	return off;
}

/*
 * Sends batch b (again) as EVALSHA, or as EVAL with the script's text.
 * Returns REDIS_OK when hiredis took it (and owns it until fr_reply_cb).
 */
static int
fr_send(redisAsyncContext *ac, struct fr_batch *b, int eval)
{
	struct flt_redis *st = b->st;
	size_t len;

	len = fr_format(st, b, eval);
	return redisAsyncFormattedCommand(ac, fr_reply_cb, b, st->cmd, len);
}

/*
 * Writes the open batch (from the loop): hiredis owns it from here.
 * Refused (the connection is going down), its requests are answered
 * RL_ERROR.
 */
static void
fr_batch_flush(struct flt_redis *st)
{
	struct fr_batch *b = st->open;

	if (b == NULL || st->ac == NULL)
		return;
	st->open = NULL;
	if (fr_send(st->ac, b, 0) == REDIS_OK)
		return;
	st->open = b;
	fr_batch_fail(st);
}

/*
 * Answers the requests of the open batch RL_ERROR and frees it.  Their
 * done may call rl_check() (which opens a new batch, or answers at once)
 * or rl_store_free().
 */
static void
fr_batch_fail(struct flt_redis *st)
{
	struct fr_batch *b = st->open;
	struct fr_req *req;

	if (b == NULL)
		return;
	st->open = NULL;
	for (req = b->first; req != NULL; req = req->bnext)
		if (!(req->flags & FR_REQ_ANSWERED))
			fr_answer(req, &fr_error);
	fr_batch_free(b);
}

/*
 * Returns 1 when the checks are within what the script computes exactly,
 * the same bounds as the in-process store's: T at least 1, W and c * T at
 * most FR_SPAN_MAX, keys at most RL_KEY_MAX.
 */
static int
fr_valid(const struct rl_check *c, size_t n)
{
	size_t i;

	if (n == 0 || n > RL_CHECKS_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		if (c[i].keylen > RL_KEY_MAX || c[i].interval_us == 0 ||
		    c[i].window_us > FR_SPAN_MAX)
			return 0;
		if (c[i].cost > 0 && c[i].interval_us > FR_SPAN_MAX / c[i].cost)
			return 0;
	}
	return 1;
}

/* Builds the request of n valid checks; aborts when out of memory. */
static struct fr_req *
fr_req_new(struct flt_redis *st, const struct rl_check *c, size_t n,
    rl_done_fn done, void *arg)
{
	struct fr_req *req;
	size_t i, len, off;
	char *p;

	len = FR_RESP_NUM + n * (FR_RESP_KEY + st->prefixlen +
	    3 * FR_RESP_NUM);
	for (i = 0; i < n; i++)
		len += c[i].keylen;
	if ((req = malloc(sizeof(*req) + len)) == NULL)
		fatalx("%s: out of memory", __func__);
	req->st = st;
	req->prev = req->next = req->bnext = NULL;
	req->done = done;
	req->arg = arg;
	req->flags = 0;
	req->n = n;
	req->deadline = uv_now(st->loop) + st->timeout_ms;

	/* The keys: one argument each, the prefix and the key. */
	p = req->buf;
	off = 0;
	for (i = 0; i < n; i++) {
		off += fr_resp_head(p + off, '$', st->prefixlen + c[i].keylen);
		memcpy(p + off, st->prefix, st->prefixlen);
		memcpy(p + off + st->prefixlen, c[i].key, c[i].keylen);
		off += st->prefixlen + c[i].keylen;
		p[off++] = '\r';
		p[off++] = '\n';
	}
	req->keyslen = off;
	/* The numbers: n, then c * T, W and the force flag of each check. */
	off += fr_resp_num_cached(st, p + off, n);
	for (i = 0; i < n; i++) {
		off += fr_resp_num_cached(st, p + off,
		    c[i].cost * c[i].interval_us);
		off += fr_resp_num_cached(st, p + off, c[i].window_us);
		memcpy(p + off, c[i].force ? "$1\r\n1\r\n" : "$1\r\n0\r\n", 7);
		off += 7;
	}
	req->numslen = off - req->keyslen;
	return req;
}

static int
fr_check(struct rl_store *base, const struct rl_check *c, size_t n,
    struct rl_result *res, rl_done_fn done, void *arg)
{
	struct flt_redis *st = (struct flt_redis *)base;
	struct fr_batch *b;
	struct fr_req *req;

	st->base.stats.checks++;
	/* Out of bounds (RL_ERROR, as the in-process store), closing, down. */
	if (!fr_valid(c, n) || st->closing || st->state != FR_READY ||
	    st->ac == NULL)
		goto error;

	/* Into this iteration's batch, written by fr_ev_flush_cb(). */
	if ((b = st->open) == NULL) {
		if ((b = calloc(1, sizeof(*b))) == NULL)
			fatalx("%s: out of memory", __func__);
		b->st = st;
		st->open = b;
		fr_ev_want_flush(st->ac);
	}
	req = fr_req_new(st, c, n, done, arg);
	if (b->last != NULL)
		b->last->bnext = req;
	else
		b->first = req;
	b->last = req;
	b->nreq++;
	b->nkeys += n;
	b->nnums += 1 + 3 * n;

	req->prev = st->tail;
	if (st->tail != NULL)
		st->tail->next = req;
	else
		st->head = req;
	st->tail = req;
	/* Lazy: a running timer is due at or before this deadline. */
	if (!uv_is_active((uv_handle_t *)&st->deadline))
		fr_arm(st);
	return 1;

 error:
	*res = fr_error;
	st->base.stats.errors++;
	metrics_redis_answer(RL_ERROR);
	return 0;
}

/*
 * The timeouts.  While connecting: the handshake took too long.  Else the
 * oldest requests are answered RL_ERROR; after FR_STALL of them in a row
 * without any reply, the connection is taken as broken and dropped (what
 * is still pending is answered RL_ERROR then).
 */
static void
fr_deadline_cb(uv_timer_t *t)
{
	struct flt_redis *st = t->data;
	uint64_t now = uv_now(st->loop);
	struct fr_req *req;
	char why[64];

	if (st->closing)
		return;
	if (st->state == FR_CONNECTING) {
		if (now >= st->hs_deadline)
			fr_drop(st, "connect timeout");
		else
			fr_arm(st);
		return;
	}
	/* A done may add requests: theirs are later deadlines. */
	while ((req = st->head) != NULL && req->deadline <= now &&
	    !st->closing) {
		st->stalls++;
		metrics_redis_timeout();
		fr_answer(req, &fr_error);
	}
	if (st->stalls >= FR_STALL && st->state == FR_READY && !st->closing) {
		snprintf(why, sizeof(why), "%u requests timed out (%u ms)",
		    st->stalls, st->timeout_ms);
		fr_drop(st, why);
	}
	fr_arm(st);
}

static void
fr_closed_cb(uv_handle_t *h)
{
	struct flt_redis *st = h->data;

	if (--st->handles > 0)
		return;
	free(st->cmd);
	free(st->host);
	free(st->path);
	free(st->where);
	free(st->password);
	free(st->prefix);
	free(st->name);
	free(st);
}

/*
 * The deferred part of rl_store_free(), from the loop: frees the
 * connection (which answers what is pending), then closes the timers.
 */
static void
fr_close_cb(uv_timer_t *t)
{
	struct flt_redis *st = t->data;
	redisAsyncContext *ac = st->ac;

	st->ac = NULL;
	st->state = FR_DOWN;
	if (ac != NULL)
		redisAsyncFree(ac);
	fr_batch_fail(st);
	if (st->head != NULL)
		fatalx("%s: a request outlived its connection", __func__);
	uv_close((uv_handle_t *)&st->retry, fr_closed_cb);
	uv_close((uv_handle_t *)&st->deadline, fr_closed_cb);
}

/*
 * Marks the store closing and leaves the rest to the loop: pending checks
 * are answered RL_ERROR from it, and the memory is freed after the last
 * close_cb.  Safe from anywhere, done callbacks included.
 */
static void
fr_free(struct rl_store *base)
{
	struct flt_redis *st = (struct flt_redis *)base;

	if (st->closing)
		fatalx("%s: store freed twice", __func__);
	st->closing = 1;
	uv_timer_stop(&st->deadline);
	uv_timer_start(&st->retry, fr_close_cb, 0, 0);
}

struct rl_store *
rl_redis_new(uv_loop_t *loop, const struct rl_redis_params *p)
{
	struct flt_redis *st;
	size_t len;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		fatalx("%s: out of memory", __func__);
	st->base.ops = &fr_ops;
	st->loop = loop;
	st->host = fr_xstrdup(p->host != NULL ? p->host : "");
	st->port = p->port;
	st->path = p->path != NULL ? fr_xstrdup(p->path) : NULL;
	len = (p->path != NULL ? strlen(p->path) : strlen(st->host)) + 16;
	if ((st->where = malloc(len)) == NULL)
		fatalx("%s: out of memory", __func__);
	if (p->path != NULL)
		snprintf(st->where, len, "unix:%s", p->path);
	else
		snprintf(st->where, len, "%s:%d", st->host, st->port);
	st->password = p->password != NULL ? fr_xstrdup(p->password) : NULL;
	st->db = p->db;
	st->prefix = fr_xstrdup(p->prefix != NULL ? p->prefix : "");
	st->prefixlen = strlen(st->prefix);
	st->timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : 1;
	st->name = p->name != NULL ? fr_xstrdup(p->name) : NULL;
	st->backoff_ms = FR_BACKOFF_MIN;
	st->state = FR_DOWN;

	uv_timer_init(loop, &st->retry);
	uv_timer_init(loop, &st->deadline);
	st->retry.data = st->deadline.data = st;
	st->handles = 2;

	fr_connect(st);
	return &st->base;
}

int
rl_redis_ready(const struct rl_store *base)
{
	const struct flt_redis *st = (const struct flt_redis *)base;

	return base->ops == &fr_ops && !st->closing && st->state == FR_READY;
}
