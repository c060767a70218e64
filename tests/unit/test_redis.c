/*
 * test_redis.c: unit tests for filters/flt_redis.c against a real
 * redis-server.
 *
 * Each server runs on a free 127.0.0.1 port in a temporary directory and
 * is killed at exit (atexit, and PR_SET_PDEATHSIG should the test die
 * without running it).  Every test drives its own loop; answers are
 * counted in callbacks and asserted after uv_run.  The only sleeps are
 * bounded waits for a server process to come up.
 */
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "ratelimit.h"
#include "test.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define SEC		UINT64_C(1000000)	/* a second in µs */
#define PREFIX		"t:"			/* the stores' key prefix */

/* A redis-server of ours. */
struct srv {
	pid_t		 pid;		/* 0 when not running */
	int		 port;		/* its port on 127.0.0.1 */
	const char	*password;	/* --requirepass, or NULL */
	char		 dir[64];	/* its --dir, removed at exit */
};

static struct srv srv_plain, srv_auth, srv_stall;
static struct srv *const servers[] = { &srv_plain, &srv_auth, &srv_stall };

/* One test's loop, with the timers run_until() uses. */
struct harness {
	uv_loop_t	 loop;
	uv_timer_t	 tick;		/* evaluates the condition */
	uv_timer_t	 limit;		/* gives up */
	int		 (*pred)(void *);	/* the condition ... */
	void		*arg;		/* ... and its argument */
	int		 met;		/* the condition was met */
};

/* One rl_check() and what came of it. */
struct ans {
	uv_loop_t	*loop;		/* for the answer's time */
	int		 ret;		/* rl_check()'s return */
	int		 calls;		/* done calls */
	struct rl_result res;		/* the answer (done's or at once) */
	uint64_t	 sent;		/* uv_now() at rl_check() */
	uint64_t	 at;		/* uv_now() at done */
	struct rl_store	*free_st;	/* done frees this store */
	struct rl_store	*chain_st;	/* chain_cb checks again on this store */
	struct ans	*chain;		/* ... recording here */
};

static int in_check;	/* inside rl_check(): done must not come */

/* ---- servers ------------------------------------------------------------ */

static void
srv_kill(struct srv *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	while (waitpid(s->pid, NULL, 0) == -1 && errno == EINTR)
		;
	s->pid = 0;
}

static void
cleanup(void)
{
	char path[128];
	size_t i;

	for (i = 0; i < NELEM(servers); i++) {
		srv_kill(servers[i]);
		if (servers[i]->dir[0] == '\0')
			continue;
		snprintf(path, sizeof(path), "%s/log", servers[i]->dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/dump.rdb", servers[i]->dir);
		unlink(path);
		rmdir(servers[i]->dir);
		servers[i]->dir[0] = '\0';
	}
}

/* Returns a port nobody listens on now. */
static int
free_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd, port;

	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1) {
		perror("socket");
		exit(1);
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) == -1) {
		perror("bind");
		exit(1);
	}
	port = ntohs(sin.sin_port);
	close(fd);
	return port;
}

static void
msleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Returns 1 once s answers PING (any reply, NOAUTH included) within ms. */
static int
srv_wait(struct srv *s, unsigned ms)
{
	struct timeval tv = { 0, 200000 };
	uint64_t end = mono_ms() + ms;
	redisContext *c;
	redisReply *r;

	do {
		if (s->pid > 0 && waitpid(s->pid, NULL, WNOHANG) == s->pid) {
			s->pid = 0;
			return 0;	/* it exited */
		}
		if ((c = redisConnectWithTimeout("127.0.0.1", s->port,
		    tv)) != NULL && c->err == 0) {
			redisSetTimeout(c, tv);
			r = redisCommand(c, "PING");
			redisFree(c);
			if (r != NULL) {
				freeReplyObject(r);
				return 1;
			}
		} else if (c != NULL)
			redisFree(c);
		msleep(10);
	} while (mono_ms() < end);
	return 0;
}

/* Starts s (on s->port, or on a free port when 0); exits on failure. */
static void
srv_start(struct srv *s)
{
	char port[16], log[128];
	pid_t parent = getpid();
	int fd;

	if (s->dir[0] == '\0') {
		snprintf(s->dir, sizeof(s->dir), "/tmp/smtpgate-redis-XXXXXX");
		if (mkdtemp(s->dir) == NULL) {
			perror("mkdtemp");
			exit(1);
		}
	}
	if (s->port == 0)
		s->port = free_port();
	snprintf(port, sizeof(port), "%d", s->port);
	snprintf(log, sizeof(log), "%s/log", s->dir);

	switch (s->pid = fork()) {
	case -1:
		perror("fork");
		exit(1);
	case 0:
		/* Dies with the test, even when atexit does not run. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		if ((fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600)) != -1) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if (s->password != NULL)
			execlp("redis-server", "redis-server", "--port", port,
			    "--bind", "127.0.0.1", "--save", "", "--appendonly",
			    "no", "--dir", s->dir, "--requirepass", s->password,
			    (char *)NULL);
		else
			/* Also on a Unix socket, "sock" in its directory. */
			execlp("redis-server", "redis-server", "--port", port,
			    "--bind", "127.0.0.1", "--save", "", "--appendonly",
			    "no", "--dir", s->dir, "--unixsocket", "sock",
			    "--unixsocketperm", "700", (char *)NULL);
		_exit(127);
	}
	if (!srv_wait(s, 5000)) {
		fprintf(stderr, "redis-server on port %d did not start "
		    "(see %s)\n", s->port, log);
		exit(1);
	}
}

