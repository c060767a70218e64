/*
 * config.h: the main configuration file (YAML, read with libyaml).
 *
 * config_load() parses a file into a plain, immutable struct config.  A
 * reload builds a new one; workers and sessions hold references to the one
 * they started with (config_ref / config_unref), so a config is freed when
 * its last user lets go.
 */
#ifndef SMTPGATE_CONFIG_H
#define SMTPGATE_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define CFG_MAX_LISTEN   16
#define CFG_MAX_BACKENDS 16

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARNING, LOG_LVL_INFO, LOG_LVL_DEBUG };

struct cfg_addr {
	struct sockaddr_storage	 ss;		/* parsed address and port */
	socklen_t		 sslen;		/* length of ss in use */
	char			 text[80];	/* as written, e.g. "127.0.0.1:2525" */
};

/* A listener's TLS: none, STARTTLS (RFC 3207), or TLS from the first byte. */
enum cfg_tls { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT };

/* TLS to the backend: never, when it offers STARTTLS, or always. */
enum cfg_be_tls { CFG_BETLS_NONE, CFG_BETLS_OPPORTUNISTIC, CFG_BETLS_REQUIRED };

struct tlsio_ctx;
struct cidr_set;
struct auth_db;

/* One listen: entry. */
struct cfg_listen {
	struct cfg_addr	 addr;		/* address: (first: the "address" key
					 * is read at offset 0) */
	enum cfg_tls	 tls;		/* tls: (none) */
	bool		 require_tls;	/* require_tls: MAIL before STARTTLS
					 * gets 530 5.7.0 */
	char		*cert_file;	/* cert_file: PEM chain (malloc'd) */
	char		*key_file;	/* key_file: PEM key (malloc'd) */
	char		 ciphers[512];	/* ciphers: TLS 1.2 list ("": default) */
	unsigned	 min_tls;	/* min_protocol: TLS1_2_VERSION or
					 * TLS1_3_VERSION */
	bool		 auth;		/* auth: offer SMTP AUTH (under TLS) */
	bool		 proxy_protocol;	/* proxy_protocol: a PROXY v1/v2
					 * header comes first */
	struct cidr_set	*proxy_from;	/* proxy_from: who may send it
					 * (default: loopback) */
	bool		 quiet;		/* quiet: a session that ends
					 * without a transaction or an error
					 * logs at debug (health checks) */
	struct tlsio_ctx *tls_ctx;	/* built from the above when tls is
					 * not none; freed with the config */
};

/* All durations are in milliseconds. */
struct policy;

struct config {
	atomic_int	 refs;			/* references; freed at zero */
	struct policy	*policy;		/* the compiled policy: of the
						 * policy: file, or the empty one */
	char		*path;			/* file it was loaded from */
	char		*policy_path;		/* policy: file for the policy
						 * rules, made absolute against
						 * the config file's directory;
						 * NULL when not set */

	char		 hostname[256];		/* our name: greeting, EHLO, 421s */
	unsigned	 workers;		/* worker threads; 0 in the file
						 * means one per core, resolved by
						 * config_load() */
	enum log_level	 log_level;		/* log: level */

	struct cfg_listen listen[CFG_MAX_LISTEN];	/* listen: */
	unsigned	 nlisten;		/* entries used in listen */

	struct cfg_addr	 backends[CFG_MAX_BACKENDS];	/* backend: servers:
							 * tried in order */
	unsigned	 nbackends;		/* entries used in backends */
	bool		 xclient;		/* backend: xclient: send XCLIENT
						 * when the backend offers it */
	bool		 xclient_first;		/* backend: xclient_before_ehlo:
						 * XCLIENT right after the
						 * greeting (no TLS to the
						 * backend), not after an EHLO */
	char		 backend_helo[256];	/* backend: helo_name (default:
						 * hostname) */
	enum cfg_be_tls	 be_tls;		/* backend: tls: (none) */
	char		*be_ca_file;		/* backend: ca_file: (malloc'd;
						 * NULL: the system's CAs) */
	bool		 be_verify;		/* backend: verify: (true) */
	char		 be_tls_name[256];	/* backend: tls_name: the name its
						 * certificate must carry ("":
						 * not checked) */
	struct tlsio_ctx *be_tls_ctx;		/* built when be_tls is not none */

	char		*auth_users;		/* auth: users_file: user:crypt
						 * lines (malloc'd), or NULL */
	struct auth_db	*auth_db;		/* ... loaded, or NULL */

