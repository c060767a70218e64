/*
 * smtp_reply.h: every reply smtpgate writes itself, in one table.
 *
 * Replies relayed from the backend never pass through here: they are
 * copied to the client as received.
 */
#ifndef SMTPGATE_SMTP_REPLY_H
#define SMTPGATE_SMTP_REPLY_H

#include <stddef.h>

enum smtp_reply_id {
	RPL_GREETING,		/* 220 <host> ESMTP smtpgate */
	RPL_HELO,			/* 250 <host> */
	RPL_OK,			/* 250 2.0.0 Ok */
	RPL_VRFY,			/* 252 */
	RPL_HELP,			/* 214 */
	RPL_BYE,			/* 221 */
	RPL_UNKNOWN,		/* 500 5.5.2 command not recognized */
	RPL_LINE_TOO_LONG,	/* 500 5.5.2 */
	RPL_BARE_EOL,		/* 500 5.5.2 bare CR/LF in a command */
	RPL_HELO_SYNTAX,		/* 501 5.5.4 */
	RPL_MAIL_SYNTAX,		/* 501 5.5.4 */
	RPL_RCPT_SYNTAX,		/* 501 5.5.4 */
	RPL_SENDER_SYNTAX,	/* 501 5.1.7 */
	RPL_RCPT_ADDR_SYNTAX,	/* 501 5.1.3 */
	RPL_PARAM_SYNTAX,		/* 501 5.5.4 */
	RPL_PARAM_UNKNOWN,	/* 555 5.5.4 */
	RPL_UTF8_REQUIRED,	/* 553 5.6.7 */
	RPL_NO_ARGS,		/* 501 5.5.4 (DATA, RSET, QUIT with arguments) */
	RPL_NEED_HELO,		/* 503 5.5.1 */
	RPL_NESTED_MAIL,		/* 503 5.5.1 */
	RPL_NEED_MAIL,		/* 503 5.5.1 */
	RPL_NEED_RCPT,		/* 503 5.5.1 */
	RPL_NO_VALID_RCPT,	/* 554 5.5.1 */
	RPL_TOO_MANY_RCPT,	/* 452 4.5.3 */
	RPL_SIZE_EXCEEDED,	/* 552 5.3.4 */
	RPL_SMUGGLING,		/* 550 5.5.2 bare CR/LF in message data */
	RPL_EXPN_DISABLED,	/* 502 5.5.1 */
	RPL_NOT_IMPLEMENTED,	/* 502 5.5.1 (STARTTLS, AUTH, BDAT here) */
	RPL_XCLIENT_DENIED,	/* 550 5.7.0 */
	RPL_BE_UNAVAILABLE,	/* 451 4.4.1 no backend could be reached */
	RPL_BE_LOST,		/* 451 4.4.2 backend lost mid-transaction */
	RPL_BE_TIMEOUT,		/* 451 4.4.2 backend did not answer in time */
	RPL_TIMEOUT,		/* 421 4.4.2 client timed out */
	RPL_TOO_MANY_ERRORS,	/* 421 4.7.0 */
	RPL_TOO_MANY_CONN,	/* 421 4.7.0 */
	RPL_TOO_MANY_CONN_CLIENT, /* 421 4.7.0 from one client address: the
				 * argument is "<host> Error: ..." */
	RPL_SHUTDOWN,		/* 421 4.3.2 */
	RPL_REFUSED_SESSION,	/* 503 5.5.1 after a refused greeting */
	RPL_TLS_READY,		/* 220 2.0.0 STARTTLS accepted */
	RPL_TLS_ACTIVE,		/* 554 5.5.1 STARTTLS under TLS */
	RPL_TX_IN_PROGRESS,	/* 503 5.5.1 STARTTLS within a transaction */
	RPL_NEED_TLS,		/* 530 5.7.0 MAIL before STARTTLS (require_tls) */
	RPL_AUTH_OK,		/* 235 2.7.0 */
	RPL_AUTH_FAILED,	/* 535 5.7.8 */
	RPL_AUTH_TEMP,		/* 454 4.7.0 the check itself failed */
	RPL_AUTH_NEED_TLS,	/* 538 5.7.11 AUTH without TLS */
	RPL_AUTH_TWICE,		/* 503 5.5.1 already authenticated */
	RPL_AUTH_MECH,		/* 504 5.5.4 unknown mechanism */
	RPL_AUTH_BAD_B64,	/* 501 5.5.2 undecodable response */
	RPL_AUTH_ABORTED,	/* 501 5.7.0 client sent "*" */
	RPL__COUNT
};

struct smtp_reply_def {
	int		 code;		/* three-digit reply code */
	const char	*fmt;		/* text after the code; one optional %s
					 * (the hostname or an argument) */
};

/* The table, indexed by enum smtp_reply_id. */
extern const struct smtp_reply_def smtp_replies[RPL__COUNT];

/*
 * Formats reply id as "CODE TEXT\r\n" into buf (at most buflen bytes),
 * with arg substituted for the %s if the text has one.  Returns the length
 * written, or 0 if it did not fit.
 */
size_t smtp_reply_format(char *buf, size_t buflen, enum smtp_reply_id id,
    const char *arg);

#endif /* SMTPGATE_SMTP_REPLY_H */