/* A synchronous connection to s, authenticated, on db; exits on failure. */
static redisContext *
sync_conn(const struct srv *s, int db)
{
	struct timeval tv = { 2, 0 };
	redisContext *c;
	redisReply *r;

	c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
	if (c == NULL || c->err) {
		fprintf(stderr, "sync connect to %d failed\n", s->port);
		exit(1);
	}
	redisSetTimeout(c, tv);
	if (s->password != NULL) {
		r = redisCommand(c, "AUTH %s", s->password);
		freeReplyObject(r);
	}
	r = redisCommand(c, "SELECT %d", db);
	freeReplyObject(r);
	return c;
}

/* The integer reply of a command, or INT64_MIN. */
static long long
sync_int(redisContext *c, const char *fmt, const char *arg)
{
	redisReply *r = redisCommand(c, fmt, arg);
	long long v = INT64_MIN;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER)
		v = r->integer;
	freeReplyObject(r);
	return v;
}

/* A key's value as a number (a TAT), or -1 when it has none. */
static long long
sync_get(redisContext *c, const char *key)
{
	redisReply *r = redisCommand(c, "GET %s", key);
	long long v = -1;

	if (r != NULL && r->type == REDIS_REPLY_STRING)
		v = strtoll(r->str, NULL, 10);
	freeReplyObject(r);
	return v;
}

/* ---- the loop ----------------------------------------------------------- */

static void
h_init(struct harness *h)
{
	memset(h, 0, sizeof(*h));
	uv_loop_init(&h->loop);
	uv_timer_init(&h->loop, &h->tick);
	uv_timer_init(&h->loop, &h->limit);
	h->tick.data = h->limit.data = h;
}

static void
h_tick_cb(uv_timer_t *t)
{
	struct harness *h = t->data;

	if (h->pred != NULL && h->pred(h->arg)) {
		h->met = 1;
		uv_stop(&h->loop);
	}
}

static void
h_limit_cb(uv_timer_t *t)
{
	uv_stop(t->loop);
}

/* Runs the loop until pred(arg) (checked every ms) or ms have gone by;
 * returns whether pred held.  With pred NULL, just runs for ms. */
static int
run_until(struct harness *h, int (*pred)(void *), void *arg, unsigned ms)
{
	if (pred != NULL && pred(arg))
		return 1;
	h->pred = pred;
	h->arg = arg;
	h->met = 0;
	uv_timer_start(&h->tick, h_tick_cb, 1, 1);
	uv_timer_start(&h->limit, h_limit_cb, ms, 0);
	uv_run(&h->loop, UV_RUN_DEFAULT);
	uv_timer_stop(&h->tick);
	uv_timer_stop(&h->limit);
	h->pred = NULL;
	return h->met;
}

/* Closes the test's timers and runs the loop dry: every store must have
 * been freed.  Returns uv_loop_close(): 0 when no handle is left. */
static int
h_done(struct harness *h)
{
	uv_close((uv_handle_t *)&h->tick, NULL);
	uv_close((uv_handle_t *)&h->limit, NULL);
	uv_run(&h->loop, UV_RUN_DEFAULT);
	return uv_loop_close(&h->loop);
}

/* ---- stores and checks -------------------------------------------------- */

static struct rl_store *
store_new(struct harness *h, const struct srv *s, const char *password,
    int db, unsigned timeout_ms)
{
	struct rl_redis_params p = {
		.host = "127.0.0.1",
		.port = s->port,
		.password = password,
		.db = db,
		.prefix = PREFIX,
		.timeout_ms = timeout_ms,
		.name = "test",
	};

	return rl_redis_new(&h->loop, &p);
}

static int
pred_ready(void *arg)
{
	return rl_redis_ready(arg);
}

static int
pred_not_ready(void *arg)
{
	return !rl_redis_ready(arg);
}

static int
pred_outage(void *arg)
{
	struct rl_stats sts;

	rl_store_stats(arg, &sts);
	return sts.outages > 0;
}

static int
pred_answered(void *arg)
{
	return ((struct ans *)arg)->calls > 0;
}

/* An array of answers, all answered. */
struct ans_set {
	struct ans	*a;
	size_t		 n;
};

static int
pred_all_answered(void *arg)
{
	struct ans_set *set = arg;
	size_t i;

	for (i = 0; i < set->n; i++)
		if (set->a[i].ret == 1 && set->a[i].calls == 0)
			return 0;
	return 1;
}

static void ans_cb(void *, const struct rl_result *);

/* Makes one check; an answer at once is recorded in a->res too. */
static int
issue(struct harness *h, struct rl_store *st, const struct rl_check *c,
    size_t n, struct ans *a)
{
	struct rl_result res;

	memset(a, 0, sizeof(*a));
	a->loop = &h->loop;
	a->sent = uv_now(&h->loop);
	in_check = 1;
	a->ret = rl_check(st, c, n, &res, ans_cb, a);
	in_check = 0;
	if (a->ret == 0)
		a->res = res;
	return a->ret;
}

static void
ans_cb(void *arg, const struct rl_result *res)
{
	struct ans *a = arg;

	CHECK(!in_check);
	a->calls++;
	a->res = *res;
	a->at = uv_now(a->loop);
	if (a->free_st != NULL)
		rl_store_free(a->free_st);
}

