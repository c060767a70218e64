/*
 * main.c: command line, listening sockets, signals, worker threads.
 *
 *   smtpgate -c FILE        run
 *   smtpgate -t -c FILE     check the configuration and exit
 *   smtpgate -V             print the version
 *   smtpgate -c FILE --explain client=IP [helo=..] [from=..] [rcpt=..]
 *                           show what the policy decides, and exit
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "clients.h"
#include "explain.h"
#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"

static void
usage(void)
{
	fprintf(stderr, "usage: smtpgate [-t] -c FILE\n"
	    "       smtpgate -c FILE --explain client=IP [name=NAME] "
	    "[helo=NAME] [from=ADDR] [rcpt=ADDR ...] [header=LINE ...]\n"
	    "       smtpgate -V\n");
	exit(2);
}

/* Warns of what a valid config holds that an operator should fix. */
static void
warn_config(const struct config *cfg)
{
	if (cfg != NULL && cfg->auth_db != NULL &&
	    auth_db_world_readable(cfg->auth_db))
		log_warn("auth: %s is readable by every user of this host; "
		    "chmod o-r it", cfg->auth_users);
}

/* Loads path; prints every error to stderr and returns NULL on failure. */
static struct config *
load(const char *path)
{
	struct config	*cfg;
	char		*errors;

	if ((cfg = config_load(path, &errors)) == NULL) {
		fputs(errors, stderr);
		free(errors);
	}
	warn_config(cfg);
	return cfg;
}

