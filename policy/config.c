/*
 * config.c: loads the YAML configuration file into a struct config.
 *
 * libyaml's document API builds a node tree; the tree is then walked with
 * one table of key descriptors per map (name, type, where the value goes,
 * its range), so a map of any depth is read by the same loop,
 * cfg_walk_map().  Errors do not stop the walk: each is recorded with the
 * position of the node at fault, and config_load() returns them all,
 * sorted into file order.  Reading, parsing, key lookup and the error list
 * are shared with the policy loader (yamlutil.c).
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <yaml.h>

#include "auth.h"
#include "config.h"
#include "policy.h"
#include "tlsio.h"
#include "yamlutil.h"

#define CFG_FILE_MAX	(1024 * 1024)	/* larger is not a config file */
#define CFG_MAX_WORKERS	64
#define CFG_MS_DAY	(24u * 3600 * 1000)

/* What a key's value must be, and so how it is read and stored. */
enum cfg_type {
	CT_MAP,		/* nested map; sub lists its keys */
	CT_LISTEN,	/* list of maps with sub's keys, into a cfg_addr[] */
	CT_ADDRS,	/* list of "host:port" strings, into a cfg_addr[] */
	CT_ADDR,	/* one "host:port", into a struct cfg_addr */
	CT_UINT,	/* decimal integer, into an unsigned */
	CT_SIZE,	/* integer with optional K/M/G, into a uint64_t */
	CT_DURATION,	/* integer with optional ms/s/m/h, into an unsigned
			 * in milliseconds (a bare integer means seconds) */
	CT_BOOL,	/* true/false/yes/no, into a bool */
	CT_LOGLEVEL,	/* error/warning/info/debug, into an enum log_level */
	CT_HOST,	/* host name, into a char[max] */
	CT_PATH,	/* file name, into a malloc'd char * made absolute */
	CT_STRING,	/* printable ASCII text, into a char[max] */
	CT_ONERROR,	/* allow/tempfail, into a bool (true: tempfail) */
	CT_TLSMODE,	/* none/starttls/implicit, into an enum cfg_tls */
	CT_BETLS,	/* none/opportunistic/required, into an enum cfg_be_tls */
	CT_TLSVER,	/* TLSv1.2/TLSv1.3, into an unsigned (OpenSSL's number) */
	CT_CIDRS	/* list of networks ("10.0.0.0/8", "::1"), into a
			 * struct cidr_set * */
};

/* One key a map may hold.  A table of these ends with a NULL name. */
struct cfg_key {
	const char		*name;	/* key as written in the file */
	enum cfg_type		 type;	/* what the value must be */
	size_t			 off;	/* where the value goes, from the
					 * base of the enclosing map */
	uint64_t		 min;	/* smallest value (for lists:
					 * fewest entries) */
	uint64_t		 max;	/* largest value (lists: most
					 * entries; CT_HOST: buffer size) */
	const struct cfg_key	*sub;	/* keys of a CT_MAP, or of each
					 * CT_LISTEN entry */
	size_t			 noff;	/* lists: where the count goes */
	int			 required; /* an error when absent */
};


/* A setting already given, to catch two keys that set one field. */
struct cfg_seen {
	void	*dst;		/* the field */
	char	 path[64];	/* key that set it, e.g. "log_level" */
	size_t	 line;		/* 1-based line of that key */
};

/* State of one config_load() call. */
struct cfg_ctx {
	const char	*file;		/* path, as given, for messages */
	yaml_document_t	*doc;		/* the tree being walked */
	struct config	*cfg;		/* what is being filled */
	struct yu_errs	 errs;		/* errors found so far */
	struct cfg_seen	 seen[64];	/* scalar settings given so far */
	size_t		 nseen;		/* entries used in seen */
	yaml_mark_t	 listen_mark[CFG_MAX_LISTEN];	/* where each listen:
					 * entry starts, for later checks */
	yaml_mark_t	 backend_mark;	/* where backend: starts */
};

#define C(f)	offsetof(struct config, f)

/* A scalar value, a nested map, and the end of a table. */
#define KV(n, t, f, lo, hi)	{ n, t, C(f), lo, hi, NULL, 0, 0 }
#define KM(n, sub, req)		{ n, CT_MAP, 0, 0, 0, sub, 0, req }
#define KEND			{ NULL, 0, 0, 0, 0, NULL, 0, 0 }
#define DAY			CFG_MS_DAY
#define HOSTSZ			sizeof(((struct config *)0)->hostname)

static const struct cfg_key log_keys[] = {
	KV("level",		CT_LOGLEVEL, log_level,		0, 0),
	KEND
};

/* Offsets here are from the start of one struct cfg_listen. */
#define L(f)	offsetof(struct cfg_listen, f)
#define LV(n, t, f, lo, hi)	{ n, t, L(f), lo, hi, NULL, 0, 0 }
static const struct cfg_key listen_keys[] = {
	{ "address", CT_ADDR, L(addr), 0, 0, NULL, 0, 1 },
	LV("tls",		CT_TLSMODE,  tls,		0, 0),
	LV("require_tls",	CT_BOOL,     require_tls,	0, 0),
	LV("cert_file",		CT_PATH,     cert_file,		0, 0),
	LV("key_file",		CT_PATH,     key_file,		0, 0),
	LV("ciphers",		CT_STRING,   ciphers,		0,
	    sizeof(((struct cfg_listen *)0)->ciphers)),
	LV("min_protocol",	CT_TLSVER,   min_tls,		0, 0),
	LV("auth",		CT_BOOL,     auth,		0, 0),
	LV("proxy_protocol",	CT_BOOL,     proxy_protocol,	0, 0),
	LV("proxy_from",	CT_CIDRS,    proxy_from,	0, 0),
	LV("quiet",		CT_BOOL,     quiet,		0, 0),
	KEND
};

