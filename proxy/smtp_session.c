/*
 * smtp_session.c: one inbound SMTP session and its relay to the backend.
 *
 * Input is read into a pooled buffer and consumed with a cursor.  Commands
 * are taken in order; MAIL, RCPT, DATA and RSET go to the backend (pipelined
 * when it offers PIPELINING) and their replies come back in the same order,
 * so the replies to the client stay in order too: a command answered here
 * waits until every earlier backend reply is in (fly_n == 0).  Replies are
 * gathered in s->out and written once per round, so a pipelined group is
 * answered in as few writes as possible.
 *
 * Message data is scanned (smtp_dscan) and written to the backend straight
 * from the input buffer; while such a write is pending the buffer is pinned
 * and the client is not read, which bounds memory whatever the message size.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "backend.h"
#include "clients.h"
#include "filter.h"
#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "proxy_proto.h"
#include "ratelimit.h"
#include "smtp_parse.h"
#include "smtp_reply.h"
#include "smtp_session.h"
#include "tlsio.h"

#define OUT_SIZE	2048	/* replies waiting to be written */
#define IN_SMALL	1024	/* a partial command line waiting between
				 * reads moves to a buffer this small (else
				 * IOBUF_SIZE, from the worker's pool) */
#define REPLY_RESERVE	1024	/* room a command needs for its replies */
#define FLY_MAX		32	/* commands in flight at the backend */

enum smtp_state {
	S_INIT,		/* greeted; no HELO/EHLO yet */
	S_HELO,		/* HELO/EHLO done, no transaction */
	S_MAIL,		/* MAIL sent (RCPTs may follow) */
	S_DATA,		/* DATA accepted: message bytes flow */
	S_DOT,		/* final dot sent, waiting for the backend */
	S_QUIT,		/* QUIT answered */
	S__COUNT
};

static const char *const smtp_strstate[S__COUNT] = {
	"INIT", "HELO", "MAIL", "DATA", "DOT", "QUIT"
};

/* What a command in flight at the backend is. */
enum fly_kind {
	F_MAIL,		/* relay the reply; 2xx starts the transaction */
	F_RCPT,		/* relay; 2xx counts a recipient */
	F_DATA,		/* relay; 354 starts the data phase */
	F_DOT,		/* relay; the transaction ends */
	F_RSET,		/* relay */
	F_RSET_QUIET,	/* our own RSET (client's EHLO mid-transaction) */
	F_EXPN		/* relay */
};

/* The command= label of each kind's reply latency. */
static const enum metrics_cmd smtp_fly_cmd[] = {
	[F_MAIL] = MX_CMD_MAIL, [F_RCPT] = MX_CMD_RCPT, [F_DATA] = MX_CMD_DATA,
	[F_DOT] = MX_CMD_DOT, [F_RSET] = MX_CMD_OTHER,
	[F_RSET_QUIET] = MX_CMD_OTHER, [F_EXPN] = MX_CMD_OTHER,
};

enum tx_abort {
	TX_OK,		/* nothing wrong so far */
	TX_OVERSIZE,	/* grew past max_message_size: 552 */
	TX_SMUGGLE,	/* bare CR or LF in the data: 550 5.5.2 */
	TX_BACKEND,	/* backend lost during the data phase: 451 */
	TX_FILTER	/* a filter refused it at the header or final-dot
			 * stage: the reply is in s->flt.res */
};

#define SF_CLOSING	0x0001	/* uv_close() called */
#define SF_CLOSE_AFTER	0x0002	/* close once the output is written */
#define SF_OUT_WRITING	0x0004	/* a client write is pending */
#define SF_PINNED	0x0008	/* the backend writes from our input buffer */
#define SF_SKIP		0x0010	/* discarding an over-long line */
#define SF_AWAIT	0x0020	/* waiting for DATA's or the dot's reply */
#define SF_READING	0x0040	/* uv_read_start() in effect */
#define SF_DRAIN	0x0080	/* shutdown: close when idle */
#define SF_BE_FAILED	0x0100	/* backend setup failed: answer the waiting
				 * command with 451 4.4.1 */
#define SF_BE_READY	0x0200	/* s->be reached READY */
#define SF_GREETED	0x0400	/* the connect stage is over, greeting sent */
#define SF_REFUSED	0x0800	/* session refused: 503 to all but QUIT */
#define SF_EOM		0x1000	/* final dot read, end-of-data stage due */
#define SF_COUNTED	0x2000	/* counted in the per-client table */
#define SF_TLS_HS	0x4000	/* TLS handshake in progress */
#define SF_TLS		0x8000	/* TLS established */
#define SF_TLS_START	0x10000	/* STARTTLS answered: start TLS once the
				 * 220 is out */
#define SF_TLS_BYE	0x20000	/* close_notify queued */
#define SF_PROXY	0x40000	/* waiting for the PROXY header */
#define SF_EOF		0x80000	/* the client half-closed: what it sent is
				 * answered, then the session closes */

#define HDR_MAX		1024	/* header bytes kept for the header stage */
#define AUTH_LINE_MAX	12288	/* an AUTH line, CRLF included (RFC 4954 4) */

/* Where an AUTH exchange is. */
enum smtp_auth_step {
	AUTH_IDLE,		/* no exchange */
	AUTH_PLAIN,		/* "334 " sent: the PLAIN message comes next */
	AUTH_LOGIN_USER,	/* "334 Username:" sent */
	AUTH_LOGIN_PASS,	/* "334 Password:" sent */
	AUTH_CHECKING,		/* the password is being checked */
	AUTH_DONE		/* checked: the answer is due (auth_ok) */
};

/* A password check in the thread pool; s is cleared if the session ends. */
struct auth_req {
	uv_work_t		 work;		/* the thread pool request */
	struct smtp_session	*s;		/* owner, NULL once it is gone */
	struct config		*cfg;		/* holds the credentials (a
						 * reference of our own) */
	const char		*mech;		/* "PLAIN" or "LOGIN", for the log */
	char			 user[AUTH_FIELD_MAX + 1];	/* user name */
	char			 pass[AUTH_FIELD_MAX + 1];	/* password, wiped
						 * once checked */
	int			 result;	/* auth_db_verify()'s */
};

/* The header section as it streams past, for the header stage. */
struct smtp_hdr {
	char		*buf;		/* HDR_MAX bytes, NULL until the data
					 * phase, freed with the transaction */
	size_t		 len;		/* bytes kept in buf */
	size_t		 line_start;	/* where the current line begins in buf */
	size_t		 line_len;	/* its length so far (kept or not) */
	int		 line_first;	/* its first byte */
	int		 body;		/* the empty line was seen */
};

/* The transaction in progress. */
struct smtp_tx {
	unsigned		nrcpt_sent;	/* RCPTs forwarded */
	unsigned		nrcpt_ok;	/* ... accepted by the backend */
	unsigned		nrcpt_rej;	/* ... refused by it */
	unsigned		smtputf8:1;	/* MAIL had SMTPUTF8 */
	enum tx_abort		abort;		/* why the data is refused */
	enum smtp_reply_id	abort_reply;	/* reply for TX_BACKEND */
	unsigned		rewrite;	/* FLT_RW_* of the sender */
	struct smtp_dscan	scan;		/* DATA scanner state */
	int			bol;		/* the last byte scanned ended a
						 * line (or none was scanned) */
	struct smtp_hdr		hdr;		/* header stage */
	uint64_t		started;	/* uv_now() at MAIL */
	int			status;		/* its final reply code: to its
						 * data, or a refused MAIL (0:
						 * none yet), for the metrics */
	int			has_sender;	/* sender holds from, parsed */
	struct smtp_path	sender;		/* from, parsed once at MAIL for
						 * the filters of the later
						 * stages; points into from */
	char			from[264];	/* reverse path, for the log */
	char			rcpts[256];	/* forward paths, for the log */
};

#define ENVC_ARG_MAX	256	/* longer MAIL/RCPT arguments are parsed again
				 * after a pending filter stage */

/*
 * A MAIL or RCPT command parsed before its filter stage went pending:
 * once the answer comes the command is dispatched again, and takes this
 * instead of parsing its argument again.  The parse points into the input
 * buffer; it is taken only for the same bytes at the same address.
 */
struct smtp_envc {
	int			 valid;		/* holds a parse not taken yet */
	const char		*arg;		/* the argument, in s->in */
	size_t			 len;		/* its length */
	int			 is_rcpt;	/* RCPT (1) or MAIL (0) */
	int			 smtputf8;	/* tx.smtputf8 it was checked with */
	struct smtp_mailrcpt	 m;		/* smtp_mailrcpt_parse()'s */
	struct smtp_mail_opts	 o;		/* smtp_params_check()'s */
	char			 copy[ENVC_ARG_MAX];	/* the argument's bytes */
};

/* Reverse DNS lookup in the thread pool; s is cleared if the session ends. */
struct rdns_req {
	uv_work_t		 work;		/* the thread pool request */
	struct smtp_session	*s;		/* owner, NULL once it is gone */
	struct worker		*w;		/* s's worker (its cache) */
	struct sockaddr_storage	 ss;		/* the client's address */
	unsigned		 ttl;		/* ms to cache the answer; 0: not */
	int			 temp;		/* a lookup failed temporarily */
	char			 name[256];	/* result, or "[UNAVAILABLE]" */
};

/*
 * A worker's cache of reverse lookups (smtp: reverse_dns_cache): the
 * answer for an address, name or "[UNAVAILABLE]", reused until it
 * expires, so that a client connecting again and again costs one lookup
 * (a thread pool hop and the resolver's work) per period.  Answers to
 * lookups that failed temporarily are not kept.  Direct-mapped by a hash
 * of the address: a collision replaces the older entry.
 */
#define RDNS_SLOTS	256

struct rdns_entry {
	uint64_t		 expires;	/* uv_now() limit; 0: empty */
	uint8_t			 family;	/* AF_INET or AF_INET6 */
	unsigned char		 addr[16];	/* the address (4 or 16 bytes) */
	char			 name[256];	/* the answer */
};

struct smtp_session {
	struct smtp_session	*next, *prev;	/* worker's list */
	struct worker		*w;		/* owning worker */
	struct config		*cfg;		/* config this session started with */
	uint64_t		 id;		/* unique in the process */
	char			 idstr[20];	/* id in hex, for the log */
	uv_tcp_t		 tcp;		/* the client connection */
	const struct cfg_listen	*lsn;		/* the listener's settings, in cfg
						 * (a plain one when a reload
						 * moved the listeners) */
	unsigned		 lsn_idx;	/* the listener's index */
	struct tlsio		*tls;		/* TLS, or NULL while plaintext */
	char			*tls_wbuf;	/* ciphertext of the pending client
						 * write (malloc'd), or NULL */
	uv_timer_t		 timer;		/* command / data timeout */
	uint64_t		 timer_due;	/* uv_now() of the timeout: the
						 * timer may be due earlier (it
						 * is not restarted for a later
						 * one) and then starts again */
	uint64_t		 timer_fire;	/* uv_now() the timer is due, while
						 * it runs */
	uv_write_t		 wreq;		/* the one pending client write */
	int			 nopen;		/* handles not yet closed */
	enum smtp_state		 state;		/* protocol state */
	unsigned		 flags;		/* SF_* */
	unsigned		 errors;	/* command errors so far */
	unsigned		 ntx;		/* transactions relayed */
	uint64_t		 started;	/* uv_now() at accept */
	char			 addr[INET6_ADDRSTRLEN];	/* client address */
	struct sockaddr_storage	 ss;		/* ... as a sockaddr */
	struct be_client	 client;	/* what XCLIENT tells the backend */
	struct rdns_req		*rdns;		/* lookup in progress, or NULL */
	enum smtp_auth_step	 auth_step;	/* AUTH exchange in progress */
	struct auth_req		*auth_req;	/* password check running, or NULL */
	unsigned		 auth_fails;	/* failed AUTH attempts */
	int			 auth_ok;	/* AUTH_DONE: 1 accepted, 0 refused,
						 * -1 the check failed */
	uint64_t		 line_since;	/* uv_now() when the input last
						 * held no partial command
						 * line: the one being read is
						 * due by this +
						 * timeouts.command */
	uint64_t		 data_due;	/* in DATA: uv_now() by which
						 * more data must have come, at
						 * limits.min_data_rate */
	uint64_t		 deadline;	/* uv_now() by which the TLS
						 * handshake or the PROXY header
						 * must be done */
	char			 auth_name[AUTH_FIELD_MAX + 1];	/* AUTH LOGIN:
						 * the user name given */
	struct be_conn		*be;		/* backend connection, or NULL */
	char			*in;		/* input buffer, or NULL */
	size_t			 in_size;	/* its size: IOBUF_SIZE (from the
						 * worker's pool) or IN_SMALL
						 * (malloc'd) */
	size_t			 in_start;	/* first unconsumed byte */
	size_t			 in_end;	/* end of input read */
	uint8_t			 fly[FLY_MAX];	/* enum fly_kind, a ring */
	uint64_t		 fly_t[FLY_MAX];	/* uv_hrtime() when each
						 * was sent */
	uint32_t		 fly_gen[FLY_MAX];	/* tx_gen when each was
						 * sent: a reply concerns the
						 * current transaction only if
						 * it matches */
	uint32_t		 tx_gen;	/* bumped at each transaction's
						 * start and end */
	unsigned		 fly_head;	/* oldest entry */
	unsigned		 fly_n;		/* entries in flight */
	int			 fly_fail;	/* -1, or the reply every entry
						 * in flight gets (backend lost) */
	struct smtp_tx		 tx;		/* the current transaction */
	struct flt_run		 flt;		/* the filter stage in progress */
	struct smtp_envc	*envc;		/* malloc'd at the first MAIL or
						 * RCPT whose stage went pending,
						 * or NULL */
	size_t			 out_len;	/* bytes in out */
	char			 out[OUT_SIZE];	/* replies to write */
};

enum step { STEP_WAIT, STEP_AGAIN };
enum cmd_res { CMD_WAIT, CMD_DONE };

typedef enum cmd_res (*smtp_cmd_fn)(struct smtp_session *, enum smtp_verb,
    const char *, size_t);

static enum cmd_res smtp_cmd_local(struct smtp_session *, enum smtp_verb,
    const char *, size_t);

static void smtp_process(struct smtp_session *);
static void smtp_close(struct smtp_session *, const char *);
static void smtp_flush(struct smtp_session *);
static enum step smtp_tls_start(struct smtp_session *);
static int smtp_auth_offered(const struct smtp_session *);
static enum step smtp_proxy_header(struct smtp_session *);

static const struct be_callbacks smtp_be_callbacks;

/* ---- State, output, errors ------------------------------------------- */

static void
smtp_enter_state(struct smtp_session *s, enum smtp_state st)
{
	if (s->state == st)
		return;
	log_debug("session=%s state %s -> %s", s->idstr,
	    smtp_strstate[s->state], smtp_strstate[st]);
	s->state = st;
}

static int
smtp_out_room(struct smtp_session *s, size_t n)
{
	return !(s->flags & SF_OUT_WRITING) && OUT_SIZE - s->out_len >= n;
}

static void
smtp_out(struct smtp_session *s, const char *buf, size_t len)
{
	if (!smtp_out_room(s, len))
		fatalx("%s: no room for %zu bytes", __func__, len);
	memcpy(s->out + s->out_len, buf, len);
	s->out_len += len;
	metrics_reply(buf[0] - '0');
	log_debug("session=%s > %.*s", s->idstr,
	    (int)(len > 2 ? len - 2 : len), buf);
}

/* Queues one of our own replies.  The caller made sure there is room. */
static void
smtp_reply(struct smtp_session *s, enum smtp_reply_id id, const char *arg)
{
	char	buf[600];
	size_t	n;

	n = smtp_reply_format(buf, sizeof(buf), id,
	    arg ? arg : s->cfg->hostname);
	if (n == 0)
		fatalx("%s: reply %d does not fit", __func__, id);
	smtp_out(s, buf, n);
}

static void smtp_fail(struct smtp_session *);

/*
 * A command error: the reply, then 421 and close past max_errors.  A
 * refused session is never closed first (RFC 5321 3.1): its errors are
 * not counted.
 */
static void
smtp_error(struct smtp_session *s, enum smtp_reply_id id, const char *arg)
{
	smtp_reply(s, id, arg);
	smtp_fail(s);
	if (s->flags & SF_REFUSED)
		return;
	if (++s->errors >= s->cfg->max_errors) {
		log_info("session=%s client=%s too many errors (%u)", s->idstr,
		    s->addr, s->errors);
		smtp_reply(s, RPL_TOO_MANY_ERRORS, NULL);
		s->flags |= SF_CLOSE_AFTER;
	}
}

/* Nonzero when nothing is in flight, so a local reply keeps the order. */
static int
smtp_local(struct smtp_session *s)
{
	return s->fly_n == 0;
}

/* ---- Transactions -------------------------------------------------------- */

static unsigned smtp_fly_timeout(const struct smtp_session *);

/*
 * Notes a command sent to the backend.  The reply timer runs for the
 * oldest command in flight: it starts when the ring was empty.
 */
static void
smtp_fly_push(struct smtp_session *s, enum fly_kind k)
{
	unsigned i = (s->fly_head + s->fly_n) % FLY_MAX;

	if (s->fly_n == FLY_MAX)
		fatalx("%s: ring full", __func__);
	s->fly[i] = (uint8_t)k;
	s->fly_gen[i] = s->tx_gen;
	s->fly_t[i] = uv_hrtime();
	if (s->fly_n++ == 0 && s->be != NULL)
		be_expect_reply(s->be, smtp_fly_timeout(s));
}

/* Takes the oldest command in flight; *gen gets its transaction. */
static enum fly_kind
smtp_fly_pop(struct smtp_session *s, uint32_t *gen)
{
	enum fly_kind k = s->fly[s->fly_head];

	*gen = s->fly_gen[s->fly_head];
	s->fly_head = (s->fly_head + 1) % FLY_MAX;
	if (--s->fly_n == 0)
		s->fly_fail = -1;
	/* The next command's reply gets its own full timeout. */
	if (s->be != NULL)
		be_expect_reply(s->be, smtp_fly_timeout(s));
	return k;
}

static unsigned
smtp_fly_timeout(const struct smtp_session *s)
{
	const struct config *c = s->cfg;

	if (s->fly_n == 0)
		return 0;
	switch (s->fly[s->fly_head]) {
	case F_MAIL:	return c->to_be_mail;
	case F_RCPT:	return c->to_be_rcpt;
	case F_DATA:	return c->to_be_data_init;
	case F_DOT:	return c->to_be_data_done;
	default:	return c->to_be_helo;
	}
}

/* Logs the end of a transaction: status is the reply code the client got. */
static void
smtp_tx_log(struct smtp_session *s, int status, const char *reply, size_t len)
{
	const char *eol = memchr(reply, '\r', len);

	if (eol != NULL)
		len = (size_t)(eol - reply);
	log_info("tx session=%s client=%s helo=%s from=%s rcpts=%s "
	    "nrcpt=%u/%u size=%llu tls=%s backend_tls=%s status=%d "
	    "reply=\"%.*s\" duration=%.3f",
	    s->idstr, s->addr, s->client.helo[0] ? s->client.helo : "-",
	    s->tx.from, s->tx.rcpts[0] ? s->tx.rcpts : "-",
	    s->tx.nrcpt_ok, s->tx.nrcpt_sent,
	    (unsigned long long)(s->tx.scan.bytes >= 3 ? s->tx.scan.bytes - 3 :
	    0), (s->flags & SF_TLS) ? tlsio_version(s->tls) : "no",
	    s->be != NULL && be_tls_version(s->be) != NULL ?
	    be_tls_version(s->be) : "no", status, (int)len, reply,
	    (double)(uv_now(&s->w->loop) - s->tx.started) / 1000.0);
	s->ntx++;
	atomic_fetch_add(&s->w->ctx->ntx, 1);
	s->tx.status = status;
}

/* Returns p moved from the n octets at old to the same place at new; a
 * pointer elsewhere (or NULL) stays. */
static const char *
smtp_rebase(const char *p, const char *old, size_t n, const char *new)
{
	uintptr_t	 at = (uintptr_t)p, start = (uintptr_t)old;

	if (p == NULL || at < start || at > start + n)
		return p;
	return new + (at - start);
}

/*
 * Parses the transaction's sender (tx.from, the path as forwarded) once,
 * for the filters of the stages after MAIL: tx.sender then points into
 * tx.from.  A path that does not parse leaves has_sender 0, as it leaves
 * those filters without a sender.
 */
static void
smtp_tx_sender(struct smtp_session *s)
{
	struct smtp_mailrcpt	 m;
	struct smtp_path	*p = &s->tx.sender;
	char			 buf[sizeof(s->tx.from) + 8];
	size_t			 len;
	int			 n;

	if (s->tx.from[0] != '<')
		return;
	n = snprintf(buf, sizeof(buf), "FROM:%s", s->tx.from);
	if (smtp_mailrcpt_parse(buf, (size_t)n, 0, &m) != SMTP_ARG_OK)
		return;
	/* The parse points into buf, after "FROM:": move it to tx.from. */
	*p = m.path;
	len = strlen(s->tx.from);
	p->raw = smtp_rebase(p->raw, buf + 5, len, s->tx.from);
	p->route = smtp_rebase(p->route, buf + 5, len, s->tx.from);
	p->mailbox = smtp_rebase(p->mailbox, buf + 5, len, s->tx.from);
	p->local = smtp_rebase(p->local, buf + 5, len, s->tx.from);
	p->domain = smtp_rebase(p->domain, buf + 5, len, s->tx.from);
	s->tx.has_sender = 1;
}

/* Forgets the transaction; the session is back at S_HELO. */
static void
smtp_tx_clear(struct smtp_session *s)
{
	if (s->tx.started != 0)
		metrics_tx_end(s->tx.status);
	s->tx_gen++;
	free(s->tx.hdr.buf);
	memset(&s->tx, 0, offsetof(struct smtp_tx, from));
	s->tx.from[0] = s->tx.rcpts[0] = '\0';
	if (s->state > S_HELO && s->state != S_QUIT)
		smtp_enter_state(s, S_HELO);
}

/*
 * Resets a transaction the client abandons (EHLO/HELO mid-transaction):
 * the backend gets an RSET of ours whose reply nobody sees.
 */
static void
smtp_tx_abandon(struct smtp_session *s)
{
	if (s->state >= S_MAIL && s->be != NULL &&
	    be_send(s->be, "RSET", 4) == 0)
		smtp_fly_push(s, F_RSET_QUIET);
	smtp_tx_clear(s);
}

static void
smtp_tx_append(char *dst, size_t size, const char *p, size_t len)
{
	size_t used = strlen(dst);

	if (used + len + 2 >= size) {
		if (used + 4 < size &&
		    (used < 3 || strcmp(dst + used - 3, "...") != 0))
			memcpy(dst + used, ",...", 5);
		return;
	}
	if (used)
		dst[used++] = ',';
	memcpy(dst + used, p, len);
	dst[used + len] = '\0';
}

/* ---- Backend ------------------------------------------------------------- */

/*
 * Closes the backend connection.  A pending data write is cancelled with
 * it, so the input buffer is no longer pinned.
 */
static void
smtp_be_drop(struct smtp_session *s, int quit)
{
	if (s->be == NULL)
		return;
	be_close(s->be, quit);
	s->be = NULL;
	s->flags &= ~(SF_PINNED | SF_BE_READY);
}

/*
 * Makes sure a ready backend connection exists.  Returns 1 when ready, 0
 * to wait (set-up in progress), -1 when it failed (reply 451 4.4.1).
 */
static int
smtp_be_want(struct smtp_session *s)
{
	if (s->flags & SF_BE_FAILED) {
		s->flags &= ~SF_BE_FAILED;
		return -1;
	}
	if (s->rdns != NULL)
		return 0;
	if (s->be == NULL) {
		s->flags &= ~SF_BE_READY;
		s->be = be_open(&s->w->loop, s->cfg, &s->client,
		    &smtp_be_callbacks, s);
		if (s->be == NULL)
			return -1;
		return 0;
	}
	return be_ready(s->be) ? 1 : 0;
}

/*
 * Queues a command for the backend, flushing once if the buffer is full.
 * Returns 0, or -1 to wait for a pending write.
 */
static int
smtp_be_send(struct smtp_session *s, const char *line, size_t len)
{
	if (be_send(s->be, line, len) == 0)
		return 0;
	if (be_flush(s->be) != 0)
		return -1;
	return be_send(s->be, line, len);
}

/* Which EHLO keyword the backend needs to receive a parameter. */
static unsigned
smtp_param_ext(const struct smtp_param *p)
{
	static const struct { const char *key; unsigned ext; } map[] = {
		{ "SIZE", SMTP_EXT_SIZE }, { "BODY", SMTP_EXT_8BITMIME },
		{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 }, { "RET", SMTP_EXT_DSN },
		{ "ENVID", SMTP_EXT_DSN }, { "NOTIFY", SMTP_EXT_DSN },
		{ "ORCPT", SMTP_EXT_DSN },
	};
	size_t i;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strlen(map[i].key) == p->keylen &&
		    strncasecmp(map[i].key, p->key, p->keylen) == 0)
			return map[i].ext;
	return 0;
}