	uint64_t	 max_message_size;	/* limits: (bytes) */
	unsigned	 max_recipients;	/* limits: */
	unsigned	 max_line_length;	/* limits: command line, CRLF
						 * included */
	unsigned	 max_connections;	/* limits: whole process */
	unsigned	 max_errors;		/* limits: command errors, then 421 */
	unsigned	 max_conn_per_client;	/* limits: max_connections_per_client
						 * (0: none), per instance */
	unsigned	 max_failures;		/* limits: max_failures_per_client:
						 * refused commands per client
						 * address per failure_window
						 * (0: none) */
	unsigned	 failure_window;	/* limits: failure_window (ms) */
	unsigned	 min_data_rate;		/* limits: min_data_rate, bytes/s a
						 * client sends message data at,
						 * at least (0: none) */

	/* redis: (without it, rate limits are kept in process) */
	struct cfg_addr	 redis_addr;		/* address: (sslen 0: none) */
	char		*redis_socket;		/* socket: a Unix socket's path,
						 * instead of address: (redis:
						 * is on when either is set) */
	char		 redis_password[128];	/* password: ("" for none) */
	unsigned	 redis_db;		/* db: */
	char		 redis_prefix[64];	/* key_prefix: ("smtpgate:") */
	unsigned	 redis_timeout;		/* timeout: (ms, 50) */
	bool		 redis_tempfail;	/* on_error: tempfail (default
						 * allow) */

	struct cfg_addr	 metrics_addr;		/* metrics: address: where GET
						 * /metrics is served (sslen 0:
						 * no metrics: section, no
						 * endpoint) */

	/* timeouts: (client side, RFC 5321 4.5.3.2 server timeouts) */
	unsigned	 to_command;		/* waiting for a command */
	unsigned	 to_data;		/* waiting for the next DATA block */
	unsigned	 to_drain;		/* shutdown: time given to
						 * transactions in flight */
	unsigned	 to_handshake;		/* the TLS handshake, and a PROXY
						 * header, from start to end */

	/* backend: timeouts: (RFC 5321 4.5.3.2 client timeouts) */
	unsigned	 to_be_connect;		/* TCP connect */
	unsigned	 to_be_greeting;	/* initial 220 */
	unsigned	 to_be_helo;		/* EHLO / XCLIENT replies */
	unsigned	 to_be_mail;		/* MAIL reply */
	unsigned	 to_be_rcpt;		/* RCPT reply */
	unsigned	 to_be_data_init;	/* DATA's 354 */
	unsigned	 to_be_data_block;	/* each block written */
	unsigned	 to_be_data_done;	/* reply to the final dot */

	bool		 smtp_expn;		/* smtp: expn: forward EXPN to the
						 * backend (else 502) */
	bool		 smtp_reverse_dns;	/* smtp: reverse_dns: look up the
						 * client's name for XCLIENT NAME */
	unsigned	 smtp_rdns_cache;	/* smtp: reverse_dns_cache: how
						 * long (ms) a worker reuses a
						 * lookup's answer; 0: never */
};

/*
 * Loads the file at path.  On success returns a config with refs == 1 and
 * sets *errors to NULL.  On failure returns NULL and sets *errors to a
 * malloc'd, NUL-terminated text with one "FILE:LINE:COL: message\n" line
 * per error found (all of them, not just the first), in file order; the
 * caller frees it.  A file that cannot be read at all gives a single
 * "FILE: message\n" line.
 */
struct config *config_load(const char *path, char **errors);

/* Fills a config with every default (what an empty file gives). */
void config_defaults(struct config *cfg);

/* Takes a reference; returns cfg. */
struct config *config_ref(struct config *cfg);

/* Drops a reference; frees the config at zero.  NULL is ignored. */
void config_unref(struct config *cfg);

/* True when a and b listen on the same addresses, in the same order. */
bool config_same_listen(const struct config *a, const struct config *b);

/* True when addresses a and b bind the same socket (sslen 0: none). */
bool config_same_addr(const struct cfg_addr *a, const struct cfg_addr *b);

/*
 * Parses "host:port", "[v6]:port" or "*:port" into a.  Returns 0, or -1
 * when malformed.
 */
int config_parse_addr(const char *text, struct cfg_addr *a);

#endif /* SMTPGATE_CONFIG_H */
