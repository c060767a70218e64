/*
 * test_config.c: unit tests for policy/config.c.
 *
 * Each case writes a YAML text to a file in a private mkdtemp() directory
 * and loads it.  Valid cases check the resulting struct; error cases check
 * every line of the error text, in order, against "FILE:LINE:COL: message"
 * prefixes, so a missing or an extra error fails the case.  The files of
 * deploy/ are loaded as shipped.  Run from tests/unit (ctest does).
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <sys/stat.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "policy.h"
#include "test.h"

#define DEPLOY_REF	"../../deploy/smtpgate.yaml"
#define DEPLOY_EXAMPLE	"../../deploy/example.yaml"

/* The issue's example, byte for byte; deploy/example.yaml must match it. */
#define ISSUE_EXAMPLE							\
	"hostname: gate.example.test\n"					\
	"listen:\n"							\
	"  - address: 127.0.0.1:2525\n"					\
	"backend:\n"							\
	"  servers: [127.0.0.1:10025, 127.0.0.1:10026]   "		\
	"# tried in order; the next one on failure\n"			\
	"  xclient: true\n"						\
	"limits:\n"							\
	"  max_message_size: 52428800\n"				\
	"  max_recipients: 100\n"

/* The two required settings, lines 1 to 4; cases add from line 5. */
#define BASE								\
	"listen:\n"							\
	"  - address: 127.0.0.1:2525\n"					\
	"backend:\n"							\
	"  servers: [127.0.0.1:10025]\n"

static char	 tmpdir[] = "/tmp/test_config.XXXXXX";	/* our files */
static char	 cfgfile[PATH_MAX];		/* tmpdir/smtpgate.yaml */
static char	 polfile[PATH_MAX];		/* tmpdir/rules/policy.yaml */