/*
 * Builds "MAIL FROM:<path> PARAMS" or "RCPT TO:<path> PARAMS" for the
 * backend: the path as received (or without its source route when the
 * filters asked for that) and each parameter as received, keeping only the
 * parameters of extensions the backend offers.  Returns the length; the
 * path's length is put in *pathlen.
 */
static size_t
smtp_envelope_line(struct smtp_session *s, const struct smtp_mailrcpt *m,
    int is_rcpt, unsigned rewrite, char *buf, size_t size, size_t *pathlen)
{
	const char	*verb = is_rcpt ? "RCPT TO:" : "MAIL FROM:";
	unsigned	 ext = be_extensions(s->be);
	size_t		 len, plen;
	int		 i;

	len = strlen(verb);
	memcpy(buf, verb, len);
	if ((rewrite & FLT_RW_STRIP_ROUTE) && (m->path.flags & SMTP_PATH_ROUTE)) {
		buf[len] = '<';
		memcpy(buf + len + 1, m->path.mailbox, m->path.mailboxlen);
		buf[len + 1 + m->path.mailboxlen] = '>';
		*pathlen = m->path.mailboxlen + 2;
	} else {
		memcpy(buf + len, m->path.raw, m->path.rawlen);
		*pathlen = m->path.rawlen;
	}
	len += *pathlen;
	for (i = 0; i < m->nparams; i++) {
		const struct smtp_param *p = &m->params[i];

		if (!(ext & smtp_param_ext(p))) {
			log_debug("session=%s dropping %.*s: backend lacks it",
			    s->idstr, (int)p->keylen, p->key);
			continue;
		}
		plen = p->val ? (size_t)(p->val + p->vallen - p->key) :
		    p->keylen;
		if (len + 1 + plen > size)
			break;
		buf[len++] = ' ';
		memcpy(buf + len, p->key, plen);
		len += plen;
	}
	return len;
}

/*
 * Answers the command at hand with one of our replies (a command error
 * when err), once the replies in flight are in: returns CMD_WAIT until
 * then, so the client's replies stay in order.
 */
static enum cmd_res
smtp_answer(struct smtp_session *s, enum smtp_reply_id id, const char *arg,
    int err)
{
	if (!smtp_local(s))
		return CMD_WAIT;
	if (err)
		smtp_error(s, id, arg);
	else
		smtp_reply(s, id, arg);
	return CMD_DONE;
}

/*
 * For a command that needs the backend: CMD_DONE after answering 451 4.4.1
 * when it cannot be reached, CMD_WAIT while it is being set up, and -1 when
 * it is ready.
 */
