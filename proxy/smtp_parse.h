/*
 * smtp_parse.h: pure SMTP parsers.
 *
 * Every function here works on a caller's buffer: (buf, len) in, a result
 * out.  Outputs point into the caller's buffer; nothing is allocated and
 * nothing is written outside the output structs.  A parser never reads
 * past buf[len - 1].
 */
#ifndef SMTPGATE_SMTP_PARSE_H
#define SMTPGATE_SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* ---- Command lines ---------------------------------------------------- */

enum smtp_line_status {
	SMTP_LINE_OK = 0,	/* a complete line ending in CRLF */
	SMTP_LINE_NEED_MORE,	/* no LF yet and fewer than max bytes: read more */
	SMTP_LINE_TOO_LONG,	/* no LF within max bytes (max counts the CRLF) */
	SMTP_LINE_BARE		/* a line ending in a bare LF, or holding a CR
				 * that is not followed by LF */
};

/*
 * Finds the first command line in buf[0..len).  max is the longest line
 * allowed, CRLF included (512 for RFC 5321 command lines).
 *
 * SMTP_LINE_OK: *line, *linelen is the line without its CRLF and *consumed
 * the length with it.  SMTP_LINE_BARE: *consumed covers the line up to and
 * including its LF, so the caller can skip it.  SMTP_LINE_TOO_LONG:
 * *consumed is 0; the caller discards input up to the next LF.
 * SMTP_LINE_NEED_MORE: *consumed is 0.
 */
enum smtp_line_status smtp_line_parse(const char *buf, size_t len, size_t max,
    const char **line, size_t *linelen, size_t *consumed);

/* ---- Commands ---------------------------------------------------------- */

enum smtp_verb {
	SMTP_V_UNKNOWN = 0,
	SMTP_V_HELO, SMTP_V_EHLO, SMTP_V_MAIL, SMTP_V_RCPT, SMTP_V_DATA,
	SMTP_V_RSET, SMTP_V_NOOP, SMTP_V_QUIT, SMTP_V_VRFY, SMTP_V_EXPN,
	SMTP_V_HELP, SMTP_V_STARTTLS, SMTP_V_AUTH, SMTP_V_BDAT,
	SMTP_V_XCLIENT, SMTP_V_XFORWARD,
	SMTP_V__COUNT
};

/* Name of a verb in upper case ("MAIL"); "UNKNOWN" for SMTP_V_UNKNOWN. */
const char *smtp_verb_name(enum smtp_verb v);

/*
 * Splits a command line (without CRLF) into verb and argument.  The verb is
 * matched case-insensitively and must be followed by SP or the end of the
 * line ("MAILX" is unknown).  *arg points after the single SP that follows
 * the verb (leading spaces of the argument are kept), *arglen may be 0.
 * Returns the verb; SMTP_V_UNKNOWN for anything else (also an empty line).
 */
enum smtp_verb smtp_cmd_parse(const char *line, size_t len, const char **arg,
    size_t *arglen);

/* ---- Paths and ESMTP parameters (RFC 5321 4.1.2, RFC 6531) -------------- */

#define SMTP_PATH_NULL		0x01	/* "<>" */
#define SMTP_PATH_ROUTE		0x02	/* has an A-d-l source route */
#define SMTP_PATH_QUOTED	0x04	/* local part is a Quoted-string */
#define SMTP_PATH_LITERAL	0x08	/* domain is an address literal */
#define SMTP_PATH_UTF8		0x10	/* holds octets >= 0x80 (RFC 6531) */
#define SMTP_PATH_POSTMASTER	0x20	/* "<Postmaster>" without a domain,
					 * case-insensitive (RCPT only) */

struct smtp_path {
	const char	*raw;		/* "<...>" as received, brackets included */
	size_t		 rawlen;
	const char	*route;		/* "@a.example,@b.example" (no ':'), or NULL */
	size_t		 routelen;
	const char	*mailbox;	/* "local@domain" (after the route), or NULL
					 * for the null path; "Postmaster" for
					 * SMTP_PATH_POSTMASTER */
	size_t		 mailboxlen;
	const char	*local;		/* local part as written (quotes kept) */
	size_t		 locallen;
	const char	*domain;	/* domain or "[literal]", or NULL */
	size_t		 domainlen;
	unsigned	 flags;		/* SMTP_PATH_* */
};