static const struct cfg_key backend_timeout_keys[] = {
	KV("connect",		CT_DURATION, to_be_connect,	1, DAY),
	KV("greeting",		CT_DURATION, to_be_greeting,	1, DAY),
	KV("helo",		CT_DURATION, to_be_helo,	1, DAY),
	KV("mail",		CT_DURATION, to_be_mail,	1, DAY),
	KV("rcpt",		CT_DURATION, to_be_rcpt,	1, DAY),
	KV("data_init",		CT_DURATION, to_be_data_init,	1, DAY),
	KV("data_block",	CT_DURATION, to_be_data_block,	1, DAY),
	KV("data_done",		CT_DURATION, to_be_data_done,	1, DAY),
	KEND
};

static const struct cfg_key backend_keys[] = {
	{ "servers", CT_ADDRS, C(backends), 1, CFG_MAX_BACKENDS, NULL,
	    C(nbackends), 1 },
	KV("xclient",		CT_BOOL,     xclient,		0, 0),
	KV("xclient_before_ehlo", CT_BOOL,   xclient_first,	0, 0),
	KV("helo_name",		CT_HOST,     backend_helo,	0, HOSTSZ),
	KM("timeouts",		backend_timeout_keys, 0),
	KV("tls",		CT_BETLS,    be_tls,		0, 0),
	KV("ca_file",		CT_PATH,     be_ca_file,	0, 0),
	KV("verify",		CT_BOOL,     be_verify,		0, 0),
	KV("tls_name",		CT_HOST,     be_tls_name,	0, HOSTSZ),
	KEND
};

static const struct cfg_key auth_keys[] = {
	KV("users_file",	CT_PATH,     auth_users,	0, 0),
	KEND
};

static const struct cfg_key limits_keys[] = {
	KV("max_message_size",	CT_SIZE, max_message_size, 1, UINT64_MAX),
	KV("max_recipients",	CT_UINT, max_recipients,   1, UINT_MAX),
	KV("max_line_length",	CT_UINT, max_line_length,  512, 65536),
	KV("max_connections",	CT_UINT, max_connections,  1, UINT_MAX),
	KV("max_errors",	CT_UINT, max_errors,	   1, UINT_MAX),
	KV("max_connections_per_client", CT_UINT, max_conn_per_client, 0,
	    UINT_MAX),
	KV("max_failures_per_client", CT_UINT, max_failures, 0, UINT_MAX),
	KV("failure_window",	CT_DURATION, failure_window, 1, DAY),
	KV("min_data_rate",	CT_UINT, min_data_rate,    0, UINT_MAX),
	KEND
};

static const struct cfg_key timeout_keys[] = {
	KV("command",		CT_DURATION, to_command,	1, DAY),
	KV("data",		CT_DURATION, to_data,		1, DAY),
	KV("drain",		CT_DURATION, to_drain,		0, DAY),
	KV("handshake",		CT_DURATION, to_handshake,	1, DAY),
	KEND
};

static const struct cfg_key smtp_keys[] = {
	KV("expn",		CT_BOOL,     smtp_expn,		0, 0),
	KV("reverse_dns",	CT_BOOL,     smtp_reverse_dns,	0, 0),
	KV("reverse_dns_cache",	CT_DURATION, smtp_rdns_cache,	0, DAY),
	KEND
};

static const struct cfg_key redis_keys[] = {
	{ "address", CT_ADDR, C(redis_addr), 0, 0, NULL, 0, 0 },
	KV("socket",		CT_PATH,     redis_socket,	0, 0),
	KV("password",		CT_STRING,   redis_password,	0,
	    sizeof(((struct config *)0)->redis_password)),
	KV("db",		CT_UINT,     redis_db,		0, 1000000),
	KV("key_prefix",	CT_STRING,   redis_prefix,	0,
	    sizeof(((struct config *)0)->redis_prefix)),
	KV("timeout",		CT_DURATION, redis_timeout,	1, 60000),
	KV("on_error",		CT_ONERROR,  redis_tempfail,	0, 0),
	KEND
};

static const struct cfg_key metrics_keys[] = {
	{ "address", CT_ADDR, C(metrics_addr), 0, 0, NULL, 0, 1 },
	KEND
};

static const struct cfg_key root_keys[] = {
	KV("hostname",		CT_HOST,     hostname,		0, HOSTSZ),
	KV("workers",		CT_UINT,     workers,	0, CFG_MAX_WORKERS),
	KV("log_level",		CT_LOGLEVEL, log_level,		0, 0),
	KM("log",		log_keys, 0),
	{ "listen", CT_LISTEN, C(listen), 1, CFG_MAX_LISTEN, listen_keys,
	    C(nlisten), 1 },
	KM("backend",		backend_keys, 1),
	KM("limits",		limits_keys, 0),
	KM("timeouts",		timeout_keys, 0),
	KM("smtp",		smtp_keys, 0),
	KV("policy",		CT_PATH,     policy_path,	0, 0),
	KM("redis",		redis_keys, 0),
	KM("auth",		auth_keys, 0),
	KM("metrics",		metrics_keys, 0),
	KEND
};