static int
smtp_be_need(struct smtp_session *s)
{
	switch (smtp_be_want(s)) {
	case 0:
		return CMD_WAIT;
	case -1:
		return smtp_answer(s, RPL_BE_UNAVAILABLE, NULL, 0);
	}
	return -1;
}

/* ---- Filters ------------------------------------------------------------- */

static void
smtp_flt_resumed_cb(void *arg)
{
	smtp_process(arg);
}

/* The rate-limit side of a filter environment. */
static void
smtp_env_limits(const struct smtp_session *s, struct flt_env *env)
{
	env->rl = s->w->rl;
	env->rl_tempfail = s->cfg->redis_tempfail;
	env->max_failures = s->cfg->max_failures;
	env->failure_window = s->cfg->failure_window;
}

static void
smtp_fail_done_cb(void *arg, const struct rl_result *r)
{
	(void)arg;
	(void)r;
}

/*
 * Counts a refused command against the client's address, for
 * limits: max_failures_per_client (enforced at connect, for the whole
 * fleet when the store is Redis).  Fire and forget.
 */
static void
smtp_fail(struct smtp_session *s)
{
	struct flt_env	env;
	struct rl_check	c;
	struct rl_result r;

	if (s->cfg->max_failures == 0 || s->w->rl == NULL)
		return;
	memset(&env, 0, sizeof(env));
	env.addr_text = s->addr;
	smtp_env_limits(s, &env);
	flt_ratelimit_failure_check(&env, &c, 1);
	(void)rl_check(s->w->rl, &c, 1, &r, smtp_fail_done_cb, NULL);
}

/*
 * Runs filter stage st, or recalls its verdict when the command at hand
 * already ran it (a command may be dispatched again after waiting).
 * sender and rcpt are the paths of the command at hand; later stages see
 * the transaction's sender.
 */
static enum flt_verdict
smtp_filter(struct smtp_session *s, enum flt_stage st,
    const struct smtp_path *sender, const struct smtp_path *rcpt,
    const char *hdr, size_t hdrlen)
{
	struct flt_env		env;

	if (s->flt.state == FLT_RUN_DONE && s->flt.stage == st)
		return s->flt.res.verdict;
	memset(&env, 0, sizeof(env));
	env.pol = s->cfg->policy;
	env.scratch = s->w->scratch;
	env.session = s->idstr;
	env.hostname = s->cfg->hostname;
	env.addr = (const struct sockaddr *)&s->ss;
	env.addr_text = s->addr;
	env.port = s->client.port;
	env.client_name = strcmp(s->client.name, "[UNAVAILABLE]") == 0 ?
	    "unknown" : s->client.name;
	env.helo = s->client.helo;
	env.authenticated = s->client.login[0] != '\0';
	env.auth_user = s->client.login;
	env.sender = sender;
	if (sender == NULL && s->state >= S_MAIL && s->tx.has_sender)
		env.sender = &s->tx.sender;
	env.rcpt = rcpt;
	env.header = hdr;
	env.headerlen = hdrlen;
	env.size = s->tx.scan.bytes >= 3 ? s->tx.scan.bytes - 3 : 0;
	smtp_env_limits(s, &env);
	return flt_run_stage(&s->flt, st, &env);
}

static int
smtp_refusing(enum flt_verdict v)
{
	return v == FLT_REJECT || v == FLT_TEMPFAIL || v == FLT_REFUSE;
}

/* Logs the verdict that refused something. */
static void
smtp_verdict_log(struct smtp_session *s)
{
	const struct flt_result *r = &s->flt.res;

	log_info("session=%s client=%s stage=%s filter=%s rule=%s verdict=%s "
	    "reply=\"%d %s\"", s->idstr, s->addr, flt_stage_name(s->flt.stage),
	    r->filter ? r->filter : "-", r->rule ? r->rule : "-",
	    r->verdict == FLT_REFUSE ? "refuse" : r->verdict == FLT_TEMPFAIL ?
	    "tempfail" : "reject", r->code, r->reply);
}

/* Refuses the session: no backend, 503 to everything but QUIT. */
static void
smtp_refuse_session(struct smtp_session *s)
{
	s->flags |= SF_REFUSED;
	smtp_be_drop(s, 0);
	smtp_tx_clear(s);
}

/*
 * Answers the command at hand with the refusing verdict v of the stage just
 * run (for FLT_REFUSE the session turns refused).  Returns 1 when it
 * answered, 0 when v lets the command go on.  The caller made sure a local
 * reply may be written now (smtp_local).
 */
static int
smtp_refused(struct smtp_session *s, enum flt_verdict v)
{
	const struct flt_result	*r = &s->flt.res;
	char			 buf[600];
	int			 n;

	if (!smtp_refusing(v))
		return 0;
	smtp_verdict_log(s);
	n = snprintf(buf, sizeof(buf), "%03d %s\r\n", r->code, r->reply);
	smtp_out(s, buf, (size_t)n);
	if (r->code >= 500)
		smtp_fail(s);
	if (v == FLT_REFUSE)
		smtp_refuse_session(s);
	return 1;
}

/* Before the greeting: the connect stage. */
static enum step
smtp_greet(struct smtp_session *s)
{
	enum flt_verdict	v;
	char			buf[600];
	int			n;

	if (s->rdns != NULL)
		return STEP_WAIT;
	v = smtp_filter(s, FLT_CONNECT, NULL, NULL, NULL, 0);
	if (v == FLT_PENDING)
		return STEP_WAIT;
	s->flags |= SF_GREETED;
	if (v == FLT_TEMPFAIL) {
		/* A 4xx greeting is 421, then the server closes (3.8). */
		smtp_verdict_log(s);
		n = snprintf(buf, sizeof(buf), "421 %s\r\n", s->flt.res.reply);
		smtp_out(s, buf, (size_t)n);
		s->flags |= SF_CLOSE_AFTER;
	} else if (smtp_refusing(v)) {
		/* A greeting refuses with 554 (RFC 5321 4.3.2), whatever
		 * code the rule gave. */
		s->flt.res.verdict = FLT_REFUSE;
		s->flt.res.code = 554;
		smtp_refused(s, FLT_REFUSE);
	} else
		smtp_reply(s, RPL_GREETING, NULL);
	flt_run_reset(&s->flt);
	return STEP_AGAIN;
}

/* A refused session: QUIT works, everything else gets 503. */
static enum cmd_res
smtp_cmd_refused(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	if (v == SMTP_V_QUIT)
		return smtp_cmd_local(s, v, arg, len);
	smtp_reply(s, RPL_REFUSED_SESSION, NULL);
	return CMD_DONE;
}

/* ---- Commands -------------------------------------------------------------- */

static const char *
smtp_trim(const char *arg, size_t *len)
{
	while (*len && *arg == ' ') {
		arg++;
		(*len)--;
	}
	while (*len && arg[*len - 1] == ' ')
		(*len)--;
	return arg;
}

static enum cmd_res
smtp_cmd_helo(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	enum flt_verdict	fv;
	char			buf[600];
	size_t			n;

	if (!smtp_local(s))
		return CMD_WAIT;
	arg = smtp_trim(arg, &len);
	if (len == 0) {
		smtp_error(s, RPL_HELO_SYNTAX, smtp_verb_name(v));
		return CMD_DONE;
	}
	if (len >= sizeof(s->client.helo))
		len = sizeof(s->client.helo) - 1;
	memcpy(s->client.helo, arg, len);
	s->client.helo[len] = '\0';
	fv = smtp_filter(s, FLT_HELO, NULL, NULL, NULL, 0);
	if (fv == FLT_PENDING)
		return CMD_WAIT;
	if (smtp_refused(s, fv))
		return CMD_DONE;
	smtp_tx_abandon(s);
	s->client.esmtp = v == SMTP_V_EHLO;
	if (s->state < S_HELO)
		smtp_enter_state(s, S_HELO);
	if (v == SMTP_V_HELO) {
		smtp_reply(s, RPL_HELO, NULL);
		return CMD_DONE;
	}
	n = (size_t)snprintf(buf, sizeof(buf),
	    "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n"
	    "%s%s250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 DSN\r\n",
	    s->cfg->hostname, (unsigned long long)s->cfg->max_message_size,
	    s->lsn->tls == CFG_TLS_STARTTLS && s->tls == NULL ?
	    "250-STARTTLS\r\n" : "", smtp_auth_offered(s) ?
	    "250-AUTH PLAIN LOGIN\r\n" : "");
	smtp_out(s, buf, n);
	return CMD_DONE;
}

/* Maps a MAIL/RCPT argument error to its reply. */
static enum smtp_reply_id
smtp_arg_reply(enum smtp_arg_err e, int is_rcpt)
{
	switch (e) {
	case SMTP_ARG_SYNTAX:
		return is_rcpt ? RPL_RCPT_SYNTAX : RPL_MAIL_SYNTAX;
	case SMTP_ARG_PATH:
		return is_rcpt ? RPL_RCPT_ADDR_SYNTAX : RPL_SENDER_SYNTAX;
	case SMTP_ARG_PARAM_UNKNOWN:
		return RPL_PARAM_UNKNOWN;
	case SMTP_ARG_UTF8:
		return RPL_UTF8_REQUIRED;
	default:
		return RPL_PARAM_SYNTAX;
	}
}

/*
 * Takes the parse of arg that smtp_envc_put() kept, if it is one of these
 * very bytes.  Returns 1 when *m and *o are filled, 0 when arg must be
 * parsed.
 */
static int
smtp_envc_get(struct smtp_session *s, const char *arg, size_t len,
    int is_rcpt, struct smtp_mailrcpt *m, struct smtp_mail_opts *o)
{
	struct smtp_envc *c = s->envc;

	if (c == NULL || !c->valid)
		return 0;
	c->valid = 0;
	if (c->arg != arg || c->len != len || c->is_rcpt != is_rcpt ||
	    c->smtputf8 != (int)s->tx.smtputf8 || memcmp(c->copy, arg, len) != 0)
		return 0;
	*m = c->m;
	*o = c->o;
	return 1;
}

/* Keeps the parse of arg for its dispatch after the pending stage. */
static void
smtp_envc_put(struct smtp_session *s, const char *arg, size_t len,
    int is_rcpt, const struct smtp_mailrcpt *m, const struct smtp_mail_opts *o)
{
	struct smtp_envc *c = s->envc;

	if (len > ENVC_ARG_MAX)
		return;
	if (c == NULL && (c = s->envc = malloc(sizeof(*c))) == NULL)
		return;		/* parsed again then */
	c->valid = 1;
	c->arg = arg;
	c->len = len;
	c->is_rcpt = is_rcpt;
	c->smtputf8 = s->tx.smtputf8;
	c->m = *m;
	c->o = *o;
	memcpy(c->copy, arg, len);
}

/*
 * MAIL and RCPT: checked here, then forwarded.  A local reply waits for
 * the replies in flight.
 */
static enum cmd_res
smtp_cmd_envelope(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	struct smtp_mailrcpt	 m;
	struct smtp_mail_opts	 o;
	enum smtp_arg_err	 e;
	enum flt_verdict	 fv;
	int			 is_rcpt = v == SMTP_V_RCPT, r;
	char			 line[1024];
	size_t			 n, pathlen;

	if (!is_rcpt && s->state < S_HELO)
		return smtp_answer(s, RPL_NEED_HELO, NULL, 1);
	if (!is_rcpt && s->lsn->require_tls && !(s->flags & SF_TLS))
		return smtp_answer(s, RPL_NEED_TLS, NULL, 1);
	if (s->state != (is_rcpt ? S_MAIL : S_HELO))
		return smtp_answer(s, is_rcpt ? RPL_NEED_MAIL : RPL_NESTED_MAIL,
		    NULL, 1);
	if (s->tx.abort == TX_BACKEND)
		return smtp_answer(s, s->tx.abort_reply, NULL, 0);
	if (smtp_envc_get(s, arg, len, is_rcpt, &m, &o))
		e = SMTP_ARG_OK;
	else {
		e = smtp_mailrcpt_parse(arg, len, is_rcpt, &m);
		if (e == SMTP_ARG_OK)
			e = smtp_params_check(&m, is_rcpt, s->tx.smtputf8, &o);
	}
	if (e != SMTP_ARG_OK)
		return smtp_answer(s, smtp_arg_reply(e, is_rcpt), NULL, 1);
	if (!is_rcpt && o.size > s->cfg->max_message_size)
		return smtp_answer(s, RPL_SIZE_EXCEEDED, NULL, 0);
	if (is_rcpt &&
	    s->tx.nrcpt_sent - s->tx.nrcpt_rej >= s->cfg->max_recipients)
		return smtp_answer(s, RPL_TOO_MANY_RCPT, NULL, 0);
	fv = smtp_filter(s, is_rcpt ? FLT_RCPT : FLT_MAIL,
	    is_rcpt ? NULL : &m.path, is_rcpt ? &m.path : NULL, NULL, 0);
	if (fv == FLT_PENDING) {
		smtp_envc_put(s, arg, len, is_rcpt, &m, &o);
		return CMD_WAIT;
	}
	if (smtp_refusing(fv)) {
		if (!smtp_local(s))
			return CMD_WAIT;
		smtp_refused(s, fv);
		return CMD_DONE;
	}
	if (!is_rcpt) {
		if ((r = smtp_be_need(s)) != -1)
			return (enum cmd_res)r;
	}
	if (s->be == NULL || s->fly_n == FLY_MAX)
		return CMD_WAIT;
	if (!(be_extensions(s->be) & SMTP_EXT_PIPELINING) && s->fly_n > 0)
		return CMD_WAIT;
	n = smtp_envelope_line(s, &m, is_rcpt, s->flt.res.rewrite, line,
	    sizeof(line), &pathlen);
	if (smtp_be_send(s, line, n) < 0)
		return CMD_WAIT;
	if (is_rcpt) {
		smtp_fly_push(s, F_RCPT);
		s->tx.nrcpt_sent++;
		smtp_tx_append(s->tx.rcpts, sizeof(s->tx.rcpts), line + 8,
		    pathlen);
	} else {
		smtp_tx_clear(s);
		smtp_fly_push(s, F_MAIL);
		s->tx.smtputf8 = o.smtputf8;
		s->tx.started = uv_now(&s->w->loop);
		/* The path as forwarded, after "MAIL FROM:". */
		memcpy(s->tx.from, line + 10, pathlen);
		s->tx.from[pathlen] = '\0';
		smtp_tx_sender(s);
		smtp_enter_state(s, S_MAIL);
	}
	return CMD_DONE;
}