struct smtp_param {
	const char	*key;		/* esmtp-keyword */
	size_t		 keylen;
	const char	*val;		/* esmtp-value, or NULL when there is none */
	size_t		 vallen;
};

#define SMTP_PARAMS_MAX 16

struct smtp_mailrcpt {
	struct smtp_path  path;
	struct smtp_param params[SMTP_PARAMS_MAX];
	int		  nparams;
};

/* Why an argument was refused; the session maps each to a reply. */
enum smtp_arg_err {
	SMTP_ARG_OK = 0,
	SMTP_ARG_SYNTAX,	/* not "FROM:" / "TO:" followed by a path */
	SMTP_ARG_PATH,		/* path grammar violated */
	SMTP_ARG_PARAM_SYNTAX,	/* malformed esmtp-param list */
	SMTP_ARG_TOO_MANY,	/* more than SMTP_PARAMS_MAX parameters */
	SMTP_ARG_PARAM_UNKNOWN,	/* keyword we do not support (555 5.5.4) */
	SMTP_ARG_PARAM_VALUE,	/* bad value for a known keyword (501 5.5.4) */
	SMTP_ARG_PARAM_DUP,	/* keyword given twice (501 5.5.4) */
	SMTP_ARG_UTF8		/* 8-bit octets without SMTPUTF8 (553 5.6.7) */
};

/*
 * Parses the argument of MAIL (is_rcpt == 0: "FROM:" path params) or RCPT
 * (is_rcpt == 1: "TO:" path params).  "FROM:" / "TO:" are matched
 * case-insensitively; spaces between the colon and '<' are tolerated (as
 * Postfix does), the path itself must be in angle brackets.  RCPT accepts
 * "<Postmaster>" without domain; MAIL accepts "<>"; RCPT refuses "<>".
 * Parameters are split on single or multiple SP; trailing SP is tolerated.
 * This checks syntax only; smtp_params_check() checks meanings.
 */
enum smtp_arg_err smtp_mailrcpt_parse(const char *arg, size_t len, int is_rcpt,
    struct smtp_mailrcpt *out);

struct smtp_mail_opts {
	uint64_t	size;		/* SIZE=, 0 when absent */
	unsigned	body;		/* 0 absent, 7 = 7BIT, 8 = 8BITMIME */
	unsigned	smtputf8:1;	/* SMTPUTF8 given */
	unsigned	ret:2;		/* 0 absent, 1 FULL, 2 HDRS */
	unsigned	envid:1;	/* ENVID= given */
	unsigned	notify:1;	/* NOTIFY= given (RCPT) */
	unsigned	orcpt:1;	/* ORCPT= given (RCPT) */
};

/*
 * Checks the parameters of a parsed MAIL (is_rcpt == 0) or RCPT command:
 * MAIL knows SIZE (1-20 digits; a value past UINT64_MAX saturates), BODY
 * (7BIT | 8BITMIME), SMTPUTF8 (no value), RET (FULL | HDRS), ENVID (xtext,
 * at most 100 octets) and AUTH (xtext, at most 500 octets); RCPT knows
 * NOTIFY (NEVER alone, or a comma list of SUCCESS, FAILURE, DELAY) and
 * ORCPT (addr-type ";" xtext, at most 500 octets).  Keywords and the words
 * above match case-insensitively.  A UTF-8 path without SMTPUTF8 (MAIL)
 * gives SMTP_ARG_UTF8; for RCPT pass the transaction's SMTPUTF8 flag in
 * smtputf8.  Fills *opts.
 */
enum smtp_arg_err smtp_params_check(const struct smtp_mailrcpt *m, int is_rcpt,
    int smtputf8, struct smtp_mail_opts *opts);

/* ---- DATA scanner -------------------------------------------------------- */

