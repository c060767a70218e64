/*
 * smtp_reply.c: the reply table.  Enhanced status codes (RFC 3463) on
 * every reply but the greeting and HELO/EHLO (RFC 2034 3).
 */
#include <stdio.h>

#include "smtp_reply.h"

const struct smtp_reply_def smtp_replies[RPL__COUNT] = {
	[RPL_GREETING]		= { 220, "%s ESMTP smtpgate" },
	[RPL_HELO]		= { 250, "%s" },
	[RPL_OK]			= { 250, "2.0.0 Ok" },
	[RPL_VRFY]		= { 252, "2.0.0 Cannot VRFY user, but will accept "
				    "message and attempt delivery" },
	[RPL_HELP]		= { 214, "2.0.0 Commands: HELO EHLO MAIL RCPT "
				    "DATA RSET NOOP QUIT VRFY HELP" },
	[RPL_BYE]			= { 221, "2.0.0 Bye" },
	[RPL_UNKNOWN]		= { 500, "5.5.2 Error: command not recognized" },
	[RPL_LINE_TOO_LONG]	= { 500, "5.5.2 Error: line too long" },
	[RPL_BARE_EOL]		= { 500, "5.5.2 Error: bare <CR> or <LF> "
				    "received" },
	[RPL_HELO_SYNTAX]		= { 501, "5.5.4 Syntax: %s hostname" },
	[RPL_MAIL_SYNTAX]		= { 501, "5.5.4 Syntax: MAIL FROM:<address>" },
	[RPL_RCPT_SYNTAX]		= { 501, "5.5.4 Syntax: RCPT TO:<address>" },
	[RPL_SENDER_SYNTAX]	= { 501, "5.1.7 Bad sender address syntax" },
	[RPL_RCPT_ADDR_SYNTAX]	= { 501, "5.1.3 Bad recipient address syntax" },
	[RPL_PARAM_SYNTAX]	= { 501, "5.5.4 Bad parameter syntax or value" },
	[RPL_PARAM_UNKNOWN]	= { 555, "5.5.4 Unsupported option" },
	[RPL_UTF8_REQUIRED]	= { 553, "5.6.7 Must declare SMTPUTF8 to send "
				    "UTF-8 addresses" },
	[RPL_NO_ARGS]		= { 501, "5.5.4 Syntax: %s" },
	[RPL_NEED_HELO]		= { 503, "5.5.1 Error: send HELO/EHLO first" },
	[RPL_NESTED_MAIL]		= { 503, "5.5.1 Error: nested MAIL command" },
	[RPL_NEED_MAIL]		= { 503, "5.5.1 Error: need MAIL command" },
	[RPL_NEED_RCPT]		= { 503, "5.5.1 Error: need RCPT command" },
	[RPL_NO_VALID_RCPT]	= { 554, "5.5.1 Error: no valid recipients" },
	[RPL_TOO_MANY_RCPT]	= { 452, "4.5.3 Error: too many recipients" },
	[RPL_SIZE_EXCEEDED]	= { 552, "5.3.4 Message size exceeds fixed "
				    "limit" },
	[RPL_SMUGGLING]		= { 550, "5.5.2 Error: bare <CR> or <LF> in "
				    "message data" },
	[RPL_EXPN_DISABLED]	= { 502, "5.5.1 Error: EXPN not enabled" },
	[RPL_NOT_IMPLEMENTED]	= { 502, "5.5.1 Error: command not "
				    "implemented" },
	[RPL_XCLIENT_DENIED]	= { 550, "5.7.0 Error: insufficient "
				    "authorization" },
	[RPL_BE_UNAVAILABLE]	= { 451, "4.4.1 Error: backend unavailable, "
				    "try again later" },
	[RPL_BE_LOST]		= { 451, "4.4.2 Error: lost connection to "
				    "backend" },
	[RPL_BE_TIMEOUT]		= { 451, "4.4.2 Error: backend timeout" },
	[RPL_TIMEOUT]		= { 421, "4.4.2 %s Error: timeout exceeded" },
	[RPL_TOO_MANY_ERRORS]	= { 421, "4.7.0 %s Error: too many errors" },
	[RPL_TOO_MANY_CONN]	= { 421, "4.7.0 %s Error: too many "
				    "connections" },
	[RPL_SHUTDOWN]		= { 421, "4.3.2 %s Service shutting down" },
	[RPL_TOO_MANY_CONN_CLIENT] = { 421, "4.7.0 %s" },
	[RPL_REFUSED_SESSION]	= { 503, "5.5.1 Error: access denied; only "
				    "QUIT is accepted" },
	[RPL_TLS_READY]		= { 220, "2.0.0 Ready to start TLS" },
	[RPL_TLS_ACTIVE]		= { 554, "5.5.1 Error: TLS already active" },
	[RPL_TX_IN_PROGRESS]	= { 503, "5.5.1 Error: MAIL transaction in "
				    "progress" },
	[RPL_NEED_TLS]		= { 530, "5.7.0 Must issue a STARTTLS command "
				    "first" },
	[RPL_AUTH_OK]		= { 235, "2.7.0 Authentication successful" },
	[RPL_AUTH_FAILED]		= { 535, "5.7.8 Error: authentication "
				    "failed" },
	[RPL_AUTH_TEMP]		= { 454, "4.7.0 Temporary authentication "
				    "failure" },
	[RPL_AUTH_NEED_TLS]	= { 538, "5.7.11 Encryption required for "
				    "requested authentication mechanism" },
	[RPL_AUTH_TWICE]		= { 503, "5.5.1 Error: already authenticated" },
	[RPL_AUTH_MECH]		= { 504, "5.5.4 Unrecognized authentication "
				    "type" },
	[RPL_AUTH_BAD_B64]	= { 501, "5.5.2 Error: cannot decode "
				    "response" },
	[RPL_AUTH_ABORTED]	= { 501, "5.7.0 Authentication aborted" },
};

size_t
smtp_reply_format(char *buf, size_t buflen, enum smtp_reply_id id,
    const char *arg)
{
	int n, m;

	n = snprintf(buf, buflen, "%03d ", smtp_replies[id].code);
	if (n < 0 || (size_t)n >= buflen)
		return 0;
	/* The formats are constants of this file with at most one %s. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	m = snprintf(buf + n, buflen - n, smtp_replies[id].fmt,
	    arg ? arg : "");
#pragma GCC diagnostic pop
	if (m < 0 || (size_t)(n + m + 2) >= buflen)
		return 0;
	n += m;
	buf[n++] = '\r';
	buf[n++] = '\n';
	return (size_t)n;
}