static const char *log_levels[] = { "error", "warning", "info", "debug" };

/* The words of the enumerated types, in their enums' order. */
static const char *const tls_modes[] = { "none", "starttls", "implicit" };
static const char *const be_tls_modes[] = { "none", "opportunistic",
    "required" };
static const char *const tls_versions[] = { "TLSv1.2", "TLSv1.3" };
static const unsigned tls_version_ids[] = { TLS1_2_VERSION, TLS1_3_VERSION };

/* Returns the index of s in words[0..n), case-insensitive, or -1. */
static int
cfg_word(const char *s, const char *const *words, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcasecmp(s, words[i]) == 0)
			return (int)i;
	return -1;
}

/*
 * Records an error at mark (0-based, as libyaml gives it), or for the whole
 * file when mark is NULL.  The message is copied; nothing is returned.
 */
static void __attribute__((format(printf, 3, 4)))
cfg_error(struct cfg_ctx *c, const yaml_mark_t *mark, const char *fmt, ...)
{
	va_list		 ap;

	va_start(ap, fmt);
	yu_verror(&c->errs, mark, fmt, ap);
	va_end(ap);
}

/* Returns what a key's value must be, for "expected ..." messages. */
static const char *
cfg_expect(const struct cfg_key *k)
{
	switch (k->type) {
	case CT_MAP:
		return "a map of settings";
	case CT_LISTEN:
		return "a list of entries such as "
		    "\"- address: 127.0.0.1:2525\"";
	case CT_ADDRS:
		return "a list of addresses such as [127.0.0.1:10025]";
	case CT_ADDR:
		return "an address such as 127.0.0.1:2525 or [::1]:2525";
	case CT_UINT:
		return k->min ? "a positive integer" : "a non-negative integer";
	case CT_SIZE:
		return "a size in bytes, optionally with a K, M or G suffix "
		    "(e.g. 50M)";
	case CT_DURATION:
		return "a duration such as 30s, 5m, 50ms or 1h";
	case CT_BOOL:
		return "true or false";
	case CT_LOGLEVEL:
		return "one of error, warning, info, debug";
	case CT_HOST:
		return "a host name such as gate.example.test";
	case CT_PATH:
		return "a file name";
	case CT_STRING:
		return "a text of printable characters";
	case CT_ONERROR:
		return "allow or tempfail";
	case CT_TLSMODE:
		return "one of none, starttls, implicit";
	case CT_BETLS:
		return "one of none, opportunistic, required";
	case CT_TLSVER:
		return "TLSv1.2 or TLSv1.3";
	case CT_CIDRS:
		return "a list of networks such as [127.0.0.1, 10.0.0.0/8]";
	}
	return "a value";
}

/* Formats ms as the shortest exact duration ("5m", "50ms") into buf. */
static const char *
cfg_fmt_ms(uint64_t ms, char *buf, size_t size)
{
	if (ms != 0 && ms % 3600000 == 0)
		snprintf(buf, size, "%lluh",
		    (unsigned long long)(ms / 3600000));
	else if (ms != 0 && ms % 60000 == 0)
		snprintf(buf, size, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, size, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, size, "%llums", (unsigned long long)ms);
	return buf;
}

/*
 * Parses "host:port", "[v6]:port" or "*:port" into a (zeroed first).
 * Returns NULL, or why text is not a valid address.
 */
static const char *
cfg_addr_parse(const char *text, struct cfg_addr *a)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&a->ss;
	char			 host[64];
	const char		*start, *end;
	size_t			 hlen;
	uint64_t		 pn;
	int			 v6 = text[0] == '[';

	memset(a, 0, sizeof(*a));
	if (strlen(text) >= sizeof(a->text))
		return "it is too long";
	if (v6 && ((end = strchr(text, ']')) == NULL || end[1] != ':'))
		return "expected [IPv6]:port";
	if (!v6 && (end = strrchr(text, ':')) == NULL)
		return "the port is missing (expected host:port)";
	start = text + v6;
	if ((hlen = (size_t)(end - start)) == 0)
		return "the host is missing (use * for any address)";
	if (hlen >= sizeof(host))
		return "the host is too long";
	memcpy(host, start, hlen);
	host[hlen] = '\0';
	if (yu_number(end + 1 + v6, yu_units_int, &pn) != 0 || pn < 1 ||
	    pn > 65535)
		return "the port must be a number from 1 to 65535";

	if (v6) {
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return "not a numeric IPv6 address";
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)pn);
		a->sslen = sizeof(*sin6);
	} else {
		if (strchr(host, ':') != NULL)
			return "IPv6 addresses go in brackets, e.g. [::1]:25";
		if (strcmp(host, "*") == 0)
			sin->sin_addr.s_addr = htonl(INADDR_ANY);
		else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return "not a numeric IP address (host names are not "
			    "accepted)";
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)pn);
		a->sslen = sizeof(*sin);
	}
	strcpy(a->text, text);
	return NULL;
}

/*
 * Returns a malloc'd absolute path for name: as is when absolute, else
 * joined to the directory of the config file.
 */