/* A check of key under a limit of n per window seconds. */
static struct rl_check
chk(const char *key, uint64_t n, uint64_t window_s, uint64_t cost, int force)
{
	struct rl_check c;

	memset(&c, 0, sizeof(c));
	c.keylen = strlen(key);
	memcpy(c.key, key, c.keylen);
	c.window_us = window_s * SEC;
	c.interval_us = c.window_us / n;
	c.cost = cost;
	c.force = force;
	return c;
}

/* Makes one check and runs the loop until it is answered (2 s at most);
 * returns the status, or -1 when no answer came. */
static int
check_wait(struct harness *h, struct rl_store *st, const struct rl_check *c,
    size_t n, struct ans *a)
{
	if (issue(h, st, c, n, a) == 0)
		return a->res.status;
	if (!run_until(h, pred_answered, a, 2000))
		return -1;
	return a->calls == 1 ? (int)a->res.status : -1;
}

static int
check1(struct harness *h, struct rl_store *st, struct rl_check c,
    struct ans *a)
{
	return check_wait(h, st, &c, 1, a);
}

/* ---- tests -------------------------------------------------------------- */

/* N checks of a limit of N pass, the next is refused; keys are separate. */
static void
test_basic(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c[1];
	struct ans a[8];
	struct ans_set set = { a, 5 };
	struct rl_stats sts;
	redisContext *sc;
	long long pttl;
	size_t i;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);

	/* Not connected yet: an error at once, and done never called. */
	CHECK(!rl_redis_ready(st));
	c[0] = chk("basic:a", 5, 60, 1, 0);
	CHECK(issue(&h, st, c, 1, &a[0]) == 0);
	CHECK(a[0].res.status == RL_ERROR);
	CHECK(run_until(&h, pred_ready, st, 2000));

	/* Five at once, pipelined. */
	for (i = 0; i < 5; i++)
		CHECK(issue(&h, st, c, 1, &a[i]) == 1);
	CHECK(run_until(&h, pred_all_answered, &set, 2000));
	for (i = 0; i < 5; i++) {
		CHECK(a[i].calls == 1);
		CHECK(a[i].res.status == RL_ALLOW);
	}
	CHECK(check1(&h, st, c[0], &a[5]) == RL_DENY);
	CHECK(a[5].res.denied == 0);
	/* T is 12 s; it passes again once T has gone by. */
	CHECKF(a[5].res.retry_ms > 11000 && a[5].res.retry_ms <= 12000,
	    "retry_ms %llu", (unsigned long long)a[5].res.retry_ms);
	CHECK(check1(&h, st, chk("basic:b", 5, 60, 1, 0), &a[6]) == RL_ALLOW);

	rl_store_stats(st, &sts);
	CHECK(sts.checks == 8);
	CHECK(sts.denied == 1);
	CHECK(sts.errors == 1);
	CHECK(sts.outages == 0);

	sc = sync_conn(&srv_plain, 0);
	pttl = sync_int(sc, "PTTL %s", PREFIX "basic:a");
	CHECKF(pttl > 48000 && pttl <= 60000, "pttl %lld", pttl);
	redisFree(sc);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/* done may check again; the new check is answered from the loop later. */
static struct rl_check chain_check;

static void
chain_cb(void *arg, const struct rl_result *res)
{
	struct ans *a = arg;
	struct rl_result r;

	ans_cb(arg, res);
	if (a->chain_st == NULL)
		return;
	a->chain->loop = a->loop;
	in_check = 1;
	a->chain->ret = rl_check(a->chain_st, &chain_check, 1, &r, ans_cb,
	    a->chain);
	in_check = 0;
	a->chain_st = NULL;
}

static void
test_reentry(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c = chk("reentry", 5, 60, 1, 0);
	struct rl_result r;
	struct ans first, second;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));

	memset(&first, 0, sizeof(first));
	memset(&second, 0, sizeof(second));
	first.loop = &h.loop;
	first.chain_st = st;
	first.chain = &second;
	chain_check = c;
	in_check = 1;
	CHECK(rl_check(st, &c, 1, &r, chain_cb, &first) == 1);
	in_check = 0;
	CHECK(run_until(&h, pred_answered, &second, 2000));
	CHECK(first.calls == 1 && first.res.status == RL_ALLOW);
	CHECK(second.ret == 1);
	CHECK(second.calls == 1 && second.res.status == RL_ALLOW);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/* Several checks in one call: all are counted, or none is. */