/* Replaces cfgfile's contents with text (len bytes). */
static void
write_file(const char *path, const char *text, size_t len)
{
	FILE	*f;

	if ((f = fopen(path, "w")) == NULL ||
	    fwrite(text, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(2);
	}
}

static void
write_cfg(const char *text, size_t len)
{
	write_file(cfgfile, text, len);
}

/* Returns the port of a, in host order. */
static unsigned
port_of(const struct cfg_addr *a)
{
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

/* Checks every default except hostname, listen and backends. */
static void
check_defaults(const struct config *c)
{
	CHECK(c->workers >= 1 && c->workers <= 64);
	CHECK(c->log_level == LOG_LVL_INFO);
	CHECK(c->xclient == true);
	CHECK(strcmp(c->backend_helo, c->hostname) == 0);
	CHECK(c->max_message_size == 52428800);
	CHECK(c->max_recipients == 100);
	CHECK(c->max_line_length == 512);
	CHECK(c->max_connections == 1000);
	CHECK(c->max_errors == 10);
	CHECK(c->min_data_rate == 500);
	CHECK(c->to_command == 300000 && c->to_data == 180000);
	CHECK(c->to_drain == 30000);
	CHECK(c->to_be_connect == 30000 && c->to_be_greeting == 300000);
	CHECK(c->to_be_helo == 300000 && c->to_be_mail == 300000);
	CHECK(c->to_be_rcpt == 300000 && c->to_be_data_init == 120000);
	CHECK(c->to_be_data_block == 180000 && c->to_be_data_done == 600000);
	CHECK(c->smtp_expn == false && c->smtp_reverse_dns == true);
	CHECK(c->policy_path == NULL);
}

static void
check_issue(const struct config *c)
{
	CHECK(strcmp(c->hostname, "gate.example.test") == 0);
	CHECK(strcmp(c->backend_helo, "gate.example.test") == 0);
	CHECK(c->nlisten == 1);
	CHECK(strcmp(c->listen[0].addr.text, "127.0.0.1:2525") == 0);
	CHECK(c->listen[0].addr.ss.ss_family == AF_INET);
	CHECK(c->listen[0].addr.sslen == sizeof(struct sockaddr_in));
	CHECK(port_of(&c->listen[0].addr) == 2525);
	CHECK(c->nbackends == 2);
	CHECK(strcmp(c->backends[0].text, "127.0.0.1:10025") == 0);
	CHECK(strcmp(c->backends[1].text, "127.0.0.1:10026") == 0);
	CHECK(port_of(&c->backends[1]) == 10026);
	check_defaults(c);
}

static void
check_minimal(const struct config *c)
{
	char	 host[256] = "";

	if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
		strcpy(host, "localhost");
	CHECK(strcmp(c->hostname, host) == 0);
	CHECK(c->nlisten == 1 && c->nbackends == 1);
	CHECK(c->workers != 0);
	check_defaults(c);
}

static void
check_every_key(const struct config *c)
{
	char	 dir[PATH_MAX], want[PATH_MAX + 32];

	CHECK(strcmp(c->hostname, "mx1.example.test") == 0);
	CHECK(c->workers == 4);
	CHECK(c->log_level == LOG_LVL_DEBUG);
	CHECK(c->nlisten == 3);
	CHECK(c->listen[0].addr.ss.ss_family == AF_INET);
	CHECK(((const struct sockaddr_in *)&c->listen[0].addr.ss)->sin_addr.s_addr ==
	    htonl(INADDR_ANY));
	CHECK(strcmp(c->listen[0].addr.text, "*:25") == 0);
	CHECK(c->listen[1].addr.ss.ss_family == AF_INET6);
	CHECK(c->listen[1].addr.sslen == sizeof(struct sockaddr_in6));
	CHECK(port_of(&c->listen[1].addr) == 587);
	CHECK(strcmp(c->listen[1].addr.text, "[::1]:587") == 0);
	CHECK(port_of(&c->listen[2].addr) == 65535);
	CHECK(c->nbackends == 2);
	CHECK(c->backends[1].ss.ss_family == AF_INET6);
	CHECK(c->xclient == false);
	CHECK(strcmp(c->backend_helo, "relay.example.test") == 0);
	CHECK(c->to_be_connect == 50 && c->to_be_greeting == 7000);
	CHECK(c->to_be_helo == 120000 && c->to_be_mail == 3600000);
	CHECK(c->to_be_rcpt == 1 && c->to_be_data_init == 2000);
	CHECK(c->to_be_data_block == 3000 && c->to_be_data_done == 86400000);
	CHECK(c->max_message_size == 10ull << 20);
	CHECK(c->max_recipients == 1000);
	CHECK(c->max_line_length == 65536);
	CHECK(c->max_connections == 5);
	CHECK(c->max_errors == 3);
	CHECK(c->min_data_rate == 0);
	CHECK(c->to_command == 600000 && c->to_data == 240000);
	CHECK(c->to_drain == 0);
	CHECK(c->smtp_expn == true && c->smtp_reverse_dns == false);
	CHECK(realpath(tmpdir, dir) != NULL);
	snprintf(want, sizeof(want), "%s/rules/policy.yaml", dir);
	CHECKF(c->policy_path != NULL && strcmp(c->policy_path, want) == 0,
	    "policy_path %s, want %s", c->policy_path, want);
}

static void
check_alt_forms(const struct config *c)
{
	CHECK(c->log_level == LOG_LVL_WARNING);
	CHECK(c->workers >= 1 && c->workers <= 64);
	CHECK(c->xclient == true);
	CHECK(c->smtp_expn == false && c->smtp_reverse_dns == true);
	CHECK(c->max_message_size == 1ull << 30);
	CHECK(c->to_command == 2000 && c->to_data == 3600000);
	CHECK(strcmp(c->backend_helo, "gate.example.test") == 0);
	CHECK(c->policy_path != NULL &&
	    strstr(c->policy_path, "/rules/policy.yaml") != NULL);
	CHECK(c->policy != NULL && c->policy->path != NULL);
}

static void
check_reference(const struct config *c)
{
	CHECK(c->nlisten == 1 &&
	    strcmp(c->listen[0].addr.text, "127.0.0.1:2525") == 0);
	CHECK(c->nbackends == 1 &&
	    strcmp(c->backends[0].text, "127.0.0.1:10025") == 0);
	check_defaults(c);
}

static void
check_redis_socket(const struct config *c)
{
	CHECK(c->redis_addr.sslen == 0);
	CHECKF(c->redis_socket != NULL &&
	    strcmp(c->redis_socket, "/run/redis/redis.sock") == 0, "%s",
	    c->redis_socket ? c->redis_socket : "(null)");
	CHECK(c->redis_timeout == 20);
}

static void
check_redis_addr(const struct config *c)
{
	CHECK(c->redis_socket == NULL);
	CHECK(c->redis_addr.sslen != 0 && port_of(&c->redis_addr) == 6379);
}

static const struct valid_case {
	const char	*name;			/* for failure messages */
	const char	*text;			/* the file */
	void		(*check)(const struct config *);
} valid_cases[] = {
	{ "issue example", ISSUE_EXAMPLE, check_issue },
	{ "required keys only", BASE, check_minimal },
	{ "every key",
	  "hostname: mx1.example.test\n"
	  "workers: 4\n"
	  "log_level: debug\n"
	  "listen:\n"
	  "  - address: \"*:25\"\n"
	  "  - address: '[::1]:587'\n"
	  "  - { address: 192.0.2.1:65535 }\n"
	  "backend:\n"
	  "  servers:\n"
	  "    - 127.0.0.1:10025\n"
	  "    - \"[2001:db8::1]:25\"\n"
	  "  xclient: false\n"
	  "  helo_name: relay.example.test\n"
	  "  timeouts: { connect: 50ms, greeting: 7, helo: 2m, mail: 1h,\n"
	  "              rcpt: 1ms, data_init: 2s, data_block: 3000ms,\n"
	  "              data_done: 24h }\n"
	  "limits:\n"
	  "  max_message_size: 10M\n"
	  "  max_recipients: 1000\n"
	  "  max_line_length: 65536\n"
	  "  max_connections: 5\n"
	  "  max_errors: 3\n"
	  "  min_data_rate: 0\n"
	  "timeouts:\n"
	  "  command: 10m\n"
	  "  data: 4M\n"
	  "  drain: 0\n"
	  "smtp:\n"
	  "  expn: yes\n"
	  "  reverse_dns: No\n"
	  "policy: rules/policy.yaml\n",
	  check_every_key },
	{ "other spellings",
	  "# comments only here\n"
	  "---\n"
	  "hostname: gate.example.test\n"
	  "workers: 0\n"
	  "log: { level: WARNING }\n"
	  "listen: [{address: 127.0.0.1:2525}]\n"
	  "backend: {servers: [127.0.0.1:10025], xclient: YES}\n"
	  "limits: { max_message_size: 1g }\n"
	  "timeouts: { command: 2s, data: 1H }\n"
	  "smtp: { expn: False, reverse_dns: TRUE }\n"
	  "policy: ./rules/../rules/policy.yaml\n"
	  "...\n",
	  check_alt_forms },
	{ "redis on a Unix socket", BASE
	  "redis: { socket: /run/redis/redis.sock, timeout: 20ms }\n",
	  check_redis_socket },
	{ "redis at an address", BASE
	  "redis: { address: 127.0.0.1:6379 }\n",
	  check_redis_addr },
};

static const struct err_case {
	const char	*name;			/* for failure messages */
	const char	*text;			/* the file */
	const char	*want[8];		/* each error line after
						 * "FILE:", in order (prefix) */
} err_cases[] = {
	{ "unknown key", BASE
	  "limits:\n"
	  "  max_recipent: 5\n"
	  "colour: blue\n",
	  { "6:3: limits.max_recipent: unknown setting (known here: "
	    "max_message_size, max_recipients, max_line_length, "
	    "max_connections, max_errors, max_connections_per_client, "
	    "max_failures_per_client, failure_window, min_data_rate)\n",
	    "7:1: colour: unknown setting (known here: hostname, workers," } },
	{ "redis at an address and a socket", BASE
	  "redis:\n"
	  "  address: 127.0.0.1:6379\n"
	  "  socket: /run/redis/redis.sock\n",
	  { "6:3: redis: address and socket are two ways to reach it: give "
	    "one\n" } },
	{ "redis at neither", BASE
	  "redis: { db: 1 }\n",
	  { "5:8: redis.address: required setting is missing (or "
	    "redis.socket)\n" } },
	{ "control characters in a key", BASE
	  "\"a\\nb\\e[31m\": 1\n",
	  { "5:1: a?b?[31m: unknown setting (known here: hostname," } },
	{ "list where a map is expected", BASE
	  "limits: [1, 2]\n"
	  "smtp:\n"
	  "  - expn\n",
	  { "5:9: limits: expected a map of settings, got a list\n",
	    "7:3: smtp: expected a map of settings, got a list\n" } },
	{ "map where a scalar is expected", BASE
	  "hostname: { a: b }\n"
	  "workers:\n",
	  { "5:11: hostname: expected a host name such as gate.example.test, "
	    "got a map",
	    "6:9: workers: expected a non-negative integer, got nothing\n" } },
	{ "bad addresses",
	  "listen:\n"
	  "  - address: gate.example.test:25\n"
	  "  - address: 127.0.0.1\n"
	  "  - address: 127.0.0.1:0\n"
	  "  - address: ::1:25\n"
	  "  - address: \"[::1:25\"\n"
	  "  - address: \"[1.2.3.4]:25\"\n"
	  "  - address: 127.0.0.1:65536\n"
	  "  - 127.0.0.1:2526\n"
	  "backend:\n"
	  "  servers: [127.0.0.1:10025]\n",
	  { "2:14: listen[0].address: invalid address "
	    "\"gate.example.test:25\": not a numeric IP address (host names "
	    "are not accepted)\n",
	    "3:14: listen[1].address: invalid address \"127.0.0.1\": the port "
	    "is missing",
	    "4:14: listen[2].address: invalid address \"127.0.0.1:0\": the "
	    "port must be a number from 1 to 65535\n",
	    "5:14: listen[3].address: invalid address \"::1:25\": IPv6 "
	    "addresses go in brackets",
	    "6:14: listen[4].address: invalid address \"[::1:25\": expected "
	    "[IPv6]:port\n",
	    "7:14: listen[5].address: invalid address \"[1.2.3.4]:25\": not a "
	    "numeric IPv6 address\n",
	    "8:14: listen[6].address: invalid address \"127.0.0.1:65536\"",
	    "9:5: listen[7]: expected a map such as \"address: "
	    "127.0.0.1:2525\", got \"127.0.0.1:2526\"\n" } },
	{ "backend servers", "listen: [{address: 127.0.0.1:25},\n"
	  "         {address: 127.0.0.1:25}, {port: 25}]\n"
	  "backend:\n"
	  "  servers: [\"*:25\", 127.0.0.1:x, [], 127.0.0.1:10025]\n",
	  { "2:10: listen[1].address: 127.0.0.1:25 is already listed as "
	    "listen[0]\n",
	    "2:35: listen[2].address: required setting is missing\n",
	    "2:36: listen[2].port: unknown setting (known here: address, tls",
	    "4:13: backend.servers[0]: \"*\" means any local address and is "
	    "only valid for listen\n",
	    "4:21: backend.servers[1]: invalid address \"127.0.0.1:x\": the "
	    "port must be",
	    "4:34: backend.servers[2]: expected an address such as "
	    "127.0.0.1:2525 or [::1]:2525, got a list\n" } },
	{ "bad durations", BASE
	  "timeouts:\n"
	  "  command: 5 minutes\n"
	  "  data: 0s\n"
	  "  drain: 25h\n"
	  "backend:\n",
	  { "6:12: timeouts.command: expected a duration such as 30s, 5m, "
	    "50ms or 1h, got \"5 minutes\"\n",
	    "7:9: timeouts.data: must be from 1ms to 24h, got \"0s\"\n",
	    "8:10: timeouts.drain: must be from 0s to 24h, got \"25h\"\n",
	    "9:1: backend: duplicate key (first given at line 3)\n" } },
	{ "bad sizes", BASE
	  "limits:\n"
	  "  max_message_size: 50X\n"
	  "---\n"
	  "limits:\n"
	  "  max_message_size: 0\n",
	  { "6:21: limits.max_message_size: expected a size in bytes, "
	    "optionally with a K, M or G suffix (e.g. 50M), got \"50X\"\n",
	    "8:1: only one YAML document is allowed\n" } },
	{ "size overflow and zero", BASE
	  "limits:\n"
	  "  max_message_size: 99999999999999999999\n"
	  "smtp:\n"
	  "  expn: maybe\n"
	  "limits2: 0\n",
	  { "6:21: limits.max_message_size: must be at least 1, got "
	    "\"99999999999999999999\"\n",
	    "8:9: smtp.expn: expected true or false (or yes/no), got "
	    "\"maybe\"\n",
	    "9:1: limits2: unknown setting" } },
	{ "duplicate keys", BASE
	  "hostname: a.example.test\n"
	  "limits:\n"
	  "  max_errors: 5\n"
	  "  max_errors: 6\n"
	  "hostname: b.example.test\n"
	  "log_level: info\n"
	  "log: { level: debug }\n",
	  { "8:3: limits.max_errors: duplicate key (first given at line 7)\n",
	    "9:1: hostname: duplicate key (first given at line 5)\n",
	    "11:8: log.level: conflicts with log_level, set at line 10\n" } },
	{ "unclosed bracket",
	  "listen:\n"
	  "  - address: 127.0.0.1:2525\n"
	  "backend:\n"
	  "  servers: [127.0.0.1:10025\n"
	  "limits:\n"
	  "  max_recipients: 100\n",
	  { "5:7: YAML syntax error: did not find expected ',' or ']' (while "
	    "parsing a flow sequence at line 4, column 12)\n" } },
	{ "bad indentation",
	  "listen:\n"
	  "  - address: 127.0.0.1:2525\n"
	  " backend: x\n",
	  { "3:2: YAML syntax error: did not find expected key (while parsing "
	    "a block mapping at line 1, column 1)\n" } },
	{ "tab", "listen:\n\t- address: 127.0.0.1:2525\n",
	  { "2:1: YAML syntax error: found character that cannot start any "
	    "token (while scanning for the next token at line 2, "
	    "column 1)\n" } },
	{ "invalid UTF-8", "hostname: ok\nlisten: \"\xff\"\n",
	  { "2:10: invalid text: invalid leading UTF-8 octet\n" } },
	{ "empty file", "",
	  { "1:1: listen: required setting is missing\n",
	    "1:1: backend.servers: required setting is missing\n" } },
	{ "comments only", "# nothing\n\n",
	  { "1:1: listen: required setting is missing\n",
	    "1:1: backend.servers: required setting is missing\n" } },
	{ "not a map", "- listen\n",
	  { "1:1: expected a map of settings at the top level, "
	    "got a list\n" } },
	{ "required keys", "hostname: x.example.test\n"
	  "listen: []\n"
	  "backend:\n"
	  "  xclient: true\n",
	  { "2:9: listen: at least 1 entry is required\n",
	    "4:3: backend.servers: required setting is missing\n" } },
	{ "negative and zero numbers", BASE
	  "workers: -1\n"
	  "limits:\n"
	  "  max_recipients: -5\n"
	  "  max_errors: 0\n"
	  "  max_connections: abc\n"
	  "  max_line_length: 511\n"
	  "  max_message_size: -1K\n",
	  { "5:10: workers: expected a non-negative integer, got \"-1\"\n",
	    "7:19: limits.max_recipients: expected a positive integer, got "
	    "\"-5\"\n",
	    "8:15: limits.max_errors: expected a positive integer, got \"0\"\n",
	    "9:20: limits.max_connections: expected a positive integer, got "
	    "\"abc\"\n",
	    "10:20: limits.max_line_length: must be from 512 to 65536, got "
	    "\"511\"\n",
	    "11:21: limits.max_message_size: expected a size in bytes" } },
	{ "out of range", BASE
	  "workers: 65\n"
	  "hostname: -bad-.example\n"
	  "backend: { servers: [127.0.0.1:1] }\n",
	  { "5:10: workers: must be from 0 to 64, got \"65\"\n",
	    "6:11: hostname: expected a host name such as gate.example.test, "
	    "got \"-bad-.example\": a label starts with '-'\n",
	    "7:1: backend: duplicate key (first given at line 3)\n" } },
	{ "too many servers",
	  "listen: [{address: 127.0.0.1:25}]\n"
	  "backend:\n"
	  "  servers: [1.0.0.1:1, 1.0.0.2:1, 1.0.0.3:1, 1.0.0.4:1,\n"
	  "    1.0.0.5:1, 1.0.0.6:1, 1.0.0.7:1, 1.0.0.8:1, 1.0.0.9:1,\n"
	  "    1.0.0.10:1, 1.0.0.11:1, 1.0.0.12:1, 1.0.0.13:1,\n"
	  "    1.0.0.14:1, 1.0.0.15:1, 1.0.0.16:1, 1.0.0.17:1]\n",
	  { "6:41: backend.servers: too many entries (at most 16)\n" } },
	{ "NUL and non-scalar key", BASE
	  "hostname: \"gate\\0.example.test\"\n"
	  "? [a, b]\n"
	  ": c\n"
	  "policy: ''\n",
	  { "5:11: hostname: contains a NUL character\n",
	    "6:3: expected a setting name, got a list\n",
	    "8:9: policy: expected a file name, got \"\"" } },
};

/*
 * Loads the current cfgfile, expecting errors matching c->want exactly
 * (count and order; each line starts with "FILE:" and its want prefix).
 */
static void
run_err_case(const struct err_case *c)
{
	struct config	*cfg;
	char		*errs = NULL, *line, *nl, prefix[PATH_MAX + 2];
	size_t		 i, plen;

	write_cfg(c->text, strlen(c->text));
	cfg = config_load(cfgfile, &errs);
	CHECKF(cfg == NULL && errs != NULL, "%s: loaded", c->name);
	config_unref(cfg);
	if (errs == NULL)
		return;
	plen = (size_t)snprintf(prefix, sizeof(prefix), "%s:", cfgfile);
	for (i = 0, line = errs; *line != '\0'; i++, line = nl + 1) {
		nl = strchr(line, '\n');
		CHECKF(nl != NULL, "%s: unterminated line", c->name);
		if (nl == NULL)
			break;
		if (i >= sizeof(c->want) / sizeof(c->want[0]) ||
		    c->want[i] == NULL) {
			CHECKF(0, "%s: extra error: %.*s", c->name,
			    (int)(nl - line), line);
			continue;
		}
		CHECKF(strncmp(line, prefix, plen) == 0 &&
		    strncmp(line + plen, c->want[i], strlen(c->want[i])) == 0,
		    "%s: error %zu\n   got: %.*s\n  want: FILE:%s", c->name, i,
		    (int)(nl - line), line, c->want[i]);
	}
	for (; i < sizeof(c->want) / sizeof(c->want[0]) && c->want[i]; i++)
		CHECKF(0, "%s: missing error FILE:%s", c->name, c->want[i]);
	free(errs);
}

/* Loads path, which must be valid, and runs check on the result. */
static void
run_valid(const char *name, const char *path,
    void (*check)(const struct config *))
{
	struct config	*cfg;
	char		*errs = NULL;

	cfg = config_load(path, &errs);
	CHECKF(cfg != NULL && errs == NULL, "%s: %s", name, errs);
	if (cfg == NULL) {
		free(errs);
		return;
	}
	CHECK(atomic_load(&cfg->refs) == 1);
	CHECK(strcmp(cfg->path, path) == 0);
	check(cfg);
	CHECK(config_ref(cfg) == cfg && atomic_load(&cfg->refs) == 2);
	config_unref(cfg);
	config_unref(cfg);
}

static const struct addr_case {
	const char	*text;		/* input */
	int		 ok;		/* parses */
	int		 family;	/* AF_INET or AF_INET6 when ok */
	unsigned	 port;		/* port when ok */
} addr_cases[] = {
	{ "127.0.0.1:2525", 1, AF_INET, 2525 },
	{ "*:25", 1, AF_INET, 25 },
	{ "[::1]:587", 1, AF_INET6, 587 },
	{ "[2001:db8::1]:1", 1, AF_INET6, 1 },
	{ "0.0.0.0:65535", 1, AF_INET, 65535 },
	{ "127.0.0.1:0", 0, 0, 0 },
	{ "127.0.0.1:65536", 0, 0, 0 },
	{ "127.0.0.1:", 0, 0, 0 },
	{ "127.0.0.1:+25", 0, 0, 0 },
	{ "127.0.0.1", 0, 0, 0 },
	{ ":25", 0, 0, 0 },
	{ "localhost:25", 0, 0, 0 },
	{ "::1:25", 0, 0, 0 },
	{ "[::1]25", 0, 0, 0 },
	{ "[::1:25", 0, 0, 0 },
	{ "[]:25", 0, 0, 0 },
	{ "[127.0.0.1]:25", 0, 0, 0 },
	{ "", 0, 0, 0 },
	{ "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535", 1,
	  AF_INET6, 65535 },
	{ "[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:"
	  "0000:0000]:25", 0, 0, 0 },
};

static void
test_parse_addr(void)
{
	struct cfg_addr	 a;
	size_t		 i;
	int		 r;

	for (i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
		r = config_parse_addr(addr_cases[i].text, &a);
		CHECKF((r == 0) == addr_cases[i].ok, "%s", addr_cases[i].text);
		if (r != 0 || !addr_cases[i].ok)
			continue;
		CHECKF(a.ss.ss_family == addr_cases[i].family &&
		    port_of(&a) == addr_cases[i].port &&
		    strcmp(a.text, addr_cases[i].text) == 0,
		    "%s", addr_cases[i].text);
	}
}

/* The shipped files: the reference loads, the example is the issue's. */
static void
test_deploy(void)
{
	static char	 buf[4096];
	struct config	*cfg;
	char		*errs = NULL, *text = NULL;
	FILE		*f;
	size_t		 n = 0, len, size = 0;

	run_valid("deploy/smtpgate.yaml", DEPLOY_REF, check_reference);
	run_valid("deploy/example.yaml", DEPLOY_EXAMPLE, check_issue);
	if ((f = fopen(DEPLOY_EXAMPLE, "r")) != NULL) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	CHECKF(strcmp(buf, ISSUE_EXAMPLE) == 0, "%s differs from the issue",
	    DEPLOY_EXAMPLE);

	/* Every truncated prefix loads or fails cleanly, never crashes. */
	if ((f = fopen(DEPLOY_REF, "r")) == NULL) {
		CHECKF(0, "%s: cannot open", DEPLOY_REF);
		return;
	}
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
		text = realloc(text, size + n);
		memcpy(text + size, buf, n);
		size += n;
	}
	fclose(f);
	for (len = 0; len < size; len++) {
		write_cfg(text, len);
		cfg = config_load(cfgfile, &errs);
		CHECKF((cfg == NULL) == (errs != NULL), "prefix %zu", len);
		CHECKF(errs == NULL || strncmp(errs, cfgfile,
		    strlen(cfgfile)) == 0, "prefix %zu: %s", len, errs);
		config_unref(cfg);
		free(errs);
	}
	free(text);
}

static void
test_files(void)
{
	char	*errs = NULL, want[PATH_MAX + 64];

	snprintf(want, sizeof(want), "%s/missing.yaml: cannot open: No such "
	    "file or directory\n", tmpdir);
	snprintf(cfgfile, sizeof(cfgfile), "%s/missing.yaml", tmpdir);
	CHECK(config_load(cfgfile, &errs) == NULL);
	CHECKF(errs != NULL && strcmp(errs, want) == 0, "%s", errs);
	free(errs);
	CHECK(config_load(tmpdir, &errs) == NULL);
	CHECK(errs != NULL && strstr(errs, ": not a regular file") != NULL);
	free(errs);
	/* A FIFO with no writer: refused at once, not waited on. */
	snprintf(cfgfile, sizeof(cfgfile), "%s/fifo.yaml", tmpdir);
	CHECK(mkfifo(cfgfile, 0600) == 0);
	CHECK(config_load(cfgfile, &errs) == NULL);
	CHECKF(errs != NULL && strstr(errs, "fifo.yaml: not a regular file\n")
	    != NULL, "%s", errs);
	free(errs);
	unlink(cfgfile);
	/* Control characters in the name: one line, shown as '?'. */
	snprintf(want, sizeof(want), "%s/no?such?[1m.yaml: cannot open: No "
	    "such file or directory\n", tmpdir);
	snprintf(cfgfile, sizeof(cfgfile), "%s/no\nsuch\033[1m.yaml", tmpdir);
	CHECK(config_load(cfgfile, &errs) == NULL);
	CHECKF(errs != NULL && strcmp(errs, want) == 0, "%s", errs);
	free(errs);
	config_unref(NULL);
}

int
main(void)
{
	struct config	 d;
	size_t		 i;

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(cfgfile, sizeof(cfgfile), "%s/smtpgate.yaml", tmpdir);
	/* The policy file the configs below name: empty, so valid. */
	snprintf(polfile, sizeof(polfile), "%s/rules", tmpdir);
	if (mkdir(polfile, 0700) != 0) {
		perror(polfile);
		return 2;
	}
	strcat(polfile, "/policy.yaml");
	write_file(polfile, "", 0);

	for (i = 0; i < sizeof(valid_cases) / sizeof(valid_cases[0]); i++) {
		write_cfg(valid_cases[i].text, strlen(valid_cases[i].text));
		run_valid(valid_cases[i].name, cfgfile, valid_cases[i].check);
	}
	for (i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++)
		run_err_case(&err_cases[i]);
	config_defaults(&d);
	CHECK(d.nlisten == 0 && d.nbackends == 0 && d.path == NULL);
	check_defaults(&d);
	test_parse_addr();
	test_deploy();
	unlink(cfgfile);
	test_files();
	unlink(polfile);
	*strrchr(polfile, '/') = '\0';
	rmdir(polfile);
	if (rmdir(tmpdir) != 0)
		perror(tmpdir);
	TEST_DONE();
}