static char *
cfg_resolve(const char *file, const char *name)
{
	char	*dir, *slash, *out;

	if (name[0] == '/')
		return yu_xstrdup(name);
	if ((dir = realpath(file, NULL)) == NULL) {
		/* Read but gone since: keep the file's own spelling. */
		dir = yu_xstrdup(file);
		if ((slash = strrchr(dir, '/')) == NULL)
			strcpy(dir, ".");
		else
			slash[slash == dir] = '\0';
	} else if ((slash = strrchr(dir, '/')) != NULL)
		slash[slash == dir] = '\0';
	if (asprintf(&out, "%s%s%s", dir,
	    dir[strlen(dir) - 1] == '/' ? "" : "/", name) < 0)
		yu_oom();
	free(dir);
	return out;
}

/*
 * Notes that path set the field dst.  Returns 0, or -1 after reporting an
 * error when another key (log_level and log.level) already set it.
 */
static int
cfg_seen(struct cfg_ctx *c, void *dst, const char *path, const yaml_node_t *k)
{
	struct cfg_seen	*s;
	size_t		 i;

	for (i = 0; i < c->nseen; i++) {
		if (c->seen[i].dst != dst)
			continue;
		cfg_error(c, &k->start_mark, "%s: conflicts with %s, set at "
		    "line %zu", path, c->seen[i].path, c->seen[i].line);
		return -1;
	}
	if (c->nseen < sizeof(c->seen) / sizeof(c->seen[0])) {
		s = &c->seen[c->nseen++];
		s->dst = dst;
		/* Known keys only reach here: short names. */
		snprintf(s->path, sizeof(s->path), "%.63s", path);
		s->line = k->start_mark.line + 1;
	}
	return 0;
}

static void cfg_walk_map(struct cfg_ctx *, const yaml_node_t *,
    const struct cfg_key *, char *, const char *);

/*
 * Reads the list of networks at v into a struct cidr_set * at dst (the
 * old one, if any, is replaced).
 */
static void
cfg_cidrs(struct cfg_ctx *c, const struct cfg_key *k, const yaml_node_t *v,
    void *dst, const char *path)
{
	struct cidr		 nets[64];
	const yaml_node_t	*item;
	yaml_node_item_t	*it;
	const char		*why;
	char			 got[80];
	size_t			 n = 0, errs = c->errs.n;

	if (v->type != YAML_SEQUENCE_NODE) {
		cfg_error(c, &v->start_mark, "%s: expected %s, got %s", path,
		    cfg_expect(k), yu_got(v, got, sizeof(got)));
		return;
	}
	for (it = v->data.sequence.items.start;
	    it < v->data.sequence.items.top; it++) {
		item = yaml_document_get_node(c->doc, *it);
		if (n == sizeof(nets) / sizeof(nets[0])) {
			cfg_error(c, &item->start_mark, "%s: too many entries "
			    "(at most %zu)", path, n);
			return;
		}
		if (item->type != YAML_SCALAR_NODE || yu_isempty(item))
			cfg_error(c, &item->start_mark, "%s[%zu]: expected a "
			    "network such as 10.0.0.0/8, got %s", path, n,
			    yu_got(item, got, sizeof(got)));
		else if ((why = cidr_parse((const char *)
		    item->data.scalar.value, &nets[n])) != NULL)
			cfg_error(c, &item->start_mark, "%s[%zu]: %s: %s",
			    path, n, yu_got(item, got, sizeof(got)), why);
		n++;
	}
	if (c->errs.n != errs)
		return;
	cidr_set_free(*(struct cidr_set **)dst);
	if ((*(struct cidr_set **)dst = cidr_set_new(nets, n)) == NULL)
		yu_oom();
}

/*
 * Checks what one listen: entry l (node item, name ipath) says about TLS,
 * AUTH and PROXY, and builds its TLS context.
 */
static void
cfg_listen_check(struct cfg_ctx *c, const yaml_node_t *item,
    struct cfg_listen *l, const char *ipath)
{
	struct tlsio_server_params	 p;
	char				 err[256];

	if (l->min_tls == 0)
		l->min_tls = TLS1_2_VERSION;
	if (l->require_tls && l->tls != CFG_TLS_STARTTLS)
		cfg_error(c, &item->start_mark, "%s: require_tls needs "
		    "tls: starttls", ipath);
	if (l->auth && l->tls == CFG_TLS_NONE)
		cfg_error(c, &item->start_mark, "%s: auth needs tls: starttls "
		    "or implicit (AUTH is offered only under TLS)", ipath);
	if (l->proxy_from != NULL && !l->proxy_protocol)
		cfg_error(c, &item->start_mark, "%s: proxy_from needs "
		    "proxy_protocol: true", ipath);
	if (l->proxy_protocol && l->proxy_from == NULL) {
		struct cidr lo[2];

		/* Default: the proxy runs on this host. */
		if (cidr_parse("127.0.0.0/8", &lo[0]) != NULL ||
		    cidr_parse("::1", &lo[1]) != NULL ||
		    (l->proxy_from = cidr_set_new(lo, 2)) == NULL)
			yu_oom();
	}
	if (l->tls == CFG_TLS_NONE)
		return;
	if (l->cert_file == NULL || l->key_file == NULL) {
		cfg_error(c, &item->start_mark, "%s: tls: %s needs cert_file "
		    "and key_file", ipath, tls_modes[l->tls]);
		return;
	}
	p.cert_file = l->cert_file;
	p.key_file = l->key_file;
	p.ciphers = l->ciphers;
	p.min_version = (int)l->min_tls;
	if ((l->tls_ctx = tlsio_server_ctx(&p, err, sizeof(err))) == NULL)
		cfg_error(c, &item->start_mark, "%s: cannot use cert_file %s "
		    "and key_file %s: %s", ipath, l->cert_file, l->key_file,
		    err);
}