static void
test_multi(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c[3];
	struct ans a;
	redisContext *sc;
	long long v1;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	sc = sync_conn(&srv_plain, 0);

	c[0] = chk("multi:1", 10, 60, 1, 0);
	c[1] = chk("multi:2", 1, 60, 1, 0);
	CHECK(check_wait(&h, st, c, 2, &a) == RL_ALLOW);
	v1 = sync_get(sc, PREFIX "multi:1");
	CHECK(v1 > 0);
	CHECK(sync_get(sc, PREFIX "multi:2") > 0);

	/* The second is over: the first is not counted. */
	CHECK(check_wait(&h, st, c, 2, &a) == RL_DENY);
	CHECK(a.res.denied == 1);
	CHECK(a.res.retry_ms > 0);
	CHECK(sync_get(sc, PREFIX "multi:1") == v1);

	/* The same, the other way round. */
	c[2] = c[0];
	CHECK(check_wait(&h, st, &c[1], 2, &a) == RL_DENY);
	CHECK(a.res.denied == 0);
	CHECK(sync_get(sc, PREFIX "multi:1") == v1);

	/* Alone, it is counted: T = 6 s later. */
	CHECK(check_wait(&h, st, c, 1, &a) == RL_ALLOW);
	CHECK(sync_get(sc, PREFIX "multi:1") == v1 + 6 * (long long)SEC);

	/* One key twice: the second sees the first. */
	c[0] = c[1] = c[2] = chk("multi:dup", 2, 60, 1, 0);
	CHECK(check_wait(&h, st, c, 3, &a) == RL_DENY);
	CHECK(a.res.denied == 2);
	CHECK(sync_get(sc, PREFIX "multi:dup") == -1);
	CHECK(check_wait(&h, st, c, 2, &a) == RL_ALLOW);
	CHECK(check_wait(&h, st, c, 1, &a) == RL_DENY);

	redisFree(sc);
	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/* Events of cost c use c units of the limit. */
static void
test_cost(void)
{
	struct harness h;
	struct rl_store *st;
	struct ans a;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));

	/* 10 units per 60 s, T = 6 s. */
	CHECK(check1(&h, st, chk("cost", 10, 60, 4, 0), &a) == RL_ALLOW);
	CHECK(check1(&h, st, chk("cost", 10, 60, 4, 0), &a) == RL_ALLOW);
	CHECK(check1(&h, st, chk("cost", 10, 60, 4, 0), &a) == RL_DENY);
	CHECKF(a.res.retry_ms > 11000 && a.res.retry_ms <= 12000,
	    "retry_ms %llu", (unsigned long long)a.res.retry_ms);
	CHECK(check1(&h, st, chk("cost", 10, 60, 2, 0), &a) == RL_ALLOW);
	CHECK(check1(&h, st, chk("cost", 10, 60, 1, 0), &a) == RL_DENY);
	/* Cost 0 asks whether the key is over W: it is at W, not over. */
	CHECK(check1(&h, st, chk("cost", 10, 60, 0, 0), &a) == RL_ALLOW);
	/* More than the whole limit never passes. */
	CHECK(check1(&h, st, chk("cost:big", 10, 60, 11, 0), &a) == RL_DENY);
	/* Out of bounds (c * T or W over 2^48 µs, T = 0): an error at
	 * once, as from the in-process store. */
	CHECK(check1(&h, st, chk("cost:huge", 1, 60, UINT64_MAX, 0), &a) ==
	    RL_ERROR && a.ret == 0);
	CHECK(check1(&h, st, chk("cost:w", 1, 9000000000, 1, 0), &a) ==
	    RL_ERROR && a.ret == 0);
	CHECK(check1(&h, st, chk("cost:t0", 1000000000, 60, 1, 0), &a) ==
	    RL_ERROR && a.ret == 0);
	CHECK(check_wait(&h, st, NULL, 0, &a) == RL_ERROR && a.ret == 0);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/*
 * A forced check is counted even when over, and is denied itself when
 * over (as in the in-process store); a deny by another check counts it.
 */