static enum cmd_res
smtp_cmd_data(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	enum flt_verdict fv;

	(void)v;
	(void)arg;
	/* Every RCPT reply must be in before we know whether DATA may go. */
	if (!smtp_local(s))
		return CMD_WAIT;
	if (len != 0) {
		smtp_error(s, RPL_NO_ARGS, "DATA");
		return CMD_DONE;
	}
	if (s->state == S_MAIL && s->tx.abort == TX_BACKEND) {
		smtp_reply(s, s->tx.abort_reply, NULL);
		smtp_tx_clear(s);
		return CMD_DONE;
	}
	if (s->state != S_MAIL || s->be == NULL) {
		smtp_error(s, s->state < S_HELO ? RPL_NEED_HELO : RPL_NEED_MAIL,
		    NULL);
		return CMD_DONE;
	}
	if (s->tx.nrcpt_ok == 0) {
		smtp_error(s, s->tx.nrcpt_sent ? RPL_NO_VALID_RCPT : RPL_NEED_RCPT,
		    NULL);
		return CMD_DONE;
	}
	fv = smtp_filter(s, FLT_DATA, NULL, NULL, NULL, 0);
	if (fv == FLT_PENDING)
		return CMD_WAIT;
	if (smtp_refused(s, fv))
		return CMD_DONE;
	if (smtp_be_send(s, "DATA", 4) < 0)
		return CMD_WAIT;
	smtp_fly_push(s, F_DATA);
	s->flags |= SF_AWAIT;
	return CMD_DONE;
}

static enum cmd_res
smtp_cmd_rset(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	(void)v;
	(void)arg;
	if (len != 0)
		return smtp_answer(s, RPL_NO_ARGS, "RSET", 1);
	if (s->be != NULL && be_ready(s->be) && s->fly_n < FLY_MAX) {
		if (smtp_be_send(s, "RSET", 4) < 0)
			return CMD_WAIT;
		smtp_fly_push(s, F_RSET);
		smtp_tx_clear(s);
		return CMD_DONE;
	}
	if (!smtp_local(s))
		return CMD_WAIT;
	smtp_tx_clear(s);
	smtp_reply(s, RPL_OK, NULL);
	return CMD_DONE;
}

static enum cmd_res
smtp_cmd_expn(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	char	line[600];
	int	r;

	if (!s->cfg->smtp_expn || s->state < S_HELO)
		return smtp_answer(s, s->cfg->smtp_expn ? RPL_NEED_HELO :
		    RPL_EXPN_DISABLED, NULL, 1);
	if ((r = smtp_be_need(s)) != -1)
		return (enum cmd_res)r;
	if (s->fly_n == FLY_MAX)
		return CMD_WAIT;
	len = (size_t)snprintf(line, sizeof(line), "%s %.*s", smtp_verb_name(v),
	    (int)(len < 512 ? len : 512), arg);
	if (smtp_be_send(s, line, len) < 0)
		return CMD_WAIT;
	smtp_fly_push(s, F_EXPN);
	return CMD_DONE;
}

/* ---- SMTP AUTH (RFC 4954): PLAIN and LOGIN ----------------------------- */

/* Nonzero when this session offers AUTH: a listener with auth, under TLS. */
static int
smtp_auth_offered(const struct smtp_session *s)
{
	return s->lsn->auth && (s->flags & SF_TLS) && s->cfg->auth_db != NULL;
}

static void
smtp_auth_work(uv_work_t *req)
{
	struct auth_req *a = req->data;

	a->result = auth_db_verify(a->cfg->auth_db, a->user, a->pass);
	explicit_bzero(a->pass, sizeof(a->pass));
}

static void
smtp_auth_done(uv_work_t *req, int status)
{
	struct auth_req		*a = req->data;
	struct smtp_session	*s = a->s;

	if (s != NULL) {
		/* The answer waits for room in the output (smtp_step()). */
		s->auth_req = NULL;
		s->auth_step = AUTH_DONE;
		s->auth_ok = status != 0 || a->result < 0 ? -1 : a->result;
		if (s->auth_ok == 1) {
			snprintf(s->client.login, sizeof(s->client.login), "%s",
			    a->user);
			log_info("session=%s client=%s authenticated user=%s "
			    "mechanism=%s", s->idstr, s->addr, a->user, a->mech);
		} else
			log_info("session=%s client=%s authentication failed "
			    "user=%s mechanism=%s%s", s->idstr, s->addr, a->user,
			    a->mech, s->auth_ok < 0 ? " (check failed)" : "");
		smtp_process(s);
	}
	config_unref(a->cfg);
	explicit_bzero(a, sizeof(*a));
	free(a);
}

/* The check is done: its answer, now that the output has room. */
static enum step
smtp_auth_answer(struct smtp_session *s)
{
	s->auth_step = AUTH_IDLE;
	if (s->auth_ok == 1) {
		smtp_reply(s, RPL_AUTH_OK, NULL);
		/* The next MAIL opens a backend connection that tells the
		 * backend the login (XCLIENT LOGIN=). */
		smtp_be_drop(s, 1);
	} else {
		if (s->auth_ok == 0)
			s->auth_fails++;
		smtp_error(s, s->auth_ok < 0 ? RPL_AUTH_TEMP : RPL_AUTH_FAILED,
		    NULL);
	}
	return STEP_AGAIN;
}

/* Starts checking user's password pass (wiped here) in the thread pool. */
static void
smtp_auth_check(struct smtp_session *s, const char *mech, const char *user,
    char *pass)
{
	struct auth_req *a;

	s->auth_step = AUTH_IDLE;
	if ((a = calloc(1, sizeof(*a))) == NULL) {
		explicit_bzero(pass, AUTH_FIELD_MAX + 1);
		smtp_error(s, RPL_AUTH_TEMP, NULL);
		return;
	}
	a->work.data = a;
	a->s = s;
	a->cfg = config_ref(s->cfg);
	a->mech = mech;
	snprintf(a->user, sizeof(a->user), "%s", user);
	memcpy(a->pass, pass, sizeof(a->pass));
	explicit_bzero(pass, AUTH_FIELD_MAX + 1);
	if (uv_queue_work(&s->w->loop, &a->work, smtp_auth_work,
	    smtp_auth_done) < 0) {
		config_unref(a->cfg);
		explicit_bzero(a, sizeof(*a));
		free(a);
		smtp_error(s, RPL_AUTH_TEMP, NULL);
		return;
	}
	s->auth_req = a;
	s->auth_step = AUTH_CHECKING;
}

/*
 * Decodes one base64 SASL message b64[0..len) into out (size bytes).
 * Returns its length, or -1 after answering 501.
 */
static ssize_t
smtp_auth_decode(struct smtp_session *s, const char *b64, size_t len,
    unsigned char *out, size_t size)
{
	size_t n;

	if (auth_b64_decode(b64, len, out, size, &n) != AUTH_OK) {
		s->auth_step = AUTH_IDLE;
		smtp_error(s, RPL_AUTH_BAD_B64, NULL);
		return -1;
	}
	return (ssize_t)n;
}

/* A field the mechanism refuses (empty, too long): 535, as a failure. */
static void
smtp_auth_refuse(struct smtp_session *s, const char *mech, int err)
{
	s->auth_step = AUTH_IDLE;
	s->auth_fails++;
	log_info("session=%s client=%s authentication failed mechanism=%s: %s",
	    s->idstr, s->addr, mech, auth_strerror(err));
	smtp_error(s, err == AUTH_E_SYNTAX ? RPL_AUTH_BAD_B64 : RPL_AUTH_FAILED,
	    NULL);
}

/* The PLAIN message, base64 in b64[0..len). */
static void
smtp_auth_plain(struct smtp_session *s, const char *b64, size_t len)
{
	unsigned char		msg[AUTH_PLAIN_MAX + 1];
	struct auth_plain	p;
	ssize_t			n;
	int			r;

	if ((n = smtp_auth_decode(s, b64, len, msg, sizeof(msg))) < 0)
		return;
	r = auth_plain_parse(msg, (size_t)n, &p);
	explicit_bzero(msg, sizeof(msg));
	if (r != AUTH_OK) {
		smtp_auth_refuse(s, "PLAIN", r);
		return;
	}
	smtp_auth_check(s, "PLAIN", p.authcid, p.passwd);
	explicit_bzero(&p, sizeof(p));
}

/* A line answering our 334: the client's SASL response. */
static void
smtp_auth_response(struct smtp_session *s, const char *line, size_t len)
{
	unsigned char	msg[AUTH_FIELD_MAX + 2];
	char		field[AUTH_FIELD_MAX + 1];
	ssize_t		n;
	int		r;

	if (len == 1 && line[0] == '*') {
		s->auth_step = AUTH_IDLE;
		smtp_error(s, RPL_AUTH_ABORTED, NULL);
		return;
	}
	if (s->auth_step == AUTH_PLAIN) {
		smtp_auth_plain(s, line, len);
		return;
	}
	if ((n = smtp_auth_decode(s, line, len, msg, sizeof(msg))) < 0)
		return;
	r = auth_login_field(msg, (size_t)n, field);
	explicit_bzero(msg, sizeof(msg));
	if (r != AUTH_OK) {
		smtp_auth_refuse(s, "LOGIN", r);
		return;
	}
	if (s->auth_step == AUTH_LOGIN_USER) {
		memcpy(s->auth_name, field, sizeof(s->auth_name));
		s->auth_step = AUTH_LOGIN_PASS;
		smtp_out(s, "334 " AUTH_LOGIN_PROMPT_PASS "\r\n",
		    sizeof("334 " AUTH_LOGIN_PROMPT_PASS "\r\n") - 1);
		return;
	}
	smtp_auth_check(s, "LOGIN", s->auth_name, field);
}

/*
 * AUTH mechanism [initial-response]: offered only under TLS on a listener
 * with auth: true.
 */
static enum cmd_res
smtp_cmd_auth(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	const char	*ir = NULL, *sp;
	size_t		 mlen, irlen = 0;

	if (!s->lsn->auth || s->cfg->auth_db == NULL)
		return smtp_cmd_local(s, v, arg, len);
	if (!smtp_local(s))
		return CMD_WAIT;
	arg = smtp_trim(arg, &len);
	if (!(s->flags & SF_TLS)) {
		smtp_error(s, RPL_AUTH_NEED_TLS, NULL);
		return CMD_DONE;
	}
	if (s->state < S_HELO) {
		smtp_error(s, RPL_NEED_HELO, NULL);
		return CMD_DONE;
	}
	if (s->client.login[0] != '\0') {
		smtp_error(s, RPL_AUTH_TWICE, NULL);
		return CMD_DONE;
	}
	if (s->state > S_HELO) {
		smtp_error(s, RPL_TX_IN_PROGRESS, NULL);
		return CMD_DONE;
	}
	if ((sp = memchr(arg, ' ', len)) != NULL) {
		mlen = (size_t)(sp - arg);
		ir = sp + 1;
		irlen = len - mlen - 1;
	} else
		mlen = len;
	/* "=" is an empty initial response (RFC 4954 4). */
	if (ir != NULL && irlen == 1 && ir[0] == '=')
		irlen = 0;
	if (mlen == 5 && strncasecmp(arg, "PLAIN", 5) == 0) {
		if (ir != NULL) {
			smtp_auth_plain(s, ir, irlen);
			return CMD_DONE;
		}
		s->auth_step = AUTH_PLAIN;
		smtp_out(s, "334 \r\n", 6);
	} else if (mlen == 5 && strncasecmp(arg, "LOGIN", 5) == 0) {
		s->auth_step = AUTH_LOGIN_USER;
		if (ir != NULL) {
			smtp_auth_response(s, ir, irlen);
			return CMD_DONE;
		}
		smtp_out(s, "334 " AUTH_LOGIN_PROMPT_USER "\r\n",
		    sizeof("334 " AUTH_LOGIN_PROMPT_USER "\r\n") - 1);
	} else if (mlen == 0)
		smtp_error(s, RPL_NO_ARGS, "AUTH mechanism");
	else
		smtp_error(s, RPL_AUTH_MECH, NULL);
	return CMD_DONE;
}

/*
 * STARTTLS (RFC 3207): 220, then the handshake once the reply is out
 * (smtp_tls_start(), from smtp_step()).
 */
static enum cmd_res
smtp_cmd_starttls(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	(void)arg;
	if (s->lsn->tls != CFG_TLS_STARTTLS)
		return smtp_cmd_local(s, v, arg, len);
	if (!smtp_local(s))
		return CMD_WAIT;
	if (len != 0)
		smtp_error(s, RPL_NO_ARGS, "STARTTLS");
	else if (s->tls != NULL)
		smtp_error(s, RPL_TLS_ACTIVE, NULL);
	else if (s->state > S_HELO)
		smtp_error(s, RPL_TX_IN_PROGRESS, NULL);
	else {
		smtp_reply(s, RPL_TLS_READY, NULL);
		s->flags |= SF_TLS_START;
	}
	return CMD_DONE;
}