/*
 * Scans the DATA stream for the end-of-data sequence <CRLF>.<CRLF> and for
 * bare CR or bare LF anywhere in it (SMTP smuggling, CVE-2023-51764 and
 * kin).  The stream begins at the start of a line (right after DATA's 354).
 * Nothing is rewritten: the caller forwards the bytes it is told to, as
 * they are, the terminating ".\r\n" included.
 */
struct smtp_dscan {
	uint8_t		state;		/* internal; zero-filled = start of data */
	uint8_t		bad;		/* 0, or SMTP_DSCAN_BARE_CR / _BARE_LF for
					 * the first offence seen */
	uint64_t	bytes;		/* bytes consumed so far, terminator
					 * included */
};

#define SMTP_DSCAN_BARE_CR 1
#define SMTP_DSCAN_BARE_LF 2

/*
 * Scans buf[0..len).  Returns how many bytes were consumed; never consumes
 * a final CR whose successor it has not seen (the caller keeps it and
 * passes it again with more input), so at most one byte is held back.
 * *fwd is set to the length of the consumed prefix that is clean and may
 * be forwarded: all of it until the first bare CR/LF, which and everything
 * after it in the whole message is never forwardable.  *done is set to 1
 * when the consumed bytes end with the terminator.  After done, the caller
 * resets the struct (memset 0) before the next message.
 */
size_t smtp_dscan(struct smtp_dscan *s, const char *buf, size_t len,
    size_t *fwd, int *done);

/* ---- Replies from the backend ------------------------------------------- */

/*
 * Parses one complete reply, single or multi-line, at the start of buf.
 * Lines are "ddd-text" continuations and a final "ddd text" or "ddd";
 * every line must carry the same code and end in LF (CR before it is
 * optional), and none may be longer than SMTP_REPLY_LINE_MAX octets, its
 * line end included.  Returns the reply's length in bytes (> 0) and sets
 * *code; 0 when it is incomplete (and shorter than max); -1 when
 * malformed, when a line is too long, or when longer than max bytes.
 */
#define SMTP_REPLY_LINE_MAX 512	/* a reply line (RFC 5321 4.5.3.1.5) */
long smtp_reply_parse(const char *buf, size_t len, size_t max, int *code);

/* EHLO keywords the backend may advertise. */
#define SMTP_EXT_PIPELINING	0x0001
#define SMTP_EXT_SIZE		0x0002
#define SMTP_EXT_8BITMIME	0x0004
#define SMTP_EXT_SMTPUTF8	0x0008
#define SMTP_EXT_DSN		0x0010
#define SMTP_EXT_ENHANCED	0x0020	/* ENHANCEDSTATUSCODES */
#define SMTP_EXT_STARTTLS	0x0040
#define SMTP_EXT_XCLIENT	0x0080
#define SMTP_EXT_XFORWARD	0x0100
#define SMTP_EXT_CHUNKING	0x0200

/* XCLIENT attributes the backend accepts (from "250-XCLIENT NAME ADDR ..."). */
#define SMTP_XCLIENT_NAME	0x01
#define SMTP_XCLIENT_ADDR	0x02
#define SMTP_XCLIENT_PORT	0x04
#define SMTP_XCLIENT_PROTO	0x08
#define SMTP_XCLIENT_HELO	0x10
#define SMTP_XCLIENT_LOGIN	0x20

/*
 * Reads the keywords of a complete 250 EHLO reply (as returned by
 * smtp_reply_parse).  The first line (the greeting) is skipped.  Returns
 * SMTP_EXT_* bits; *size gets SIZE's value (0 when absent or without a
 * number), *xclient the SMTP_XCLIENT_* bits.  Keywords match
 * case-insensitively.
 */
unsigned smtp_ehlo_parse(const char *reply, size_t len, uint64_t *size,
    unsigned *xclient);

/*
 * Encodes src as xtext (RFC 3461 4: '+', '=' and octets outside 33-126
 * become "+XX").  Writes at most dstlen bytes and a NUL when room is left;
 * returns the encoded length (without NUL), which may exceed dstlen (then
 * the output is truncated and the caller must treat it as an error).
 */
size_t smtp_xtext_encode(char *dst, size_t dstlen, const char *src, size_t len);

#endif /* SMTPGATE_SMTP_PARSE_H */