bool
config_same_addr(const struct cfg_addr *a, const struct cfg_addr *b)
{
	return a->sslen == b->sslen && memcmp(&a->ss, &b->ss, a->sslen) == 0;
}

/*
 * Reads a list (CT_LISTEN into a cfg_listen array, CT_ADDRS into a
 * cfg_addr array) from node v at base + k->off, its count at
 * base + k->noff.
 */
static void
cfg_walk_list(struct cfg_ctx *c, const struct cfg_key *k, const yaml_node_t *v,
    char *base, const char *path)
{
	struct cfg_addr		*arr = (struct cfg_addr *)(base + k->off);
	struct cfg_listen	*ls = (struct cfg_listen *)(base + k->off);
	unsigned		*count = (unsigned *)(base + k->noff);
	const yaml_node_t	*item;
	yaml_node_item_t	*it;
	const char		*why;
	char			 ipath[128], got[80];
	size_t			 errs;
	unsigned		 i;

	*count = 0;
	for (it = v->data.sequence.items.start;
	    it < v->data.sequence.items.top; it++) {
		item = yaml_document_get_node(c->doc, *it);
		snprintf(ipath, sizeof(ipath), "%.100s[%u]", path, *count);
		if (*count == k->max) {
			cfg_error(c, &item->start_mark, "%s: too many entries "
			    "(at most %llu)", path, (unsigned long long)k->max);
			return;
		}
		if (k->type == CT_LISTEN && item->type != YAML_MAPPING_NODE) {
			cfg_error(c, &item->start_mark, "%s: expected a map "
			    "such as \"address: 127.0.0.1:2525\", got %s",
			    ipath, yu_got(item, got, sizeof(got)));
		} else if (k->type == CT_LISTEN) {
			errs = c->errs.n;
			cfg_walk_map(c, item, k->sub, (char *)&ls[*count],
			    ipath);
			for (i = 0; c->errs.n == errs && i < *count; i++) {
				if (!config_same_addr(&ls[i].addr,
				    &ls[*count].addr))
					continue;
				cfg_error(c, &item->start_mark, "%s.address: "
				    "%s is already listed as %s[%u]", ipath,
				    ls[*count].addr.text, path, i);
			}
			if (c->errs.n == errs)
				cfg_listen_check(c, item, &ls[*count], ipath);
			c->listen_mark[*count] = item->start_mark;
		} else if (item->type != YAML_SCALAR_NODE ||
		    yu_isempty(item)) {
			cfg_error(c, &item->start_mark, "%s: expected %s, got "
			    "%s", ipath, cfg_expect(&listen_keys[0]),
			    yu_got(item, got, sizeof(got)));
		} else if ((why = cfg_addr_parse(
		    (const char *)item->data.scalar.value,
		    &arr[*count])) != NULL) {
			cfg_error(c, &item->start_mark, "%s: invalid address "
			    "%s: %s", ipath, yu_got(item, got, sizeof(got)),
			    why);
		} else if (strncmp(arr[*count].text, "*:", 2) == 0) {
			cfg_error(c, &item->start_mark, "%s: \"*\" means any "
			    "local address and is only valid for listen",
			    ipath);
		}
		(*count)++;
	}
	if (*count < k->min)
		cfg_error(c, &v->start_mark, "%s: at least %llu %s required",
		    path, (unsigned long long)k->min,
		    k->min == 1 ? "entry is" : "entries are");
}

/*
 * Reads the value node v of key k (full name path, key node kn) into
 * base + k->off, or reports why it cannot.
 */