/* Commands answered here alone. */
static enum cmd_res
smtp_cmd_local(struct smtp_session *s, enum smtp_verb v, const char *arg,
    size_t len)
{
	(void)arg;
	if (!smtp_local(s))
		return CMD_WAIT;
	switch (v) {
	case SMTP_V_NOOP:
		smtp_reply(s, RPL_OK, NULL);
		break;
	case SMTP_V_VRFY:
		smtp_reply(s, RPL_VRFY, NULL);
		break;
	case SMTP_V_HELP:
		smtp_reply(s, RPL_HELP, NULL);
		break;
	case SMTP_V_QUIT:
		if (len != 0) {
			smtp_error(s, RPL_NO_ARGS, "QUIT");
			break;
		}
		smtp_reply(s, RPL_BYE, NULL);
		smtp_enter_state(s, S_QUIT);
		s->flags |= SF_CLOSE_AFTER;
		break;
	case SMTP_V_XCLIENT:
	case SMTP_V_XFORWARD:
		log_info("session=%s client=%s refused %s", s->idstr, s->addr,
		    smtp_verb_name(v));
		smtp_error(s, RPL_XCLIENT_DENIED, NULL);
		break;
	case SMTP_V_STARTTLS:
	case SMTP_V_AUTH:
	case SMTP_V_BDAT:
		smtp_error(s, RPL_NOT_IMPLEMENTED, NULL);
		break;
	default:
		smtp_error(s, RPL_UNKNOWN, NULL);
		break;
	}
	return CMD_DONE;
}


/* The command table, indexed by verb. */
static const smtp_cmd_fn smtp_commands[SMTP_V__COUNT] = {
	[SMTP_V_UNKNOWN]	= smtp_cmd_local,
	[SMTP_V_HELO]		= smtp_cmd_helo,
	[SMTP_V_EHLO]		= smtp_cmd_helo,
	[SMTP_V_MAIL]		= smtp_cmd_envelope,
	[SMTP_V_RCPT]		= smtp_cmd_envelope,
	[SMTP_V_DATA]		= smtp_cmd_data,
	[SMTP_V_RSET]		= smtp_cmd_rset,
	[SMTP_V_NOOP]		= smtp_cmd_local,
	[SMTP_V_QUIT]		= smtp_cmd_local,
	[SMTP_V_VRFY]		= smtp_cmd_local,
	[SMTP_V_EXPN]		= smtp_cmd_expn,
	[SMTP_V_HELP]		= smtp_cmd_local,
	[SMTP_V_STARTTLS]	= smtp_cmd_starttls,
	[SMTP_V_AUTH]		= smtp_cmd_auth,
	[SMTP_V_BDAT]		= smtp_cmd_local,
	[SMTP_V_XCLIENT]	= smtp_cmd_local,
	[SMTP_V_XFORWARD]	= smtp_cmd_local,
};

/* ---- Message data ------------------------------------------------------ */

/*
 * The message is refused at its end (too big, bare CR/LF, backend lost, or
 * a filter at the header or end-of-data stage): the backend's transaction
 * is aborted by closing its connection before the final dot, and the
 * client is told why.
 */
static void
smtp_data_abort(struct smtp_session *s)
{
	static const enum smtp_reply_id abort_replies[] = {
		[TX_OVERSIZE] = RPL_SIZE_EXCEEDED,
		[TX_SMUGGLE] = RPL_SMUGGLING,
	};
	static const char *const why[] = {
		[TX_OVERSIZE] = "over max_message_size",
		[TX_SMUGGLE] = "bare CR or LF in data",
		[TX_BACKEND] = "backend lost",
		[TX_FILTER] = "refused by a filter",
	};
	char	buf[600];
	size_t	start = s->out_len;
	int	code, n, refuse = 0;

	/* Without its final dot the backend never completes the message. */
	smtp_be_drop(s, 0);
	log_info("session=%s client=%s message refused: %s", s->idstr,
	    s->addr, why[s->tx.abort]);
	if (s->tx.abort == TX_FILTER) {
		code = s->flt.res.code;
		refuse = s->flt.res.verdict == FLT_REFUSE;
		n = snprintf(buf, sizeof(buf), "%03d %s\r\n", code,
		    s->flt.res.reply);
		smtp_out(s, buf, (size_t)n);
		flt_run_reset(&s->flt);
	} else {
		enum smtp_reply_id id = s->tx.abort == TX_BACKEND ?
		    s->tx.abort_reply : abort_replies[s->tx.abort];

		code = smtp_replies[id].code;
		smtp_reply(s, id, NULL);
	}
	smtp_tx_log(s, code, s->out + start + 4, s->out_len - start - 4);
	smtp_tx_clear(s);
	if (refuse)
		smtp_refuse_session(s);
}

/* Runs the header stage on the complete header field h->buf[0..len). */
static void
smtp_hdr_field(struct smtp_session *s, size_t len)
{
	enum flt_verdict v;

	if (len == 0 || s->tx.abort != TX_OK)
		return;
	v = smtp_filter(s, FLT_HEADER, NULL, NULL, s->tx.hdr.buf, len);
	if (smtp_refusing(v)) {
		/* The verdict stays in s->flt until the end of data. */
		smtp_verdict_log(s);
		s->tx.abort = TX_FILTER;
		return;
	}
	flt_run_reset(&s->flt);
}

/*
 * Follows the header section through the message bytes p[0..n): gathers
 * each field, unfolded (CRLF removed, the folding white space kept, at most
 * HDR_MAX bytes), and hands it to the header stage.  Ends at the empty
 * line.  The data itself is forwarded untouched elsewhere.
 */
static void
smtp_hdr_feed(struct smtp_session *s, const char *p, size_t n)
{
	struct smtp_hdr	*h = &s->tx.hdr;
	size_t		 i;

	if (h->buf == NULL && (h->buf = malloc(HDR_MAX)) == NULL) {
		h->body = 1;
		return;
	}
	for (i = 0; i < n && !h->body; i++) {
		if (p[i] == '\n') {
			if (h->line_len == 0) {
				smtp_hdr_field(s, h->line_start);
				h->body = 1;
				break;
			}
			if (h->line_first != ' ' && h->line_first != '\t') {
				/* A new field: the one before it is whole. */
				smtp_hdr_field(s, h->line_start);
				memmove(h->buf, h->buf + h->line_start,
				    h->len - h->line_start);
				h->len -= h->line_start;
			}
			h->line_start = h->len;
			h->line_len = 0;
		} else if (p[i] != '\r') {
			if (h->line_len++ == 0)
				h->line_first = (unsigned char)p[i];
			if (h->len < HDR_MAX)
				h->buf[h->len++] = p[i];
		}
	}
}

/*
 * How much of the input the scanner may see now: a final "." or ".\r" at
 * the start of a line is kept back until its successor arrives, so the
 * end-of-data sequence ".\r\n" is always consumed in one piece and can be
 * held back from the backend until the end-of-data stage has decided.
 */
static size_t
smtp_data_avail(const struct smtp_session *s, const char *p, size_t avail)
{
	size_t k;

	if (avail >= 1 && p[avail - 1] == '.')
		k = 1;
	else if (avail >= 2 && p[avail - 1] == '\r' && p[avail - 2] == '.')
		k = 2;
	else
		return avail;
	if (avail > k ? p[avail - k - 1] == '\n' : s->tx.bol)
		return avail - k;
	return avail;
}

static enum step
smtp_data_step(struct smtp_session *s)
{
	const char	*p = s->in + s->in_start;
	size_t		 n, fwd, avail;
	uint64_t	 msg;
	int		 done = 0, was_ok = s->tx.abort == TX_OK;

	if (s->in == NULL)
		return STEP_WAIT;
	avail = smtp_data_avail(s, p, s->in_end - s->in_start);
	if (avail == 0)
		return STEP_WAIT;
	n = smtp_dscan(&s->tx.scan, p, avail, &fwd, &done);
	if (n == 0)
		return STEP_WAIT;
	s->tx.bol = p[n - 1] == '\n';
	msg = s->tx.scan.bytes - (done ? 3 : 0);
	if (was_ok && msg > s->cfg->max_message_size) {
		s->tx.abort = TX_OVERSIZE;
		fwd = 0;
	} else if (was_ok && s->tx.scan.bad)
		s->tx.abort = TX_SMUGGLE;
	else if (was_ok && done)
		fwd -= 3;	/* ".\r\n" waits for the end-of-data stage */
	if (s->tx.abort == TX_OK && !s->tx.hdr.body)
		smtp_hdr_feed(s, p, done ? n - 3 : n);
	metrics_data_bytes(was_ok && s->be != NULL ? fwd : 0);
	if (was_ok && fwd > 0 && s->be != NULL &&
	    be_write_data(s->be, p, fwd) != 0) {
		/* A backend that takes no data for this long has failed. */
		s->flags |= SF_PINNED;
		be_expect_reply(s->be, s->cfg->to_be_data_block);
	}
	s->in_start += n;
	if (!done)
		return STEP_AGAIN;
	if (s->tx.abort == TX_OK && !s->tx.hdr.body)
		smtp_hdr_field(s, s->tx.hdr.line_start);
	if (s->tx.abort != TX_OK)
		smtp_data_abort(s);
	else
		s->flags |= SF_EOM;
	return STEP_AGAIN;
}

/* The final dot is in: the end-of-data stage, then the dot to the backend. */
static enum step
smtp_data_eom(struct smtp_session *s)
{
	static const char	dot[] = ".\r\n";
	enum flt_verdict	v;

	v = smtp_filter(s, FLT_EOM, NULL, NULL, NULL, 0);
	if (v == FLT_PENDING)
		return STEP_WAIT;
	s->flags &= ~SF_EOM;
	if (smtp_refusing(v)) {
		smtp_verdict_log(s);
		s->tx.abort = TX_FILTER;
	} else
		flt_run_reset(&s->flt);
	if (s->tx.abort != TX_OK || s->be == NULL) {
		if (s->tx.abort == TX_OK) {
			s->tx.abort = TX_BACKEND;
			s->tx.abort_reply = RPL_BE_LOST;
		}
		smtp_data_abort(s);
		return STEP_AGAIN;
	}
	if (be_write_data(s->be, dot, sizeof(dot) - 1) != 0)
		s->flags |= SF_PINNED;
	smtp_fly_push(s, F_DOT);
	s->flags |= SF_AWAIT;
	smtp_enter_state(s, S_DOT);
	return STEP_AGAIN;
}

/* ---- The input loop ------------------------------------------------------ */

/* Answers one command in flight locally after the backend was lost. */
static void
smtp_fly_fail_one(struct smtp_session *s)
{
	enum smtp_reply_id	id = (enum smtp_reply_id)s->fly_fail;
	size_t			start = s->out_len;
	uint32_t		gen;

	switch (smtp_fly_pop(s, &gen)) {
	case F_RSET_QUIET:
		return;
	case F_RSET:
		smtp_reply(s, RPL_OK, NULL);
		return;
	case F_DOT:
		smtp_reply(s, id, NULL);
		smtp_tx_log(s, smtp_replies[id].code, s->out + start + 4,
		    s->out_len - start - 4);
		/* FALLTHROUGH */
	case F_DATA:
		s->flags &= ~SF_AWAIT;
		if (s->state != S_DOT && s->state != S_DATA)
			smtp_reply(s, id, NULL);
		smtp_tx_clear(s);
		return;
	case F_MAIL:
		smtp_reply(s, id, NULL);
		if (s->state == S_MAIL && gen == s->tx_gen)
			smtp_tx_clear(s);
		return;
	default:
		smtp_reply(s, id, NULL);
		return;
	}
}

static int
smtp_idle(const struct smtp_session *s)
{
	return s->state <= S_HELO && s->fly_n == 0 &&
	    s->auth_step == AUTH_IDLE && !(s->flags & SF_AWAIT) &&
	    (s->be == NULL || be_ready(s->be));
}