static void
test_force(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c[2];
	struct ans a;
	redisContext *sc;
	long long v0, pttl;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	sc = sync_conn(&srv_plain, 0);

	/* 2 per 60 s, T = 30 s. */
	CHECK(check1(&h, st, chk("force:f", 2, 60, 1, 0), &a) == RL_ALLOW);
	CHECK(check1(&h, st, chk("force:f", 2, 60, 1, 0), &a) == RL_ALLOW);
	v0 = sync_get(sc, PREFIX "force:f");

	/* Over: denied and counted (TAT = now + 3 T); the same check would
	 * pass when TAT + T - now <= W, in 2 T. */
	CHECK(check1(&h, st, chk("force:f", 2, 60, 1, 1), &a) == RL_DENY);
	CHECK(a.res.denied == 0);
	CHECKF(a.res.retry_ms > 59000 && a.res.retry_ms <= 60000,
	    "retry_ms %llu", (unsigned long long)a.res.retry_ms);
	CHECK(sync_get(sc, PREFIX "force:f") == v0 + 30 * (long long)SEC);
	CHECK(check1(&h, st, chk("force:f", 2, 60, 1, 0), &a) == RL_DENY);
	CHECKF(a.res.retry_ms > 59000 && a.res.retry_ms <= 60000,
	    "retry_ms %llu", (unsigned long long)a.res.retry_ms);
	CHECK(sync_get(sc, PREFIX "force:f") == v0 + 30 * (long long)SEC);
	/* The penalty outlives W. */
	pttl = sync_int(sc, "PTTL %s", PREFIX "force:f");
	CHECKF(pttl > 60000 && pttl <= 90000, "pttl %lld", pttl);

	/* Refused by another check: the forced one still counts. */
	c[0] = chk("force:g", 2, 60, 1, 1);
	c[1] = chk("force:f", 2, 60, 1, 0);
	CHECK(check_wait(&h, st, c, 2, &a) == RL_DENY);
	CHECK(a.res.denied == 1);
	CHECK(sync_get(sc, PREFIX "force:g") > 0);
	CHECK(sync_int(sc, "PTTL %s", PREFIX "force:g") > 0);
	CHECK(sync_get(sc, PREFIX "force:f") == v0 + 30 * (long long)SEC);
	/* Forced and under its limit: it passes. */
	CHECK(check1(&h, st, chk("force:g", 2, 60, 1, 1), &a) == RL_ALLOW);

	/* Forced and over, first: the other check is not counted. */
	c[0] = chk("force:f", 2, 60, 1, 1);
	c[1] = chk("force:h", 2, 60, 1, 0);
	CHECK(check_wait(&h, st, c, 2, &a) == RL_DENY);
	CHECK(a.res.denied == 0);
	CHECKF(a.res.retry_ms > 89000 && a.res.retry_ms <= 90000,
	    "retry_ms %llu", (unsigned long long)a.res.retry_ms);
	CHECK(sync_get(sc, PREFIX "force:f") == v0 + 60 * (long long)SEC);
	CHECK(sync_get(sc, PREFIX "force:h") == -1);

	/* A query (cost 0) is denied while the penalty lasts. */
	CHECK(check1(&h, st, chk("force:f", 2, 60, 0, 0), &a) == RL_DENY);
	CHECKF(a.res.retry_ms > 59000 && a.res.retry_ms <= 60000,
	    "retry_ms %llu", (unsigned long long)a.res.retry_ms);

	redisFree(sc);
	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

static void
never_cb(void *arg, const struct rl_result *res)
{
	(void)arg;
	(void)res;
	CHECK(!"the in-process store calls done");
}

/*
 * The script and the in-process store (rl_gcra()) give the same answers
 * to the same pseudo-random calls: 1 to 3 checks on 4 keys, costs 0 to
 * 3, some forced, both answers frequent.  Windows of 60 s make the answers independent of the
 * few ms between the two clocks, but for retry_ms.
 */
static void
test_vs_mem(void)
{
	static const char *const keys[] = { "vs:a", "vs:b", "vs:c", "vs:d" };
	static const uint64_t limit[] = { 3, 40, 100, 400 };
	struct harness h;
	struct rl_store *st, *mem;
	struct rl_check c[3];
	struct rl_result mr;
	struct ans a;
	uint32_t rnd = 2463534242u;
	uint64_t diff, t0, slack;
	int i, j, k, n, status, bad = 0, denied = 0;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	mem = rl_mem_new();
	CHECK(run_until(&h, pred_ready, st, 2000));
	for (i = 0; i < 300; i++) {
		n = 1 + (int)(rnd % 3);
		for (k = 0; k < n; k++) {
			rnd ^= rnd << 13, rnd ^= rnd >> 17, rnd ^= rnd << 5;
			j = (int)(rnd % 4);
			c[k] = chk(keys[j], limit[j], 60, (rnd >> 8) % 4,
			    (rnd >> 16) % 5 == 0);
		}
		t0 = mono_ms();
		status = check_wait(&h, st, c, (size_t)n, &a);
		CHECK(rl_check(mem, c, (size_t)n, &mr, never_cb, NULL) == 0);
		/* The two clocks read up to this far apart (a loaded machine
		 * stretches it), and a ms of rounding each. */
		slack = mono_ms() - t0 + 2;
		diff = a.res.retry_ms > mr.retry_ms ?
		    a.res.retry_ms - mr.retry_ms : mr.retry_ms - a.res.retry_ms;
		if (status != (int)mr.status || (status == RL_DENY &&
		    (a.res.denied != mr.denied || diff > slack))) {
			if (bad++ < 5)
				fprintf(stderr, "call %d: redis %d/%zu/%llu, "
				    "mem %d/%zu/%llu\n", i, status,
				    a.res.denied,
				    (unsigned long long)a.res.retry_ms,
				    mr.status, mr.denied,
				    (unsigned long long)mr.retry_ms);
		}
		denied += status == RL_DENY;
	}
	CHECKF(bad == 0, "%d of 300 calls disagree", bad);
	CHECKF(denied >= 50 && denied <= 250, "%d denied", denied);

	rl_store_free(mem);
	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/* The number of EVAL calls the server has seen since CONFIG RESETSTAT. */
static long long
eval_calls(redisContext *sc)
{
	redisReply *r = redisCommand(sc, "INFO commandstats");
	const char *p;
	long long n = 0;

	if (r != NULL && r->type == REDIS_REPLY_STRING &&
	    (p = strstr(r->str, "cmdstat_eval:calls=")) != NULL)
		n = strtoll(p + strlen("cmdstat_eval:calls="), NULL, 10);
	freeReplyObject(r);
	return n;
}

/* The script vanished from the server: one EVAL brings it back. */
static void
test_noscript(void)
{
	struct harness h;
	struct rl_store *st;
	struct ans a;
	redisContext *sc;
	redisReply *r;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	sc = sync_conn(&srv_plain, 0);

	r = redisCommand(sc, "SCRIPT FLUSH");
	freeReplyObject(r);
	r = redisCommand(sc, "CONFIG RESETSTAT");
	freeReplyObject(r);
	CHECK(check1(&h, st, chk("noscript", 5, 60, 1, 0), &a) == RL_ALLOW);
	CHECK(eval_calls(sc) == 1);
	CHECK(check1(&h, st, chk("noscript", 5, 60, 1, 0), &a) == RL_ALLOW);
	CHECK(eval_calls(sc) == 1);	/* EVALSHA again */

	redisFree(sc);
	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/* AUTH and SELECT; a wrong password is an outage, logged once. */
static void
test_auth(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_stats sts;
	struct ans a;
	redisContext *sc;
	long long pttl;

	h_init(&h);
	st = store_new(&h, &srv_auth, "secret", 3, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	CHECK(check1(&h, st, chk("auth", 5, 60, 1, 0), &a) == RL_ALLOW);
	sc = sync_conn(&srv_auth, 3);
	CHECK(sync_int(sc, "EXISTS %s", PREFIX "auth") == 1);
	pttl = sync_int(sc, "PTTL %s", PREFIX "auth");
	CHECKF(pttl > 0 && pttl <= 60000, "pttl %lld", pttl);
	freeReplyObject(redisCommand(sc, "SELECT 0"));
	CHECK(sync_int(sc, "EXISTS %s", PREFIX "auth") == 0);
	redisFree(sc);
	rl_store_free(st);

	st = store_new(&h, &srv_auth, "wrong", 0, 1000);
	CHECK(run_until(&h, pred_outage, st, 2000));
	run_until(&h, NULL, NULL, 500);		/* a few more attempts */
	CHECK(!rl_redis_ready(st));
	CHECK(issue(&h, st, &(struct rl_check){ .key = "x", .keylen = 1,
	    .interval_us = SEC, .window_us = SEC, .cost = 1 }, 1, &a) == 0);
	CHECK(a.res.status == RL_ERROR);
	rl_store_stats(st, &sts);
	CHECK(sts.outages == 1);
	rl_store_free(st);

	st = store_new(&h, &srv_auth, NULL, 0, 1000);
	CHECK(run_until(&h, pred_outage, st, 2000));
	CHECK(!rl_redis_ready(st));
	rl_store_free(st);

	CHECK(h_done(&h) == 0);
}

/* Nothing listens: every check is an error at once; one outage. */
static void
test_down(void)
{
	struct harness h;
	struct srv none = { 0 };
	struct rl_store *st;
	struct rl_stats sts;
	struct ans a;
	int i;

	none.port = free_port();
	h_init(&h);
	st = store_new(&h, &none, NULL, 0, 1000);
	/* Refused at once, not after the 1 s handshake timeout (the 0.14
	 * libuv adapter drops the poll error). */
	CHECK(run_until(&h, pred_outage, st, 500));
	for (i = 0; i < 3; i++) {
		CHECK(issue(&h, st, &(struct rl_check){ .key = "x",
		    .keylen = 1, .interval_us = SEC, .window_us = SEC,
		    .cost = 1 }, 1, &a) == 0);
		CHECK(a.res.status == RL_ERROR);
	}
	run_until(&h, NULL, NULL, 400);		/* retries at 100, 200 ms */
	CHECK(a.calls == 0);
	rl_store_stats(st, &sts);
	CHECK(sts.outages == 1);
	CHECK(sts.checks == 3);
	CHECK(sts.errors == 3);
	CHECK(!rl_redis_ready(st));
	rl_store_free(st);		/* the retry timer is pending */

	/* Freed at once, while connecting. */
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/*
 * Checks c 3 * limit times, alternately on st[0] and st[1] (connected
 * first), then frees both: exactly limit pass, the rest are refused.
 */
static void
shared_limit(struct harness *h, struct rl_store *st[2], struct rl_check c,
    size_t limit)
{
	struct ans a[15];
	struct ans_set set = { a, 3 * limit };
	size_t i, allowed = 0, denied = 0;

	CHECK(3 * limit <= NELEM(a));
	CHECK(run_until(h, pred_ready, st[0], 2000));
	CHECK(run_until(h, pred_ready, st[1], 2000));
	for (i = 0; i < set.n; i++)
		CHECK(issue(h, st[i % 2], &c, 1, &a[i]) == 1);
	CHECK(run_until(h, pred_all_answered, &set, 2000));
	for (i = 0; i < set.n; i++) {
		CHECK(a[i].calls == 1);
		allowed += a[i].res.status == RL_ALLOW;
		denied += a[i].res.status == RL_DENY;
	}
	CHECKF(allowed == limit, "%zu allowed", allowed);
	CHECKF(denied == 2 * limit, "%zu denied", denied);
	rl_store_free(st[0]);
	rl_store_free(st[1]);
}

/* Two stores (two workers) share a key: the limit holds over both. */
static void
test_shared(void)
{
	struct harness h;
	struct rl_store *st[2];

	h_init(&h);
	st[0] = store_new(&h, &srv_plain, NULL, 0, 1000);
	st[1] = store_new(&h, &srv_plain, NULL, 0, 1000);
	shared_limit(&h, st, chk("shared", 5, 60, 1, 0), 5);
	CHECK(h_done(&h) == 0);
}

/*
 * A store on the server's Unix socket (redis: socket:) counts in the same
 * keys as one on its TCP port: the limit holds over both.
 */
static void
test_unix(void)
{
	struct harness h;
	struct rl_store *st[2];
	struct rl_check c = chk("unix", 4, 60, 1, 0);
	struct ans a[1];
	char path[96];
	struct rl_redis_params p = {
		.path = path,
		.password = NULL,
		.db = 0,
		.prefix = PREFIX,
		.timeout_ms = 1000,
		.name = "unix",
	};

	h_init(&h);
	snprintf(path, sizeof(path), "%s/sock", srv_plain.dir);
	st[0] = rl_redis_new(&h.loop, &p);
	st[1] = store_new(&h, &srv_plain, NULL, 0, 1000);
	shared_limit(&h, st, c, 4);

	/* No server at the path: not ready, checks answered RL_ERROR. */
	snprintf(path, sizeof(path), "%s/nothing", srv_plain.dir);
	st[0] = rl_redis_new(&h.loop, &p);
	CHECK(check1(&h, st[0], c, &a[0]) == RL_ERROR);
	CHECK(!rl_redis_ready(st[0]));
	rl_store_free(st[0]);
	CHECK(h_done(&h) == 0);
}

/* rl_store_free() with checks pending answers them RL_ERROR, once. */
static void
test_free_pending(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c = chk("free", 100, 60, 1, 0);
	struct ans a[5];
	size_t i;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	for (i = 0; i < NELEM(a); i++)
		CHECK(issue(&h, st, &c, 1, &a[i]) == 1);
	rl_store_free(st);
	CHECK(a[0].calls == 0);		/* from the loop, not from free */
	run_until(&h, NULL, NULL, 50);
	for (i = 0; i < NELEM(a); i++) {
		CHECK(a[i].calls == 1);
		CHECK(a[i].res.status == RL_ERROR);
	}

	/* Freed by a done: the other pending check is RL_ERROR. */
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	CHECK(issue(&h, st, &c, 1, &a[0]) == 1);
	CHECK(issue(&h, st, &c, 1, &a[1]) == 1);
	a[0].free_st = st;
	run_until(&h, NULL, NULL, 200);
	CHECK(a[0].calls == 1 && a[0].res.status == RL_ALLOW);
	CHECK(a[1].calls == 1 && a[1].res.status == RL_ERROR);

	CHECK(h_done(&h) == 0);
}

/*
 * A stopped server (SIGSTOP): a check is RL_ERROR after the timeout and
 * its late reply is dropped; several timeouts drop the connection; after
 * SIGCONT, or a restart, the store comes back by itself.
 */
static void
test_stall(void)
{
	struct harness h;
	struct rl_store *st, *st2;
	struct rl_check c = chk("stall", 1000, 60, 1, 0);
	struct rl_stats sts;
	struct ans a, b, q[2];
	struct ans_set set = { q, NELEM(q) };
	uint64_t t;
	int i, late;

	h_init(&h);
	st = store_new(&h, &srv_stall, NULL, 0, 50);
	CHECK(run_until(&h, pred_ready, st, 2000));
	for (i = 0; i < 20 && check_wait(&h, st, &c, 1, &a) != RL_ALLOW; i++)
		;
	CHECK(i < 20);
	late = i;

	/* One timeout, then the late reply (before b's) is dropped. */
	kill(srv_stall.pid, SIGSTOP);
	CHECK(issue(&h, st, &c, 1, &a) == 1);
	CHECK(run_until(&h, pred_answered, &a, 2000));
	CHECK(a.calls == 1 && a.res.status == RL_ERROR);
	t = a.at - a.sent;
	CHECKF(t >= 50 && t <= 1000, "answered after %llu ms",
	    (unsigned long long)t);
	kill(srv_stall.pid, SIGCONT);
	CHECK(check_wait(&h, st, &c, 1, &b) == RL_ALLOW);
	CHECK(a.calls == 1);
	CHECK(rl_redis_ready(st));
	rl_store_stats(st, &sts);
	CHECK(sts.outages == 0);

	/* Three in a row: the connection is dropped. */
	kill(srv_stall.pid, SIGSTOP);
	for (i = 0; i < 3; i++) {
		CHECK(rl_redis_ready(st));
		CHECK(check_wait(&h, st, &c, 1, &a) == RL_ERROR);
		CHECK(a.ret == 1 && a.calls == 1);
	}
	CHECK(!rl_redis_ready(st));
	rl_store_stats(st, &sts);
	CHECK(sts.outages == 1);
	CHECK(check_wait(&h, st, &c, 1, &a) == RL_ERROR && a.ret == 0);

	/* Freed during its handshake with the stopped server. */
	st2 = store_new(&h, &srv_stall, NULL, 0, 50);
	run_until(&h, NULL, NULL, 100);
	CHECK(!rl_redis_ready(st2));
	rl_store_free(st2);

	/* Freed by a done called from the timeout, with another pending. */
	kill(srv_stall.pid, SIGCONT);
	st2 = store_new(&h, &srv_stall, NULL, 0, 50);
	CHECK(run_until(&h, pred_ready, st2, 2000));
	kill(srv_stall.pid, SIGSTOP);
	CHECK(issue(&h, st2, &c, 1, &q[0]) == 1);
	CHECK(issue(&h, st2, &c, 1, &q[1]) == 1);
	q[0].free_st = st2;
	CHECK(run_until(&h, pred_all_answered, &set, 2000));
	CHECK(q[0].calls == 1 && q[0].res.status == RL_ERROR);
	CHECK(q[1].calls == 1 && q[1].res.status == RL_ERROR);

	/* Back: answers come again (a loaded machine may still miss the
	 * 50 ms timeout now and then, hence a few tries). */
	kill(srv_stall.pid, SIGCONT);
	CHECK(run_until(&h, pred_ready, st, 10000));
	for (i = 0; i < 20 && check_wait(&h, st, &c, 1, &a) != RL_ALLOW; i++)
		;
	CHECK(i < 20);
	late += i;
	rl_store_stats(st, &sts);
	/* One outage, unless the machine was too slow for 50 ms above. */
	CHECK(sts.outages == 1 || (late > 0 && sts.outages > 1));

	/* Killed with a check pending, then restarted. */
	CHECK(issue(&h, st, &c, 1, &a) == 1);
	srv_kill(&srv_stall);
	CHECK(run_until(&h, pred_not_ready, st, 2000));
	CHECK(run_until(&h, pred_answered, &a, 2000));
	CHECK(a.calls == 1 && a.res.status == RL_ERROR);
	CHECK(check_wait(&h, st, &c, 1, &b) == RL_ERROR && b.ret == 0);
	srv_start(&srv_stall);
	CHECK(run_until(&h, pred_ready, st, 10000));
	CHECK(check_wait(&h, st, &c, 1, &a) == RL_ALLOW);
	CHECK(a.calls == 1);
	rl_store_stats(st, &sts);
	CHECK(sts.outages == 2);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/*
 * Requests and batches are reused: small single checks, then requests of
 * RL_CHECKS_MAX checks with long keys (too large to be kept for reuse),
 * then small ones again, over several rounds.  Each key's count must be
 * exact: a reused request carrying bytes of an older one would count the
 * wrong key or the wrong cost.
 */
static void
test_reuse(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check small[6], big[RL_CHECKS_MAX];
	struct ans a[8];
	struct ans_set set = { a, NELEM(small) };
	char key[RL_KEY_MAX + 1];
	size_t i, k, round;

	h_init(&h);
	st = store_new(&h, &srv_plain, NULL, 0, 1000);
	CHECK(run_until(&h, pred_ready, st, 2000));
	for (i = 0; i < NELEM(small); i++) {
		snprintf(key, sizeof(key), "reuse:s%zu", i);
		/* Limits of 3 per key, a cost of 1. */
		small[i] = chk(key, 3, 60, 1, 0);
	}
	for (k = 0; k < RL_CHECKS_MAX; k++) {
		memset(key, 'a' + (int)k, RL_KEY_MAX);
		key[RL_KEY_MAX] = '\0';
		memcpy(key, "reuse:b", 7);
		big[k] = chk(key, 3, 60, 1, 0);
	}
	for (round = 0; round < 3; round++) {
		/* One batch of single checks. */
		for (i = 0; i < NELEM(small); i++)
			CHECK(issue(&h, st, &small[i], 1, &a[i]) == 1);
		CHECK(run_until(&h, pred_all_answered, &set, 2000));
		for (i = 0; i < NELEM(small); i++)
			CHECKF(a[i].calls == 1 && a[i].res.status == RL_ALLOW,
			    "round %zu small %zu", round, i);
		/* An outsized request. */
		CHECK(check_wait(&h, st, big, RL_CHECKS_MAX, &a[7]) ==
		    RL_ALLOW);
	}
	/* Every key was counted 3 times: the fourth is refused. */
	for (i = 0; i < NELEM(small); i++) {
		CHECK(check_wait(&h, st, &small[i], 1, &a[0]) == RL_DENY);
		CHECK(a[0].res.denied == 0);
	}
	CHECK(check_wait(&h, st, big, RL_CHECKS_MAX, &a[0]) == RL_DENY);
	CHECK(a[0].res.denied == 0);
	for (k = 0; k < RL_CHECKS_MAX; k++)
		CHECK(check_wait(&h, st, &big[k], 1, &a[0]) == RL_DENY);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

/*
 * The deadline timer is not restarted for each request: a request made
 * while it runs for an older one is still answered RL_ERROR on time, never
 * before its own timeout, and in order.
 */
static void
test_lazy_deadline(void)
{
	struct harness h;
	struct rl_store *st;
	struct rl_check c = chk("lazy", 1000, 60, 1, 0);
	struct ans a, b, q[2];
	struct ans_set set = { q, NELEM(q) };
	uint64_t ta, tb;
	int i;

	h_init(&h);
	st = store_new(&h, &srv_stall, NULL, 0, 100);
	CHECK(run_until(&h, pred_ready, st, 2000));
	for (i = 0; i < 20 && check_wait(&h, st, &c, 1, &a) != RL_ALLOW; i++)
		;
	CHECK(i < 20);

	kill(srv_stall.pid, SIGSTOP);
	CHECK(issue(&h, st, &c, 1, &q[0]) == 1);
	/* 50 ms later: the timer runs for q[0]'s deadline. */
	run_until(&h, NULL, NULL, 50);
	CHECK(q[0].calls == 0);
	CHECK(issue(&h, st, &c, 1, &q[1]) == 1);
	CHECK(run_until(&h, pred_all_answered, &set, 3000));
	kill(srv_stall.pid, SIGCONT);
	CHECK(q[0].calls == 1 && q[0].res.status == RL_ERROR);
	CHECK(q[1].calls == 1 && q[1].res.status == RL_ERROR);
	ta = q[0].at - q[0].sent;
	tb = q[1].at - q[1].sent;
	CHECKF(ta >= 100 && tb >= 100, "answered after %llu and %llu ms",
	    (unsigned long long)ta, (unsigned long long)tb);
	CHECK(q[1].at >= q[0].at);
	CHECK(q[1].sent > q[0].sent);

	/* Answers come again; the timer left running does not answer them. */
	for (i = 0; i < 20 && check_wait(&h, st, &c, 1, &b) != RL_ALLOW; i++)
		;
	CHECK(i < 20);
	CHECK(b.calls == 1);

	rl_store_free(st);
	CHECK(h_done(&h) == 0);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(120);		/* a hung test ends; its servers die with it */
	atexit(cleanup);
	srv_auth.password = "secret";
	srv_start(&srv_plain);
	srv_start(&srv_auth);
	srv_start(&srv_stall);

	test_basic();
	test_reentry();
	test_multi();
	test_cost();
	test_force();
	test_vs_mem();
	test_noscript();
	test_auth();
	test_down();
	test_shared();
	test_unix();
	test_free_pending();
	test_stall();
	test_reuse();
	test_lazy_deadline();

	TEST_DONE();
}