static void
cfg_set(struct cfg_ctx *c, const struct cfg_key *k, const yaml_node_t *kn,
    const yaml_node_t *v, char *base, const char *path)
{
	void		*dst = base + k->off;
	const char	*s, *why;
	char		 got[80], lo[32], hi[32];
	uint64_t	 n;
	size_t		 i;
	int		 r;

	if (k->type == CT_CIDRS) {
		cfg_cidrs(c, k, v, dst, path);
		return;
	}
	if (k->type == CT_MAP || k->type == CT_LISTEN || k->type == CT_ADDRS) {
		if (v->type != (k->type == CT_MAP ? YAML_MAPPING_NODE :
		    YAML_SEQUENCE_NODE))
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
		else if (k->type == CT_MAP)
			cfg_walk_map(c, v, k->sub, base, path);
		else
			cfg_walk_list(c, k, v, base, path);
		return;
	}
	if ((s = yu_scalar(&c->errs, v, path, cfg_expect(k))) == NULL)
		return;
	if (cfg_seen(c, dst, path, kn) == -1)
		return;

	switch (k->type) {
	case CT_UINT:
	case CT_SIZE:
	case CT_DURATION:
		r = yu_number(s, k->type == CT_UINT ? yu_units_int :
		    k->type == CT_SIZE ? yu_units_size : yu_units_duration, &n);
		if (r == -1 || (r == 0 && n == 0 && k->min == 1 &&
		    k->type == CT_UINT)) {
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
			break;
		}
		if (r == -2 || n < k->min || n > k->max) {
			if (k->type == CT_DURATION) {
				cfg_fmt_ms(k->min, lo, sizeof(lo));
				cfg_fmt_ms(k->max, hi, sizeof(hi));
			} else {
				snprintf(lo, sizeof(lo), "%llu",
				    (unsigned long long)k->min);
				snprintf(hi, sizeof(hi), "%llu",
				    (unsigned long long)k->max);
			}
			if (k->max == UINT64_MAX)
				cfg_error(c, &v->start_mark, "%s: must be at "
				    "least %s, got %s", path, lo,
				    yu_got(v, got, sizeof(got)));
			else
				cfg_error(c, &v->start_mark, "%s: must be from "
				    "%s to %s, got %s", path, lo, hi,
				    yu_got(v, got, sizeof(got)));
			break;
		}
		if (k->type == CT_SIZE)
			*(uint64_t *)dst = n;
		else
			*(unsigned *)dst = (unsigned)n;
		break;
	case CT_BOOL:
		if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0)
			*(bool *)dst = true;
		else if (strcasecmp(s, "false") == 0 ||
		    strcasecmp(s, "no") == 0)
			*(bool *)dst = false;
		else
			cfg_error(c, &v->start_mark, "%s: expected true or "
			    "false (or yes/no), got %s", path,
			    yu_got(v, got, sizeof(got)));
		break;
	case CT_LOGLEVEL:
		for (i = 0; i < sizeof(log_levels) / sizeof(log_levels[0]); i++)
			if (strcasecmp(s, log_levels[i]) == 0)
				break;
		if (i < sizeof(log_levels) / sizeof(log_levels[0]))
			*(enum log_level *)dst = (enum log_level)i;
		else
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
		break;
	case CT_HOST:
		if ((why = yu_host_check(s, k->max)) != NULL)
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s: "
			    "%s", path, cfg_expect(k),
			    yu_got(v, got, sizeof(got)), why);
		else
			strcpy(dst, s);
		break;
	case CT_ADDR:
		if ((why = cfg_addr_parse(s, dst)) != NULL)
			cfg_error(c, &v->start_mark, "%s: invalid address "
			    "%s: %s", path, yu_got(v, got, sizeof(got)), why);
		break;
	case CT_STRING:
		for (i = 0; s[i] > 0x20 && s[i] < 0x7f; i++)
			;
		if (s[i] != '\0' || i >= k->max)
			cfg_error(c, &v->start_mark, "%s: expected %s (no "
			    "spaces, at most %llu), got %s", path,
			    cfg_expect(k), (unsigned long long)k->max - 1,
			    yu_got(v, got, sizeof(got)));
		else
			strcpy(dst, s);
		break;
	case CT_ONERROR:
		if (strcasecmp(s, "allow") == 0 ||
		    strcasecmp(s, "tempfail") == 0)
			*(bool *)dst = strcasecmp(s, "tempfail") == 0;
		else
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
		break;
	case CT_TLSMODE:
	case CT_BETLS:
	case CT_TLSVER:
		r = k->type == CT_TLSMODE ? cfg_word(s, tls_modes, 3) :
		    k->type == CT_BETLS ? cfg_word(s, be_tls_modes, 3) :
		    cfg_word(s, tls_versions, 2);
		if (r < 0)
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
		else if (k->type == CT_TLSMODE)
			*(enum cfg_tls *)dst = (enum cfg_tls)r;
		else if (k->type == CT_BETLS)
			*(enum cfg_be_tls *)dst = (enum cfg_be_tls)r;
		else
			*(unsigned *)dst = tls_version_ids[r];
		break;
	case CT_PATH:
		if (s[0] == '\0') {
			cfg_error(c, &v->start_mark, "%s: expected %s, got %s",
			    path, cfg_expect(k), yu_got(v, got, sizeof(got)));
			break;
		}
		free(*(char **)dst);
		*(char **)dst = cfg_resolve(c->file, s);
		break;
	default:
		break;
	}
}

/*
 * Reports each required key of keys that seen[] does not mark, at mark
 * (the enclosing map).  A missing map names its first required key
 * ("backend.servers").
 */
static void
cfg_required(struct cfg_ctx *c, const struct cfg_key *keys, const char *seen,
    const yaml_mark_t *mark, const char *prefix)
{
	const struct cfg_key	*k, *sub;
	const char		*subname;

	for (k = keys; k->name != NULL; k++) {
		if (!k->required || seen[k - keys])
			continue;
		subname = NULL;
		for (sub = k->type == CT_MAP ? k->sub : NULL;
		    sub != NULL && sub->name != NULL; sub++)
			if (sub->required) {
				subname = sub->name;
				break;
			}
		cfg_error(c, mark, "%s%s%s%s%s: required setting is missing",
		    prefix, *prefix ? "." : "", k->name, subname ? "." : "",
		    subname ? subname : "");
	}
}

/*
 * Reads the mapping node map whose keys are described by keys; values go
 * to base + each key's offset.  prefix is the map's own name ("" at the
 * top, "backend", "listen[0]").
 */