static enum step
smtp_step(struct smtp_session *s)
{
	const char		*line, *arg;
	size_t			 avail, linelen, arglen, consumed, max;
	enum smtp_line_status	 st;
	enum smtp_verb		 v;
	smtp_cmd_fn		 fn;
	const char		*lf;

	if (s->flags & (SF_CLOSING | SF_CLOSE_AFTER | SF_TLS_HS))
		return STEP_WAIT;
	if ((s->flags & (SF_PROXY | SF_DRAIN)) == (SF_PROXY | SF_DRAIN)) {
		smtp_close(s, "shutdown");
		return STEP_WAIT;
	}
	if (s->flags & SF_PROXY)
		return smtp_proxy_header(s);
	if (!smtp_out_room(s, REPLY_RESERVE)) {
		smtp_flush(s);
		if (!smtp_out_room(s, REPLY_RESERVE))
			return STEP_WAIT;
	}
	if (s->fly_fail >= 0 && s->fly_n > 0) {
		smtp_fly_fail_one(s);
		return STEP_AGAIN;
	}
	if (s->auth_step == AUTH_DONE)
		return smtp_auth_answer(s);
	if (s->auth_step == AUTH_CHECKING)
		return STEP_WAIT;
	if ((s->flags & SF_DRAIN) && smtp_idle(s)) {
		smtp_reply(s, RPL_SHUTDOWN, NULL);
		s->flags |= SF_CLOSE_AFTER;
		return STEP_WAIT;
	}
	if (!(s->flags & SF_GREETED))
		return smtp_greet(s);
	if ((s->be != NULL && be_busy(s->be)) || (s->flags & SF_AWAIT))
		return STEP_WAIT;
	if (s->flags & SF_EOM)
		return smtp_data_eom(s);
	if (s->state == S_DATA)
		return smtp_data_step(s);
	if (s->in == NULL || (avail = s->in_end - s->in_start) == 0)
		return STEP_WAIT;
	if (s->flags & SF_SKIP) {
		if ((lf = memchr(s->in + s->in_start, '\n', avail)) == NULL) {
			s->in_start = s->in_end;
			return STEP_WAIT;
		}
		s->in_start = (size_t)(lf - s->in) + 1;
		s->flags &= ~SF_SKIP;
		return STEP_AGAIN;
	}
	max = s->cfg->max_line_length < IOBUF_SIZE / 2 ?
	    s->cfg->max_line_length : IOBUF_SIZE / 2;
	/* AUTH lines may be longer (checked once the verb is known). */
	st = smtp_line_parse(s->in + s->in_start, avail,
	    smtp_auth_offered(s) && max < AUTH_LINE_MAX ? AUTH_LINE_MAX : max,
	    &line, &linelen, &consumed);
	switch (st) {
	case SMTP_LINE_NEED_MORE:
		return STEP_WAIT;
	case SMTP_LINE_TOO_LONG:
		if (!smtp_local(s))
			return STEP_WAIT;
		s->flags |= SF_SKIP;
		s->auth_step = AUTH_IDLE;	/* an AUTH exchange ends */
		smtp_error(s, RPL_LINE_TOO_LONG, NULL);
		return STEP_AGAIN;
	case SMTP_LINE_BARE:
		if (!smtp_local(s))
			return STEP_WAIT;
		s->in_start += consumed;
		s->auth_step = AUTH_IDLE;
		smtp_error(s, RPL_BARE_EOL, NULL);
		return STEP_AGAIN;
	case SMTP_LINE_OK:
		break;
	}
	if (s->auth_step != AUTH_IDLE) {
		/* A SASL response, not a command; never logged. */
		s->in_start += consumed;
		smtp_auth_response(s, line, linelen);
		return STEP_AGAIN;
	}
	v = smtp_cmd_parse(line, linelen, &arg, &arglen);
	if (linelen + 2 > max && v != SMTP_V_AUTH) {
		if (!smtp_local(s))
			return STEP_WAIT;
		s->in_start += consumed;
		smtp_error(s, RPL_LINE_TOO_LONG, NULL);
		return STEP_AGAIN;
	}
	/* Never a password: AUTH's argument and unknown lines (a client
	 * out of step may send one) are cut short. */
	log_debug("session=%s < %.*s", s->idstr, (int)(v == SMTP_V_AUTH ?
	    (linelen > 10 ? 10 : linelen) : v == SMTP_V_UNKNOWN ?
	    (linelen > 4 ? 4 : linelen) : linelen), line);
	fn = (s->flags & SF_REFUSED) ? smtp_cmd_refused : smtp_commands[v];
	if (fn(s, v, arg, arglen) == CMD_WAIT)
		return STEP_WAIT;
	s->in_start += consumed;
	if (s->flags & SF_TLS_START)
		return smtp_tls_start(s);
	/*
	 * The command has acted on its stage's verdict, if it had one; if it
	 * was answered otherwise while a filter still owed an answer (the
	 * backend refused the MAIL meanwhile, say), that answer is dropped.
	 */
	if (s->flt.state == FLT_RUN_DONE)
		flt_run_reset(&s->flt);
	else if (s->flt.state != FLT_RUN_IDLE)
		flt_run_abandon(&s->flt);
	return STEP_AGAIN;
}

static void smtp_timeout_cb(uv_timer_t *);
static void smtp_alloc_cb(uv_handle_t *, size_t, uv_buf_t *);
static void smtp_read_cb(uv_stream_t *, ssize_t, const uv_buf_t *);
static void smtp_write_cb(uv_write_t *, int);
static int smtp_tls_pull(struct smtp_session *);

/*
 * Nonzero when the session takes more input: not while its replies are
 * unread or the backend is behind, and only into room in its buffer.
 */
static int
smtp_want_input(const struct smtp_session *s)
{
	return !(s->flags & (SF_CLOSE_AFTER | SF_OUT_WRITING | SF_EOF)) &&
	    !(s->be != NULL && be_busy(s->be)) &&
	    (s->in == NULL || s->in_end < s->in_size ||
	    ((s->in_start > 0 || s->in_size < IOBUF_SIZE) &&
	    !(s->flags & SF_PINNED)));
}

/* Gives the input buffer back (to the pool, or to free()). */
static void
smtp_in_release(struct smtp_session *s)
{
	if (s->in_size == IOBUF_SIZE)
		worker_buf_put(s->w, s->in);
	else
		free(s->in);
	s->in = NULL;
	s->in_size = s->in_start = s->in_end = 0;
}

/*
 * Between events, a pooled input buffer holding only the start of a
 * command line (no line end: nothing points into it) is traded for a
 * small one, so that many slow or idle clients do not each hold
 * IOBUF_SIZE bytes.  Not in DATA, where the next read is likely large.
 */
static void
smtp_in_shrink(struct smtp_session *s)
{
	size_t	 n = s->in_end - s->in_start;
	char	*small;

	if (s->in_size != IOBUF_SIZE || s->state == S_DATA ||
	    (s->flags & SF_PINNED) || n > IN_SMALL / 2 ||
	    memchr(s->in + s->in_start, '\n', n) != NULL ||
	    (small = malloc(IN_SMALL)) == NULL)
		return;
	memcpy(small, s->in + s->in_start, n);
	worker_buf_put(s->w, s->in);
	s->in = small;
	s->in_size = IN_SMALL;
	s->in_start = 0;
	s->in_end = n;
}

/*
 * Makes room at the end of the input buffer (taking one from the pool, or
 * moving unconsumed input to the front when the buffer is not pinned).
 * Returns the room there, 0 when there is none or no memory.
 */
static size_t
smtp_in_room(struct smtp_session *s)
{
	char *big;

	if (s->in == NULL) {
		if ((s->in = worker_buf_get(s->w)) == NULL)
			return 0;
		s->in_size = IOBUF_SIZE;
	}
	if (!(s->flags & SF_PINNED)) {
		if (s->in_start == s->in_end) {
			s->in_start = s->in_end = 0;
		} else if (s->in_end == s->in_size && s->in_start > 0) {
			memmove(s->in, s->in + s->in_start,
			    s->in_end - s->in_start);
			s->in_end -= s->in_start;
			s->in_start = 0;
		}
		if (s->in_end == s->in_size && s->in_size < IOBUF_SIZE) {
			/* A small buffer is full: a pooled one takes over. */
			if ((big = worker_buf_get(s->w)) == NULL)
				return 0;
			memcpy(big, s->in, s->in_end);
			free(s->in);
			s->in = big;
			s->in_size = IOBUF_SIZE;
		}
	}
	return s->in_size - s->in_end;
}

/* Starts or stops reading, gives an empty buffer back to the pool. */
static void
smtp_update_io(struct smtp_session *s)
{
	int want;

	if (s->flags & SF_CLOSING)
		return;
	if (s->in != NULL && !(s->flags & SF_PINNED)) {
		if (s->in_start == s->in_end)
			smtp_in_release(s);
		else
			smtp_in_shrink(s);
	}
	want = smtp_want_input(s);
	if (want && !(s->flags & SF_READING)) {
		if (uv_read_start((uv_stream_t *)&s->tcp, smtp_alloc_cb,
		    smtp_read_cb) == 0)
			s->flags |= SF_READING;
	} else if (!want && (s->flags & SF_READING)) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->flags &= ~SF_READING;
	}
}

static void smtp_timer_arm(struct smtp_session *);

/*
 * After the client's half-close: nonzero when no event of the session is
 * due any more (no reply being written, nothing at the backend, no filter,
 * password check or lookup under way), so that what is left of the input
 * can never become a command.
 */
static int
smtp_eof_done(const struct smtp_session *s)
{
	return !(s->flags & (SF_OUT_WRITING | SF_AWAIT | SF_EOM)) &&
	    s->out_len == 0 && s->fly_n == 0 &&
	    (s->be == NULL || (be_ready(s->be) && !be_busy(s->be))) &&
	    s->flt.state != FLT_RUN_PENDING &&
	    s->flt.state != FLT_RUN_RESUME &&
	    s->auth_step != AUTH_CHECKING && s->auth_step != AUTH_DONE &&
	    s->rdns == NULL;
}

/*
 * Runs every command the input holds as far as it can go, then writes what
 * that produced.  Called after every event of the session; the client's
 * timeout counts from the end of the last one.
 */
static void
smtp_process(struct smtp_session *s)
{
	if (s->flags & SF_CLOSING)
		return;
	for (;;) {
		while (smtp_step(s) == STEP_AGAIN)
			;
		/* Under TLS, the plaintext is decrypted as room allows. */
		if (s->tls == NULL || (s->flags & SF_CLOSING) ||
		    smtp_tls_pull(s) <= 0)
			break;
	}
	if (s->be != NULL)
		be_flush(s->be);
	smtp_flush(s);
	if ((s->flags & (SF_EOF | SF_CLOSING)) == SF_EOF && smtp_eof_done(s)) {
		smtp_close(s, "client disconnected");
		return;
	}
	smtp_update_io(s);
	smtp_timer_arm(s);
}

/* ---- TLS ----------------------------------------------------------------- */

/*
 * After STARTTLS's 220: whatever the client sent after the command is
 * dropped unread (CVE-2011-0411), the 220 goes out in plaintext, and what
 * was learnt from the client before is forgotten (RFC 3207 4.2): it must
 * EHLO again.
 */
static enum step
smtp_tls_start(struct smtp_session *s)
{
	s->flags &= ~SF_TLS_START;
	if (s->in_end > s->in_start) {
		log_info("session=%s client=%s discarded %zu bytes sent after "
		    "STARTTLS", s->idstr, s->addr, s->in_end - s->in_start);
		s->in_start = s->in_end;
	}
	smtp_flush(s);
	if (s->flags & SF_CLOSING)
		return STEP_WAIT;
	if ((s->tls = tlsio_new(s->lsn->tls_ctx, true, NULL)) == NULL) {
		smtp_close(s, "out of memory");
		return STEP_WAIT;
	}
	s->flags |= SF_TLS_HS;
	s->flags &= ~SF_BE_FAILED;
	s->deadline = uv_now(&s->w->loop) + s->cfg->to_handshake;
	smtp_be_drop(s, 1);
	s->client.helo[0] = '\0';
	s->client.esmtp = 0;
	smtp_enter_state(s, S_INIT);
	return STEP_WAIT;
}

/* Writes what ciphertext the socket takes now, before a close. */
static void
smtp_tls_send_now(struct smtp_session *s)
{
	uv_buf_t	b;
	size_t		n;

	if (s->flags & SF_OUT_WRITING)
		return;
	while ((n = tlsio_take(s->tls, s->w->tls_buf, TLSBUF_SIZE)) > 0) {
		b = uv_buf_init(s->w->tls_buf, (unsigned)n);
		if (uv_try_write((uv_stream_t *)&s->tcp, &b, 1) != (int)n)
			break;
	}
}

/*
 * Advances the handshake and decrypts what the input buffer has room for.
 * Returns 1 when that gave something to do (input, or the handshake
 * done), 0 when not, -1 when the session was closed.
 */
static int
smtp_tls_pull(struct smtp_session *s)
{
	ssize_t	n;
	size_t	room;
	int	r, got = 0;

	if (s->flags & SF_TLS_HS) {
		if ((r = tlsio_handshake(s->tls)) == 0)
			return 0;
		if (r < 0) {
			log_info("session=%s client=%s TLS handshake failed: "
			    "%s", s->idstr, s->addr, tlsio_error(s->tls));
			smtp_tls_send_now(s);	/* the alert, if any */
			smtp_close(s, "TLS handshake failed");
			return -1;
		}
		s->flags = (s->flags & ~SF_TLS_HS) | SF_TLS;
		log_info("session=%s client=%s TLS established: %s %s",
		    s->idstr, s->addr, tlsio_version(s->tls),
		    tlsio_cipher(s->tls));
		got = 1;
	}
	while (smtp_want_input(s) && (room = smtp_in_room(s)) > 0) {
		n = tlsio_read(s->tls, s->in + s->in_end, room);
		if (n == 0)
			break;
		if (n < 0) {
			smtp_close(s, n == TLSIO_EOF ? "client disconnected" :
			    tlsio_error(s->tls));
			return -1;
		}
		s->in_end += (size_t)n;
		got = 1;
	}
	return got;
}

/*
 * smtp_flush() under TLS: encrypts the queued replies (once the handshake
 * is done), adds close_notify before a close, and writes the ciphertext:
 * what the socket takes at once from the worker's scratch buffer, the rest
 * from a buffer of the session's own until the write completes.
 */
static void
smtp_tls_flush(struct smtp_session *s)
{
	uv_buf_t	b;
	size_t		n, rest;
	int		w;

	if (s->out_len > 0 && (s->flags & SF_TLS)) {
		if (tlsio_write(s->tls, s->out, s->out_len) < 0) {
			smtp_close(s, tlsio_error(s->tls));
			return;
		}
		s->out_len = 0;
	}
	if ((s->flags & (SF_CLOSE_AFTER | SF_TLS | SF_TLS_BYE)) ==
	    (SF_CLOSE_AFTER | SF_TLS)) {
		tlsio_close_notify(s->tls);
		s->flags |= SF_TLS_BYE;
	}
	while ((n = tlsio_take(s->tls, s->w->tls_buf, TLSBUF_SIZE)) > 0) {
		b = uv_buf_init(s->w->tls_buf, (unsigned)n);
		if ((w = uv_try_write((uv_stream_t *)&s->tcp, &b, 1)) < 0)
			w = 0;
		if ((size_t)w == n)
			continue;
		rest = n - (size_t)w + tlsio_pending(s->tls);
		if ((s->tls_wbuf = malloc(rest)) == NULL) {
			smtp_close(s, "out of memory");
			return;
		}
		memcpy(s->tls_wbuf, s->w->tls_buf + w, n - (size_t)w);
		tlsio_take(s->tls, s->tls_wbuf + (n - (size_t)w),
		    rest - (n - (size_t)w));
		b = uv_buf_init(s->tls_wbuf, (unsigned)rest);
		if (uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &b, 1,
		    smtp_write_cb) < 0) {
			smtp_close(s, "write failed");
			return;
		}
		s->flags |= SF_OUT_WRITING;
		return;
	}
	if (s->flags & SF_CLOSE_AFTER)
		smtp_close(s, s->state == S_QUIT ? "quit" : "closed by us");
}

/* ---- Client I/O ---------------------------------------------------------- */

/*
 * Sets the session's timeout (below: what each counts from).  Called
 * after every event, so the timer is not restarted each time: while it
 * runs and is due no later than the new timeout, it is left alone, and
 * smtp_timeout_cb() starts it again for what is left when it fires early.
 */