/* A bound, non-blocking socket for one listen address (SO_REUSEPORT). */
static int
bind_listener(const struct cfg_addr *a, uv_os_sock_t *fd)
{
	int one = 1, s;

	s = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (s < 0)
		return -errno;
	if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    (a->ss.ss_family == AF_INET6 && setsockopt(s, IPPROTO_IPV6,
	    IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(s, (const struct sockaddr *)&a->ss, a->sslen) < 0) {
		int e = errno;

		close(s);
		return -e;
	}
	*fd = s;
	return 0;
}

/*
 * Raises the soft limit on open files toward what max_connections needs (a
 * client and a backend connection per session, and some to spare), as far
 * as the hard limit allows; warns when that is not enough.  Past the limit
 * connections get 421 (see worker.c), never a spinning loop.  Returns the
 * limit then in force, or 0 for none (or unknown).
 */
static int
raise_nofile(const struct config *cfg)
{
	struct rlimit	rl;
	rlim_t		want = (rlim_t)cfg->max_connections * 2 + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ||
		    rl.rlim_max > want ? want : rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
		log_warn("the open files limit is %llu: max_connections %u "
		    "needs about %llu; past it connections get 421 (raise the "
		    "hard limit: ulimit -Hn, LimitNOFILE=)",
		    (unsigned long long)rl.rlim_cur, cfg->max_connections,
		    (unsigned long long)want);
	return rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < INT_MAX ?
	    (int)rl.rlim_cur : 0;
}

struct main_state {
	struct proxy_ctx	*ctx;		/* the process */
	uv_signal_t		 sig[4];	/* TERM, INT, HUP, and a spare */
	unsigned		 nsig;
	int			 stopping;	/* stop signals received */
};

static void
reload(struct proxy_ctx *ctx)
{
	struct config	*cfg;
	char		*errors, *line, *save = NULL;
	unsigned	 i;

	if ((cfg = config_load(ctx->config_path, &errors)) == NULL) {
		for (line = strtok_r(errors, "\n", &save); line != NULL;
		    line = strtok_r(NULL, "\n", &save))
			log_error("reload failed, old configuration kept: %s",
			    line);
		free(errors);
		metrics_reloaded(ctx->metrics, 0);
		return;
	}
	if (!config_same_listen(cfg, ctx->cfg)) {
		/*
		 * Sockets are bound at start; a config whose listen: entries
		 * moved would pair them with settings not their own (a PROXY
		 * or TLS listener served plain).  Refused as a whole.
		 */
		log_error("reload failed, old configuration kept: the listen "
		    "addresses changed; restart to change them");
		config_unref(cfg);
		metrics_reloaded(ctx->metrics, 0);
		return;
	}
	warn_config(cfg);
	if (cfg->workers != ctx->cfg->workers ||
	    memcmp(&cfg->redis_addr, &ctx->cfg->redis_addr,
	    sizeof(cfg->redis_addr)) != 0 ||
	    (cfg->redis_socket == NULL) != (ctx->cfg->redis_socket == NULL) ||
	    (cfg->redis_socket != NULL &&
	    strcmp(cfg->redis_socket, ctx->cfg->redis_socket) != 0))
		log_warn("reload: workers and the redis address take effect "
		    "at the next restart");
	if (!config_same_addr(&cfg->metrics_addr, &ctx->metrics_addr))
		/* The endpoint stays as it is; the rest is reloaded. */
		log_warn("reload: the metrics address takes effect at the next "
		    "restart (metrics stay at %s)", ctx->metrics_addr.sslen ?
		    ctx->metrics_addr.text : "none");
	log_set_level(cfg->log_level);
	for (i = 0; i < ctx->nworkers; i++)
		worker_post(&ctx->workers[i], cfg, 0);
	config_unref(ctx->cfg);
	ctx->cfg = cfg;
	metrics_reloaded(ctx->metrics, 1);
	log_info("configuration reloaded from %s", ctx->config_path);
}

static void
signal_cb(uv_signal_t *h, int signum)
{
	struct main_state	*m = h->data;
	unsigned		 i;

	if (signum == SIGHUP) {
		reload(m->ctx);
		return;
	}
	if (m->stopping++ == 0)
		log_info("signal %d: draining (%u ms at most)", signum,
		    m->ctx->cfg->to_drain);
	else
		log_info("signal %d again: closing every session now", signum);
	for (i = 0; i < m->ctx->nworkers; i++)
		worker_post(&m->ctx->workers[i], NULL, m->stopping > 1 ? 2 : 1);
}

/* A worker ended; when all have, closing our handles ends the main loop. */
static void
done_cb(uv_async_t *a)
{
	struct main_state	*m = a->data;
	unsigned		 i;

	if (atomic_load(&m->ctx->ndone) < m->ctx->nworkers)
		return;
	for (i = 0; i < m->nsig; i++)
		uv_close((uv_handle_t *)&m->sig[i], NULL);
	uv_close((uv_handle_t *)a, NULL);
}

static int
run(struct proxy_ctx *ctx)
{
	static const int	 signums[] = { SIGTERM, SIGINT, SIGHUP };
	struct main_state	 m = { .ctx = ctx };
	struct config		*cfg = ctx->cfg;
	const char		*names[CFG_MAX_LISTEN];
	char			 err[256];
	unsigned		 i, j;
	int			 r;

	ctx->nworkers = cfg->workers;
	if ((ctx->workers = calloc(ctx->nworkers, sizeof(*ctx->workers))) ==
	    NULL)
		fatalx("out of memory");
	for (i = 0; i < ctx->nworkers; i++) {
		ctx->workers[i].nlisteners = cfg->nlisten;
		for (j = 0; j < cfg->nlisten; j++) {
			r = bind_listener(&cfg->listen[j].addr,
			    &ctx->workers[i].fds[j]);
			if (r < 0) {
				log_error("cannot listen on %s: %s",
				    cfg->listen[j].addr.text, strerror(-r));
				return 1;
			}
		}
	}
	ctx->fd_limit = raise_nofile(cfg);
	for (j = 0; j < cfg->nlisten; j++)
		names[j] = cfg->listen[j].addr.text;
	if ((ctx->metrics = metrics_new(ctx->nworkers, names, cfg->nlisten)) ==
	    NULL)
		fatalx("out of memory");
	if (cfg->metrics_addr.sslen != 0) {
		ctx->metrics_http = metrics_http_start(ctx->metrics,
		    &cfg->metrics_addr, err, sizeof(err));
		if (ctx->metrics_http == NULL) {
			log_error("cannot serve metrics on %s: %s",
			    cfg->metrics_addr.text, err);
			metrics_free(ctx->metrics);
			free(ctx->workers);
			config_unref(ctx->cfg);
			return 1;
		}
		log_info("metrics served at http://%s/metrics",
		    cfg->metrics_addr.text);
	}
	ctx->metrics_addr = cfg->metrics_addr;
	signal(SIGPIPE, SIG_IGN);
	for (i = 0; i < sizeof(signums) / sizeof(signums[0]); i++) {
		uv_signal_init(uv_default_loop(), &m.sig[i]);
		m.sig[i].data = &m;
		uv_signal_start(&m.sig[i], signal_cb, signums[i]);
		m.nsig++;
	}
	if ((ctx->rl_mem = rl_mem_new()) == NULL ||
	    (ctx->clients = client_table_new()) == NULL)
		fatalx("out of memory");
	uv_async_init(uv_default_loop(), &ctx->done_async, done_cb);
	ctx->done_async.data = &m;
	for (i = 0; i < ctx->nworkers; i++)
		if ((r = worker_start(ctx, &ctx->workers[i], i)) < 0)
			fatalx("worker %u: %s", i, uv_strerror(r));
	log_info("smtpgate %s started: %u workers, listening on %s%s, "
	    "backend %s", SMTPGATE_VERSION, ctx->nworkers, cfg->listen[0].addr.text,
	    cfg->nlisten > 1 ? " and more" : "", cfg->backends[0].text);
	uv_run(uv_default_loop(), UV_RUN_DEFAULT);
	for (i = 0; i < ctx->nworkers; i++)
		worker_join(&ctx->workers[i]);
	/* Scrapes are answered until every worker has drained. */
	metrics_http_stop(ctx->metrics_http);
	metrics_free(ctx->metrics);
	uv_loop_close(uv_default_loop());
	log_info("smtpgate stopped: %llu transactions relayed",
	    (unsigned long long)atomic_load(&ctx->ntx));
	free(ctx->workers);
	rl_store_free(ctx->rl_mem);
	client_table_free(ctx->clients);
	config_unref(ctx->cfg);
	return 0;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "explain", no_argument, NULL, 'E' },
		{ NULL, 0, NULL, 0 }
	};
	struct proxy_ctx	 ctx;
	const char		*path = NULL;
	int			 ch, test = 0, explain = 0, r;

	while ((ch = getopt_long(argc, argv, "+c:tVh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'E':
			explain = 1;
			break;
		case 'V':
			printf("smtpgate %s\n", SMTPGATE_VERSION);
			return 0;
		default:
			usage();
		}
	}
	if (path == NULL || (optind != argc && !explain))
		usage();
	memset(&ctx, 0, sizeof(ctx));
	ctx.config_path = path;
	if ((ctx.cfg = load(path)) == NULL)
		return 1;
	if (explain) {
		log_set_level(LOG_LVL_WARNING);
		r = explain_run(ctx.cfg, argc - optind, argv + optind);
		config_unref(ctx.cfg);
		return r;
	}
	if (test) {
		printf("smtpgate: configuration %s is valid\n", path);
		config_unref(ctx.cfg);
		return 0;
	}
	log_set_level(ctx.cfg->log_level);
	return run(&ctx);
}