static void
cfg_walk_map(struct cfg_ctx *c, const yaml_node_t *map,
    const struct cfg_key *keys, char *base, const char *prefix)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*kn, *v;
	const struct cfg_key	*k;
	char			 seen[32] = { 0 }, path[256];
	long			 i;

	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		if ((i = yu_map_key(&c->errs, c->doc, map, p, keys,
		    sizeof(*keys), prefix, path, sizeof(path))) == -1)
			continue;
		kn = yaml_document_get_node(c->doc, p->key);
		v = yaml_document_get_node(c->doc, p->value);
		k = &keys[i];
		seen[k - keys] = 1;
		cfg_set(c, k, kn, v, base, path);
	}
	cfg_required(c, keys, seen, &map->start_mark, prefix);
}

/* Returns the value of key name in map, or NULL. */
static const yaml_node_t *
cfg_find(struct cfg_ctx *c, const yaml_node_t *map, const char *name)
{
	const yaml_node_pair_t	*p;
	const yaml_node_t	*k;

	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		k = yaml_document_get_node(c->doc, p->key);
		if (k != NULL && k->type == YAML_SCALAR_NODE &&
		    strcmp((const char *)k->data.scalar.value, name) == 0)
			return yaml_document_get_node(c->doc, p->value);
	}
	return NULL;
}

/* Returns whether a key set the field dst. */
static bool
cfg_was_set(const struct cfg_ctx *c, const void *dst)
{
	size_t i;

	for (i = 0; i < c->nseen; i++)
		if (c->seen[i].dst == dst)
			return true;
	return false;
}

/*
 * The checks that span sections (auth: and the listeners), and the
 * backend's TLS context; root is the top-level map.
 */
static void
cfg_tls_check(struct cfg_ctx *c, const yaml_node_t *root)
{
	struct config			*cfg = c->cfg;
	struct tlsio_client_params	 p;
	const yaml_node_t		*be;
	char				 err[256];
	unsigned			 i;

	for (i = 0; i < cfg->nlisten; i++)
		if (cfg->listen[i].auth && cfg->auth_users == NULL)
			cfg_error(c, &c->listen_mark[i], "listen[%u]: auth "
			    "needs auth: users_file:", i);
	if (cfg->be_tls == CFG_BETLS_NONE)
		return;
	/* Opportunistic TLS verifies only when told to. */
	if (!cfg_was_set(c, &cfg->be_verify))
		cfg->be_verify = cfg->be_tls == CFG_BETLS_REQUIRED;
	p.ca_file = cfg->be_ca_file;
	p.verify = cfg->be_verify;
	if ((cfg->be_tls_ctx = tlsio_client_ctx(&p, err, sizeof(err))) ==
	    NULL) {
		be = cfg_find(c, root, "backend");
		cfg_error(c, be != NULL ? &be->start_mark : NULL, "backend: "
		    "cannot set up TLS: %s%s%s", err, cfg->be_ca_file ?
		    ": " : "", cfg->be_ca_file ? cfg->be_ca_file : "");
	}
}

/*
 * The metrics endpoint's address may not be a listener's: one of the two
 * could not be bound.  root is the top-level map.
 */
static void
cfg_metrics_check(struct cfg_ctx *c, const yaml_node_t *root)
{
	const struct config	*cfg = c->cfg;
	const yaml_node_t	*m, *a;
	unsigned		 i;

	if (cfg->metrics_addr.sslen == 0)
		return;
	for (i = 0; i < cfg->nlisten; i++) {
		if (!config_same_addr(&cfg->metrics_addr, &cfg->listen[i].addr))
			continue;
		m = cfg_find(c, root, "metrics");
		a = m != NULL && m->type == YAML_MAPPING_NODE ?
		    cfg_find(c, m, "address") : NULL;
		cfg_error(c, a != NULL ? &a->start_mark : NULL,
		    "metrics.address: %s is also listen[%u]'s address",
		    cfg->metrics_addr.text, i);
	}
}

/* redis: is reached at an address or at a Unix socket: one of the two. */
static void
cfg_redis_check(struct cfg_ctx *c, const yaml_node_t *root)
{
	const yaml_node_t	*r = cfg_find(c, root, "redis");

	if (r == NULL || r->type != YAML_MAPPING_NODE)
		return;
	if (c->cfg->redis_addr.sslen != 0 && c->cfg->redis_socket != NULL)
		cfg_error(c, &r->start_mark, "redis: address and socket are "
		    "two ways to reach it: give one");
	else if (c->cfg->redis_addr.sslen == 0 && c->cfg->redis_socket == NULL)
		cfg_error(c, &r->start_mark, "redis.address: required setting "
		    "is missing (or redis.socket)");
}

/* Returns the number of workers to run when the file says 0. */
static unsigned
cfg_ncpu(void)
{
	long	 n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > CFG_MAX_WORKERS ? CFG_MAX_WORKERS : (unsigned)n;
}

