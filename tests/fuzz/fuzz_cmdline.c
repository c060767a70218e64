/*
 * fuzz_cmdline.c: the SMTP command-line parser, smtp_line_parse() and
 * smtp_cmd_parse() (proxy/smtp_parse.c).
 *
 * The input is a client's byte stream.  It is cut into lines as the
 * session does, with the RFC 5321 limit of 512 octets and with a limit of
 * 16 (so that over-long lines are common), and every line is split into
 * verb and argument.  Checked besides memory safety: a line handed out has
 * no CR or LF left in it and ends in CRLF within the limit; a bare CR or LF
 * is reported and skipped; "need more" only when there is no LF and room
 * is left; the verb found is the one the line starts with, and no verb is
 * missed.
 */
#include <strings.h>

#include "fuzz.h"
#include "smtp_parse.h"

/* Nonzero when line[0..len) starts with verb v followed by SP or its end. */
static int
starts_with_verb(const char *line, size_t len, enum smtp_verb v)
{
	const char	*name = smtp_verb_name(v);
	size_t		 n = strlen(name);

	return len >= n && strncasecmp(line, name, n) == 0 &&
	    (len == n || line[n] == ' ');
}

/* Checks smtp_cmd_parse() on one complete line. */
static void
check_command(const char *line, size_t len)
{
	const char	*arg;
	size_t		 arglen, n;
	enum smtp_verb	 v;
	int		 u;

	v = smtp_cmd_parse(line, len, &arg, &arglen);
	REQUIRE((unsigned)v < SMTP_V__COUNT);
	if (v == SMTP_V_UNKNOWN) {
		REQUIRE(arg == line && arglen == 0);
		for (u = SMTP_V_UNKNOWN + 1; u < SMTP_V__COUNT; u++)
			REQUIRE(!starts_with_verb(line, len, u));
		return;
	}
	REQUIRE(starts_with_verb(line, len, v));
	n = strlen(smtp_verb_name(v));
	REQUIRE(arg == line + n + (len > n));
	REQUIRE(arg + arglen == line + len);
}

/* Cuts buf[0..len) into lines of at most max octets, as the session does. */
static void
run_lines(const char *buf, size_t len, size_t max)
{
	const char		*line, *lf;
	size_t			 pos = 0, linelen, consumed, avail, n;
	enum smtp_line_status	 st;

	while (pos < len) {
		avail = len - pos;
		n = avail < max ? avail : max;
		lf = memchr(buf + pos, '\n', n);
		st = smtp_line_parse(buf + pos, avail, max, &line, &linelen,
		    &consumed);
		switch (st) {
		case SMTP_LINE_OK:
			REQUIRE(lf != NULL && line == buf + pos);
			REQUIRE(consumed == linelen + 2 && consumed <= max);
			REQUIRE(line + linelen + 1 == lf);
			REQUIRE(line[linelen] == '\r');
			REQUIRE(memchr(line, '\r', linelen) == NULL);
			REQUIRE(memchr(line, '\n', linelen) == NULL);
			check_command(line, linelen);
			pos += consumed;
			break;
		case SMTP_LINE_BARE:
			REQUIRE(lf != NULL && linelen == 0);
			REQUIRE(consumed == (size_t)(lf - (buf + pos)) + 1);
			/* No CR before the LF, or one elsewhere too. */
			REQUIRE(consumed < 2 || lf[-1] != '\r' ||
			    memchr(buf + pos, '\r', consumed - 2) != NULL);
			pos += consumed;
			break;
		case SMTP_LINE_TOO_LONG:
			REQUIRE(lf == NULL && avail >= max && consumed == 0);
			/* The session discards up to the next LF. */
			lf = memchr(buf + pos, '\n', avail);
			pos = lf ? (size_t)(lf - buf) + 1 : len;
			break;
		case SMTP_LINE_NEED_MORE:
			REQUIRE(lf == NULL && avail < max && consumed == 0);
			return;
		default:
			REQUIRE(0);
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*buf = fuzz_copy(data, size);

	run_lines(buf, size, 512);
	run_lines(buf, size, 16);
	REQUIRE(strcmp(smtp_verb_name(SMTP_V__COUNT), "UNKNOWN") == 0);
	free(buf);
	return 0;
}