static void
smtp_timer_arm(struct smtp_session *s)
{
	uint64_t now, ms;

	if (s->flags & SF_CLOSING)
		return;
	now = uv_now(&s->w->loop);
	if (s->flags & (SF_TLS_HS | SF_PROXY)) {
		/* A fixed deadline: a trickle of bytes does not extend it. */
		ms = s->deadline > now ? s->deadline - now : 1;
	} else if (s->state == S_DATA) {
		ms = s->cfg->to_data;
		/* Not reading (the backend is behind): not the client's time. */
		if (!smtp_want_input(s))
			s->data_due = now + ms;
		else if (s->cfg->min_data_rate > 0 && s->data_due < now + ms)
			ms = s->data_due > now ? s->data_due - now : 1;
	} else {
		/*
		 * A command line must be complete within timeouts.command of
		 * the time the input last held no part of one: a trickle of
		 * bytes that never ends the line does not extend it.  Whole
		 * lines waiting (for the client to read its replies, say)
		 * keep the usual timeout.
		 */
		if (s->in == NULL || s->in_start == s->in_end ||
		    memchr(s->in + s->in_start, '\n',
		    s->in_end - s->in_start) != NULL)
			s->line_since = now;
		ms = s->line_since + s->cfg->to_command > now ?
		    s->line_since + s->cfg->to_command - now : 1;
	}
	s->timer_due = now + ms;
	if (uv_is_active((uv_handle_t *)&s->timer) &&
	    s->timer_fire <= s->timer_due)
		return;
	s->timer_fire = s->timer_due;
	uv_timer_start(&s->timer, smtp_timeout_cb, ms, 0);
}

static void
smtp_write_cb(uv_write_t *req, int status)
{
	struct smtp_session *s = req->data;

	s->flags &= ~SF_OUT_WRITING;
	s->out_len = 0;
	free(s->tls_wbuf);
	s->tls_wbuf = NULL;
	if (s->flags & SF_CLOSING)
		return;
	if (status < 0) {
		smtp_close(s, uv_strerror(status));
		return;
	}
	if (s->flags & SF_CLOSE_AFTER) {
		smtp_close(s, s->state == S_QUIT ? "quit" : "closed by us");
		return;
	}
	if (s->be != NULL)
		be_resume(s->be);
	smtp_process(s);
}

/* Writes the queued replies: one try_write, then one uv_write if needed. */
static void
smtp_flush(struct smtp_session *s)
{
	uv_buf_t	b;
	int		n;

	if (s->flags & (SF_OUT_WRITING | SF_CLOSING))
		return;
	if (s->tls != NULL) {
		smtp_tls_flush(s);
		return;
	}
	if (s->out_len > 0) {
		b = uv_buf_init(s->out, (unsigned)s->out_len);
		n = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
		if (n < 0)
			n = 0;
		if ((size_t)n < s->out_len) {
			b = uv_buf_init(s->out + n, (unsigned)(s->out_len - n));
			if (uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &b, 1,
			    smtp_write_cb) < 0) {
				smtp_close(s, "write failed");
				return;
			}
			s->flags |= SF_OUT_WRITING;
			return;
		}
		s->out_len = 0;
	}
	if (s->flags & SF_CLOSE_AFTER)
		smtp_close(s, s->state == S_QUIT ? "quit" : "closed by us");
}

static void
smtp_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct smtp_session *s = h->data;

	(void)hint;
	buf->base = NULL;
	buf->len = 0;
	if (s->tls != NULL) {
		/* Ciphertext: fed to OpenSSL at once, in smtp_read_cb(). */
		buf->base = s->w->tls_buf;
		buf->len = TLSBUF_SIZE;
		return;
	}
	if (smtp_in_room(s) == 0)
		return;
	buf->base = s->in + s->in_end;
	buf->len = s->in_size - s->in_end;
}

/*
 * Message data came: each byte moves the DATA deadline on by 1 /
 * limits.min_data_rate seconds, never past timeouts.data from now.  A
 * client trickling data slower than that is cut within about
 * timeouts.data, whatever it sent before.
 */
static void
smtp_data_credit(struct smtp_session *s, size_t n)
{
	uint64_t now = uv_now(&s->w->loop), cap = now + s->cfg->to_data;

	if (s->cfg->min_data_rate == 0)
		return;
	s->data_due += (uint64_t)n * 1000 / s->cfg->min_data_rate;
	if (s->data_due > cap)
		s->data_due = cap;
}

static void
smtp_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct smtp_session *s = st->data;

	(void)buf;
	/*
	 * Nothing read (an error, EAGAIN): a buffer taken for it goes back at
	 * once, not when the session next moves or ends.
	 */
	if (nread <= 0 && s->in != NULL && s->in_start == s->in_end &&
	    !(s->flags & SF_PINNED))
		smtp_in_release(s);
	if (s->flags & SF_CLOSING)
		return;
	if (nread < 0) {
		if (nread == UV_ENOBUFS) {
			/* Out of memory for a buffer: stop until output moves. */
			uv_read_stop(st);
			s->flags &= ~SF_READING;
			return;
		}
		if (nread == UV_EOF && s->tls == NULL) {
			/*
			 * A half-close, maybe (shutdown after QUIT, say): the
			 * commands already read are answered first.
			 */
			s->flags |= SF_EOF;
			uv_read_stop(st);
			s->flags &= ~SF_READING;
			smtp_process(s);
			return;
		}
		smtp_close(s, nread == UV_EOF ? "client disconnected" :
		    uv_strerror((int)nread));
		return;
	}
	if (nread == 0)
		return;
	if (s->state == S_DATA)
		smtp_data_credit(s, (size_t)nread);
	if (s->tls != NULL) {
		if (tlsio_feed(s->tls, buf->base, (size_t)nread) < 0) {
			smtp_close(s, tlsio_error(s->tls));
			return;
		}
	} else
		s->in_end += (size_t)nread;
	smtp_process(s);
}

static void
smtp_timeout_cb(uv_timer_t *t)
{
	struct smtp_session *s = t->data;
	uint64_t now = uv_now(&s->w->loop);

	/* Due early: the timeout moved on since the timer was started. */
	if (now < s->timer_due) {
		s->timer_fire = s->timer_due;
		uv_timer_start(&s->timer, smtp_timeout_cb, s->timer_due - now,
		    0);
		return;
	}
	/*
	 * Waiting for the backend is timed by the backend's own timer; but a
	 * client that has not read its replies for this long is not waited
	 * for, whatever is in flight.
	 */
	if (!(s->flags & SF_OUT_WRITING) && (s->fly_n > 0 ||
	    (s->flags & SF_AWAIT) || (s->be != NULL && !be_ready(s->be)))) {
		/* Time spent waiting for the backend is not the client's. */
		s->line_since = now;
		s->data_due = now + s->cfg->to_data;
		smtp_timer_arm(s);
		return;
	}
	log_info("session=%s client=%s timeout in state %s", s->idstr,
	    s->addr, smtp_strstate[s->state]);
	if (s->flags & (SF_PROXY | SF_TLS_HS)) {
		/* Nothing is said before the PROXY header or the handshake. */
		smtp_close(s, "timeout");
		return;
	}
	if (smtp_out_room(s, REPLY_RESERVE))
		smtp_reply(s, RPL_TIMEOUT, NULL);
	s->flags |= SF_CLOSE_AFTER;
	smtp_flush(s);
	if (!(s->flags & SF_CLOSING) && (s->flags & SF_OUT_WRITING))
		smtp_close(s, "timeout");
}

/* ---- Backend callbacks --------------------------------------------------- */

static void
smtp_be_ready_cb(void *arg)
{
	struct smtp_session *s = arg;

	s->flags |= SF_BE_READY;
	log_debug("session=%s backend %s ready", s->idstr,
	    be_server_name(s->be));
	smtp_process(s);
}

/*
 * The backend connection is gone (s->be already NULL): the commands in
 * flight get reply id, and the transaction in progress answers its later
 * commands (or its final dot) with it too.
 */
static void
smtp_be_lost(struct smtp_session *s, enum smtp_reply_id id)
{
	if (s->fly_n > 0)
		s->fly_fail = (int)id;
	if ((s->state == S_DATA || s->state == S_MAIL) &&
	    s->tx.abort == TX_OK) {
		s->tx.abort = TX_BACKEND;
		s->tx.abort_reply = id;
	}
}

/*
 * Nonzero when code cannot answer a command of kind k: a 3xx to anything
 * but DATA, anything but 354 or a 4xx or 5xx to DATA (RFC 5321 4.3.2), or
 * a 421, after which the backend closes (3.8).
 */
static int
smtp_be_reply_bad(enum fly_kind k, int code)
{
	if (code == 421)
		return 1;
	if (k == F_DATA)
		return code != 354 && code / 100 != 4 && code / 100 != 5;
	return code / 100 == 3;
}

static int
smtp_be_reply_cb(void *arg, int code, const char *reply, size_t len)
{
	struct smtp_session	*s = arg;
	enum fly_kind		 k;
	uint32_t		 gen;

	if (s->flags & SF_CLOSING)
		return 0;
	if (s->fly_n == 0 || smtp_be_reply_bad(s->fly[s->fly_head], code)) {
		/*
		 * Postfix's "421 ... timeout" before it closes, say, or a
		 * reply that does not fit its command: the backend is lost,
		 * and every command in flight is answered 451 4.4.2.
		 */
		log_warn("session=%s backend %s %s reply: %.*s",
		    s->idstr, be_server_name(s->be),
		    s->fly_n == 0 ? "unsolicited" : "unexpected",
		    (int)(len > 2 ? len - 2 : len), reply);
		smtp_be_drop(s, 0);
		smtp_be_lost(s, RPL_BE_LOST);
		/*
		 * No on_batch follows a closed backend: write what earlier
		 * replies of this read queued (MAIL's 250, say) now.
		 */
		smtp_process(s);
		return 0;
	}
	k = s->fly[s->fly_head];
	if (k != F_RSET_QUIET && !smtp_out_room(s, len)) {
		smtp_flush(s);
		if (!smtp_out_room(s, len))
			return -1;
	}
	metrics_be_reply(smtp_fly_cmd[k], s->fly_t[s->fly_head]);
	smtp_fly_pop(s, &gen);
	switch (k) {
	case F_MAIL:
		if (code / 100 != 2 && s->state == S_MAIL && gen == s->tx_gen) {
			s->tx.status = code;	/* refused: it ends here */
			smtp_tx_clear(s);
		}
		break;
	case F_RCPT:
		if (gen != s->tx_gen)
			;	/* an abandoned transaction's */
		else if (code / 100 == 2)
			s->tx.nrcpt_ok++;
		else
			s->tx.nrcpt_rej++;
		/* Unknown users: what a dictionary attack probes for. */
		if (code / 100 == 5)
			smtp_fail(s);
		break;
	case F_DATA:
		s->flags &= ~SF_AWAIT;
		if (code == 354 && s->state == S_MAIL) {
			memset(&s->tx.scan, 0, sizeof(s->tx.scan));
			s->tx.bol = 1;
			smtp_enter_state(s, S_DATA);
			s->data_due = uv_now(&s->w->loop) + s->cfg->to_data;
		}
		break;
	case F_DOT:
		s->flags &= ~SF_AWAIT;
		smtp_tx_log(s, code, reply + 4, len > 4 ? len - 4 : 0);
		smtp_tx_clear(s);
		break;
	case F_RSET_QUIET:
		return 0;
	case F_RSET:
	case F_EXPN:
		break;
	}
	smtp_out(s, reply, len);
	return 0;
}

static void
smtp_be_batch_cb(void *arg)
{
	smtp_process(arg);
}

static void
smtp_be_write_done_cb(void *arg)
{
	struct smtp_session *s = arg;

	s->flags &= ~SF_PINNED;
	if (s->be != NULL && s->fly_n == 0)
		be_expect_reply(s->be, 0);
	smtp_process(s);
}

static void
smtp_be_fail_cb(void *arg, enum be_fail why)
{
	struct smtp_session *s = arg;
	enum smtp_reply_id id = why == BE_FAIL_TIMEOUT ? RPL_BE_TIMEOUT :
	    RPL_BE_LOST;

	s->be = NULL;
	s->flags &= ~SF_PINNED;
	if (!(s->flags & SF_BE_READY)) {
		/* Set-up failed: the waiting MAIL gets 451 4.4.1. */
		s->flags |= SF_BE_FAILED;
	} else {
		s->flags &= ~SF_BE_READY;
		smtp_be_lost(s, id);
	}
	smtp_process(s);
}

static const struct be_callbacks smtp_be_callbacks = {
	.on_ready = smtp_be_ready_cb,
	.on_reply = smtp_be_reply_cb,
	.on_batch = smtp_be_batch_cb,
	.on_write_done = smtp_be_write_done_cb,
	.on_fail = smtp_be_fail_cb,
};

/* ---- Reverse DNS ------------------------------------------------------- */

/*
 * ss's slot in w's cache (made on first use), or NULL for an address of
 * another family or when out of memory; key and *keylen: the address
 * bytes, as a slot holds them.
 */
static struct rdns_entry *
smtp_rdns_slot(struct worker *w, const struct sockaddr_storage *ss,
    unsigned char key[16], size_t *keylen)
{
	if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6)
		return NULL;
	if (w->rdns_cache == NULL &&
	    (w->rdns_cache = calloc(RDNS_SLOTS, sizeof(*w->rdns_cache))) ==
	    NULL)
		return NULL;
	*keylen = client_addr_bytes((const struct sockaddr *)ss, key);
	return &w->rdns_cache[client_addr_hash(key, *keylen) % RDNS_SLOTS];
}