void
config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	atomic_init(&cfg->refs, 1);
	if (gethostname(cfg->hostname, sizeof(cfg->hostname)) != 0 ||
	    cfg->hostname[0] == '\0')
		strcpy(cfg->hostname, "localhost");
	cfg->hostname[sizeof(cfg->hostname) - 1] = '\0';
	cfg->workers = cfg_ncpu();
	cfg->log_level = LOG_LVL_INFO;
	cfg->xclient = true;
	strcpy(cfg->backend_helo, cfg->hostname);
	cfg->max_message_size = 52428800;
	cfg->max_recipients = 100;
	cfg->max_line_length = 512;
	cfg->max_connections = 1000;
	cfg->max_errors = 10;
	cfg->min_data_rate = 500;
	cfg->to_command = 5 * 60 * 1000;
	cfg->to_data = 3 * 60 * 1000;
	cfg->to_drain = 30 * 1000;
	cfg->to_handshake = 30 * 1000;
	cfg->to_be_connect = 30 * 1000;
	cfg->to_be_greeting = 5 * 60 * 1000;
	cfg->to_be_helo = 5 * 60 * 1000;
	cfg->to_be_mail = 5 * 60 * 1000;
	cfg->to_be_rcpt = 5 * 60 * 1000;
	cfg->to_be_data_init = 2 * 60 * 1000;
	cfg->to_be_data_block = 3 * 60 * 1000;
	cfg->to_be_data_done = 10 * 60 * 1000;
	cfg->smtp_expn = false;
	cfg->smtp_reverse_dns = true;
	cfg->smtp_rdns_cache = 60 * 1000;
	cfg->be_verify = true;
	strcpy(cfg->redis_prefix, "smtpgate:");
	cfg->redis_timeout = 50;
	cfg->failure_window = 10 * 60 * 1000;
}

struct config *
config_load(const char *path, char **errors)
{
	static const yaml_mark_t	 top;	/* line 1, column 1 */
	struct cfg_ctx			 c;
	struct config			*cfg;
	yaml_document_t			 doc;
	yaml_node_t			*root;
	char				*data, *perr, got[80], why[128];
	size_t				 len;

	memset(&c, 0, sizeof(c));
	c.file = path;
	c.errs.file = path;
	if ((cfg = malloc(sizeof(*cfg))) == NULL)
		yu_oom();
	config_defaults(cfg);
	c.cfg = cfg;
	cfg->path = yu_xstrdup(path);
	/* Empty until the file names it, so it can follow hostname. */
	cfg->backend_helo[0] = '\0';

	if ((data = yu_read(path, CFG_FILE_MAX, &len, why,
	    sizeof(why))) == NULL)
		cfg_error(&c, NULL, "%s", why);
	else if (yu_parse(&c.errs, data, len, &doc) == 0) {
		c.doc = &doc;
		root = yaml_document_get_root_node(&doc);
		if (root == NULL || yu_isempty(root))
			cfg_required(&c, root_keys, (char[32]){ 0 },
			    root ? &root->start_mark : &top, "");
		else if (root->type != YAML_MAPPING_NODE)
			cfg_error(&c, &root->start_mark, "expected a map "
			    "of settings at the top level, got %s",
			    yu_got(root, got, sizeof(got)));
		else {
			cfg_walk_map(&c, root, root_keys, (char *)cfg, "");
			cfg_tls_check(&c, root);
			cfg_metrics_check(&c, root);
			cfg_redis_check(&c, root);
		}
		yaml_document_delete(&doc);
	}
	free(data);

	/* The policy file's errors are reported with the config's, and so
	 * are the credentials file's. */
	perr = NULL;
	cfg->policy = cfg->policy_path != NULL ?
	    policy_load(cfg->policy_path, &perr) : policy_empty();
	if (cfg->auth_users != NULL && perr == NULL &&
	    (cfg->auth_db = auth_db_load(cfg->auth_users, &perr)) == NULL &&
	    perr == NULL)
		perr = yu_xstrdup("auth.users_file: cannot load\n");
	if (c.errs.n || cfg->policy == NULL ||
	    (cfg->auth_users != NULL && cfg->auth_db == NULL)) {
		*errors = c.errs.n ? yu_errtext(&c.errs) : yu_xstrdup("");
		if (perr != NULL) {
			*errors = realloc(*errors, strlen(*errors) +
			    strlen(perr) + 1);
			if (*errors == NULL)
				yu_oom();
			strcat(*errors, perr);
			free(perr);
		}
		config_unref(cfg);
		return NULL;
	}
	if (cfg->workers == 0)
		cfg->workers = cfg_ncpu();
	if (cfg->backend_helo[0] == '\0')
		strcpy(cfg->backend_helo, cfg->hostname);
	*errors = NULL;
	return cfg;
}

struct config *
config_ref(struct config *cfg)
{
	atomic_fetch_add(&cfg->refs, 1);
	return cfg;
}

void
config_unref(struct config *cfg)
{
	unsigned i;

	if (cfg == NULL || atomic_fetch_sub(&cfg->refs, 1) != 1)
		return;
	for (i = 0; i < CFG_MAX_LISTEN; i++) {
		free(cfg->listen[i].cert_file);
		free(cfg->listen[i].key_file);
		cidr_set_free(cfg->listen[i].proxy_from);
		tlsio_ctx_free(cfg->listen[i].tls_ctx);
	}
	free(cfg->be_ca_file);
	free(cfg->redis_socket);
	tlsio_ctx_free(cfg->be_tls_ctx);
	free(cfg->auth_users);
	auth_db_free(cfg->auth_db);
	free(cfg->path);
	free(cfg->policy_path);
	policy_unref(cfg->policy);
	free(cfg);
}

bool
config_same_listen(const struct config *a, const struct config *b)
{
	unsigned i;

	if (a->nlisten != b->nlisten)
		return false;
	for (i = 0; i < a->nlisten; i++)
		if (!config_same_addr(&a->listen[i].addr, &b->listen[i].addr))
			return false;
	return true;
}

int
config_parse_addr(const char *text, struct cfg_addr *a)
{
	return cfg_addr_parse(text, a) == NULL ? 0 : -1;
}