/* Thread pool: PTR lookup, confirmed by a forward lookup. */
static void
smtp_rdns_work(uv_work_t *req)
{
	struct rdns_req	*r = req->data;
	struct addrinfo	 hints, *res, *ai;
	char		 a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	socklen_t	 len = r->ss.ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	int		 ok = 0, e;

	if ((e = getnameinfo((struct sockaddr *)&r->ss, len, r->name,
	    sizeof(r->name), NULL, 0, NI_NAMEREQD)) == 0) {
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = r->ss.ss_family;
		hints.ai_socktype = SOCK_STREAM;
		if ((e = getaddrinfo(r->name, NULL, &hints, &res)) == 0) {
			getnameinfo((struct sockaddr *)&r->ss, len, a,
			    sizeof(a), NULL, 0, NI_NUMERICHOST);
			for (ai = res; ai != NULL && !ok; ai = ai->ai_next)
				ok = getnameinfo(ai->ai_addr, ai->ai_addrlen,
				    b, sizeof(b), NULL, 0,
				    NI_NUMERICHOST) == 0 && strcmp(a, b) == 0;
			freeaddrinfo(res);
		}
	}
	r->temp = e == EAI_AGAIN || e == EAI_SYSTEM || e == EAI_MEMORY;
	if (!ok)
		strcpy(r->name, "[UNAVAILABLE]");
}

static void
smtp_rdns_done(uv_work_t *req, int status)
{
	struct rdns_req		*r = req->data;
	struct smtp_session	*s = r->s;
	struct rdns_entry	*e;
	unsigned char		 key[16];
	size_t			 keylen;

	if (status == 0 && r->ttl > 0 && !r->temp &&
	    (e = smtp_rdns_slot(r->w, &r->ss, key, &keylen)) != NULL) {
		e->family = (uint8_t)r->ss.ss_family;
		memcpy(e->addr, key, keylen);
		memcpy(e->name, r->name, sizeof(e->name));
		e->expires = uv_now(&r->w->loop) + r->ttl;
	}
	if (s != NULL) {
		s->rdns = NULL;
		memcpy(s->client.name, r->name, sizeof(s->client.name));
		log_debug("session=%s client=%s name=%s", s->idstr, s->addr,
		    s->client.name);
		smtp_process(s);
	}
	free(r);
}

static void
smtp_rdns_start(struct smtp_session *s, const struct sockaddr_storage *ss)
{
	struct rdns_req		*r;
	struct rdns_entry	*e;
	unsigned char		 key[16];
	size_t			 keylen;

	if (!s->cfg->smtp_reverse_dns)
		return;
	if (s->cfg->smtp_rdns_cache > 0 &&
	    (e = smtp_rdns_slot(s->w, ss, key, &keylen)) != NULL &&
	    e->expires > uv_now(&s->w->loop) && e->family == ss->ss_family &&
	    memcmp(e->addr, key, keylen) == 0) {
		memcpy(s->client.name, e->name, sizeof(s->client.name));
		log_debug("session=%s client=%s name=%s (cached)", s->idstr,
		    s->addr, s->client.name);
		return;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return;
	r->s = s;
	r->w = s->w;
	r->ss = *ss;
	r->ttl = s->cfg->smtp_rdns_cache;
	r->work.data = r;
	if (uv_queue_work(&s->w->loop, &r->work, smtp_rdns_work,
	    smtp_rdns_done) < 0) {
		free(r);
		return;
	}
	s->rdns = r;
}

/* ---- Life cycle ---------------------------------------------------------- */

static void
smtp_free(struct smtp_session *s)
{
	struct worker *w = s->w;

	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	if (s->in != NULL)
		smtp_in_release(s);
	if (s->tx.started != 0)		/* the client left mid-transaction */
		metrics_tx_end(s->tx.status);
	free(s->tx.hdr.buf);
	free(s->envc);
	free(s->tls_wbuf);
	tlsio_free(s->tls);
	if (s->flags & SF_COUNTED)
		client_table_del(w->ctx->clients,
		    (const struct sockaddr *)&s->ss);
	config_unref(s->cfg);
	atomic_fetch_sub(&w->ctx->nconns, 1);
	metrics_conn_close(s->lsn_idx);
	free(s);
	worker_session_gone(w);
}

static void
smtp_closed_cb(uv_handle_t *h)
{
	struct smtp_session *s = h->data;

	if (--s->nopen == 0)
		smtp_free(s);
}

static void
smtp_close(struct smtp_session *s, const char *why)
{
	if (s->flags & SF_CLOSING)
		return;
	s->flags |= SF_CLOSING;
	/*
	 * QUIT, unless message data is in flight: then a bare close aborts
	 * the transaction (the backend never sees its final dot).
	 */
	smtp_be_drop(s, s->state != S_DATA && s->state != S_DOT);
	if (s->rdns != NULL)
		s->rdns->s = NULL;
	if (s->auth_req != NULL)
		s->auth_req->s = NULL;
	flt_run_abandon(&s->flt);
	log_msg(s->lsn->quiet && s->ntx == 0 && s->errors == 0 ?
	    LOG_LVL_DEBUG : LOG_LVL_INFO,
	    "session end session=%s client=%s helo=%s transactions=%u "
	    "errors=%u state=%s tls=%s user=%s reason=\"%s\" duration=%.3f",
	    s->idstr, s->addr, s->client.helo[0] ? s->client.helo : "-",
	    s->ntx, s->errors, smtp_strstate[s->state],
	    (s->flags & SF_TLS) ? tlsio_version(s->tls) : "no",
	    s->client.login[0] ? s->client.login : "-", why,
	    (double)(uv_now(&s->w->loop) - s->started) / 1000.0);
	uv_close((uv_handle_t *)&s->tcp, smtp_closed_cb);
	uv_close((uv_handle_t *)&s->timer, smtp_closed_cb);
}

void
smtp_session_shutdown(struct smtp_session *s, int force)
{
	if (s->flags & SF_CLOSING)
		return;
	s->flags |= SF_DRAIN;
	if (!force) {
		smtp_process(s);
		return;
	}
	if (!(s->flags & SF_CLOSE_AFTER) && smtp_out_room(s, REPLY_RESERVE))
		smtp_reply(s, RPL_SHUTDOWN, NULL);
	s->flags |= SF_CLOSE_AFTER;
	smtp_flush(s);
	smtp_close(s, "shutdown");
}

struct smtp_session *
smtp_session_next(struct smtp_session *s)
{
	return s->next;
}

/* Sets s->ss, s->addr and the XCLIENT address and port to sa's. */
static void
smtp_set_client(struct smtp_session *s, const struct sockaddr_storage *sa)
{
	s->ss = *sa;
	if (sa->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;

		uv_ip6_name(a6, s->addr, sizeof(s->addr));
		s->client.port = ntohs(a6->sin6_port);
		snprintf(s->client.addr, sizeof(s->client.addr), "IPV6:%s",
		    s->addr);
	} else {
		const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;

		uv_ip4_name(a4, s->addr, sizeof(s->addr));
		s->client.port = ntohs(a4->sin_port);
		snprintf(s->client.addr, sizeof(s->client.addr), "%s", s->addr);
	}
}

/*
 * The session proper begins, with the client's address known (the peer's,
 * or the one a PROXY header gave): the per-client connection limit, the
 * reverse lookup, implicit TLS.  Returns 0, or -1 when the session was
 * refused or closed.
 */
static int
smtp_begin(struct smtp_session *s)
{
	char text[400];

	if (s->cfg->max_conn_per_client != 0) {
		if (client_table_add(s->w->ctx->clients,
		    (const struct sockaddr *)&s->ss,
		    s->cfg->max_conn_per_client) < 0) {
			log_info("session=%s client=%s refused: %u connections "
			    "from it", s->idstr, s->addr,
			    s->cfg->max_conn_per_client);
			if (s->lsn->tls == CFG_TLS_IMPLICIT) {
				/* No plaintext where TLS is expected. */
				smtp_close(s, "too many connections from client");
				return -1;
			}
			snprintf(text, sizeof(text), "%s Error: too many "
			    "connections from %s", s->cfg->hostname, s->addr);
			smtp_reply(s, RPL_TOO_MANY_CONN_CLIENT, text);
			s->flags |= SF_CLOSE_AFTER;
			smtp_flush(s);
			return -1;
		}
		s->flags |= SF_COUNTED;
	}
	if (s->lsn->tls == CFG_TLS_IMPLICIT) {
		/* The greeting waits for the handshake. */
		if ((s->tls = tlsio_new(s->lsn->tls_ctx, true, NULL)) == NULL) {
			smtp_close(s, "out of memory");
			return -1;
		}
		s->flags |= SF_TLS_HS;
		s->deadline = uv_now(&s->w->loop) + s->cfg->to_handshake;
		/* What came after a PROXY header is the ClientHello. */
		if (s->in != NULL && s->in_end > s->in_start) {
			if (tlsio_feed(s->tls, s->in + s->in_start,
			    s->in_end - s->in_start) < 0) {
				smtp_close(s, "out of memory");
				return -1;
			}
			s->in_start = s->in_end;
		}
	}
	smtp_rdns_start(s, &s->ss);
	return 0;
}

/*
 * A PROXY listener: the header comes first, from a trusted proxy, and
 * tells who the client is (HAProxy's PROXY protocol, versions 1 and 2).
 * Anything else closes the connection.
 */
static enum step
smtp_proxy_header(struct smtp_session *s)
{
	struct pp_result	r;
	enum pp_status		st;
	size_t			avail;
	char			proxy[INET6_ADDRSTRLEN];

	avail = s->in != NULL ? s->in_end - s->in_start : 0;
	if (avail == 0)
		return STEP_WAIT;
	st = pp_parse(s->in + s->in_start, avail, &r);
	if (st == PP_NEED_MORE && avail < PP_MAX_HEADER)
		return STEP_WAIT;
	if (st != PP_OK) {
		log_warn("session=%s proxy=%s malformed PROXY header, closing",
		    s->idstr, s->addr);
		smtp_close(s, "malformed PROXY header");
		return STEP_WAIT;
	}
	s->in_start += r.len;
	s->flags &= ~SF_PROXY;
	if (!r.local && (r.src.ss_family == AF_INET ||
	    r.src.ss_family == AF_INET6)) {
		snprintf(proxy, sizeof(proxy), "%s", s->addr);
		smtp_set_client(s, &r.src);
		log_info("session=%s client=%s port=%u via proxy %s (PROXY v%d)",
		    s->idstr, s->addr, s->client.port, proxy, r.version);
	} else
		log_info("session=%s client=%s PROXY v%d without an address: "
		    "the proxy's own connection", s->idstr, s->addr,
		    r.version);
	if (smtp_begin(s) < 0)
		return STEP_WAIT;
	return STEP_AGAIN;
}

/*
 * The settings of listener idx of w in cfg, or NULL when cfg does not
 * describe that socket (a reload never installs such a config; the
 * connection is closed rather than served with settings not its own).
 */
static const struct cfg_listen *
smtp_listener(const struct worker *w, const struct config *cfg, size_t idx)
{
	const struct cfg_addr *a = &w->bound[idx];

	if (idx >= cfg->nlisten || !config_same_addr(&cfg->listen[idx].addr, a))
		return NULL;
	return &cfg->listen[idx];
}

void
smtp_session_accept(struct worker *w, uv_os_sock_t fd,
    const struct sockaddr_storage *peer, unsigned listener)
{
	struct smtp_session	*s;
	unsigned		 n;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		log_error("accept: out of memory");
		close(fd);
		return;
	}
	uv_tcp_init(&w->loop, &s->tcp);
	uv_timer_init(&w->loop, &s->timer);
	s->tcp.data = s->timer.data = s->wreq.data = s;
	s->nopen = 2;
	s->w = w;
	s->cfg = config_ref(w->cfg);
	s->lsn_idx = listener;
	s->lsn = smtp_listener(w, s->cfg, s->lsn_idx);
	s->fly_fail = -1;
	s->flt.owner = s;
	s->flt.resumed = smtp_flt_resumed_cb;
	s->id = (w->next_id++ << 6) | w->idx;
	snprintf(s->idstr, sizeof(s->idstr), "%06llx", (unsigned long long)s->id);
	s->started = uv_now(&w->loop);
	strcpy(s->addr, "unknown");
	strcpy(s->client.name, "[UNAVAILABLE]");
	s->next = w->sessions;
	if (s->next != NULL)
		s->next->prev = s;
	w->sessions = s;
	w->nsessions++;
	n = atomic_fetch_add(&w->ctx->nconns, 1) + 1;
	metrics_conn_open(s->lsn_idx);
	if (uv_tcp_open(&s->tcp, fd) < 0) {
		close(fd);
		smtp_close(s, "accept failed");
		return;
	}
	smtp_set_client(s, peer);
	if (s->lsn == NULL) {
		smtp_close(s, "listener not in the configuration");
		return;
	}
	uv_tcp_nodelay(&s->tcp, 1);
	if (n > s->cfg->max_connections) {
		log_warn("session=%s client=%s refused: %u connections",
		    s->idstr, s->addr, n - 1);
		if (s->lsn->tls == CFG_TLS_IMPLICIT || s->lsn->proxy_protocol) {
			/* No plaintext where TLS or a PROXY header is due. */
			smtp_close(s, "too many connections");
			return;
		}
		smtp_reply(s, RPL_TOO_MANY_CONN, NULL);
		s->flags |= SF_CLOSE_AFTER;
		smtp_flush(s);
		return;
	}
	log_debug("session=%s connect from %s port %u", s->idstr, s->addr,
	    s->client.port);
	if (w->draining)
		s->flags |= SF_DRAIN;
	if (s->lsn->proxy_protocol) {
		if (!cidr_set_match(s->lsn->proxy_from,
		    (const struct sockaddr *)&s->ss)) {
			log_warn("session=%s PROXY header from %s refused: not "
			    "in proxy_from", s->idstr, s->addr);
			smtp_close(s, "untrusted proxy");
			return;
		}
		s->flags |= SF_PROXY;	/* smtp_begin() once it is read */
		s->deadline = uv_now(&w->loop) + s->cfg->to_handshake;
	} else if (smtp_begin(s) < 0)
		return;
	smtp_process(s);
}
