/*
 * fuzz_reply.c: the backend reply parser, smtp_reply_parse(), and the EHLO
 * keyword reader, smtp_ehlo_parse() (proxy/smtp_parse.c).
 *
 * The input is what a backend sends.  It is cut into replies as the
 * backend client does (be_parse() in proxy/backend.c), with its limit of
 * 2048 octets and with a limit of 64 (so that over-long replies are
 * common); each reply is then read as an EHLO reply.  Checked besides
 * memory safety:
 *
 *  - a reply handed out ends in LF within the limit, and each of its lines
 *    starts with the same three-digit code (2xx to 5xx) and '-', SP or the
 *    line end, '-' on all lines but the last;
 *  - the result does not depend on what follows the reply, and one octet
 *    less makes it incomplete;
 *  - "incomplete" never turns into "malformed" or back as octets arrive;
 *  - the EHLO reader only reports XCLIENT attributes and a SIZE with the
 *    keyword, reading the raw input as well as whole replies.
 */
#include "fuzz.h"
#include "smtp_parse.h"

/* Checks one reply r[0..n) that smtp_reply_parse() gave with code. */
static void
check_reply(const char *r, size_t n, int code)
{
	const char	*line = r, *lf, *end = r + n;
	int		 last = 0;

	REQUIRE(code >= 200 && code <= 599);
	REQUIRE(n >= 4 && r[n - 1] == '\n');
	while (line < end) {
		REQUIRE(!last);
		lf = memchr(line, '\n', (size_t)(end - line));
		REQUIRE(lf != NULL && lf - line >= 3);
		REQUIRE((line[0] - '0') * 100 + (line[1] - '0') * 10 +
		    (line[2] - '0') == code);
		if (lf - line == 3 || (lf - line == 4 && line[3] == '\r'))
			last = 1;
		else {
			REQUIRE(line[3] == '-' || line[3] == ' ');
			last = line[3] == ' ';
		}
		line = lf + 1;
	}
	REQUIRE(last);
}

/* smtp_ehlo_parse() on r[0..n): keyword values only with the keyword. */
static void
check_ehlo(const char *r, size_t n)
{
	uint64_t	 size = 1;
	unsigned	 ext, xclient = ~0u;

	ext = smtp_ehlo_parse(r, n, &size, &xclient);
	REQUIRE((ext & ~0x3ffu) == 0 && (xclient & ~0x3fu) == 0);
	if (!(ext & SMTP_EXT_XCLIENT))
		REQUIRE(xclient == 0);
	if (!(ext & SMTP_EXT_SIZE))
		REQUIRE(size == 0);
	if (n == 0 || memchr(r, '\n', n) == NULL)
		REQUIRE(ext == 0);
}

/* Cuts buf[0..len) into replies of at most max octets, as be_parse() does. */
static void
run_replies(const char *buf, size_t len, size_t max)
{
	size_t	 pos = 0, avail;
	long	 n, m;
	int	 code, code2;
	char	*piece;

	while (pos < len) {
		avail = len - pos;
		n = smtp_reply_parse(buf + pos, avail, max, &code);
		/* One octet less: never malformed when this was not, never
		 * complete when this was incomplete. */
		m = smtp_reply_parse(buf + pos, avail - 1, max, &code2);
		REQUIRE(m != -1 || n == -1);
		REQUIRE(n != 0 || m == 0);
		REQUIRE(m <= 0 || (n == m && code == code2));
		if (n <= 0) {
			REQUIRE(code == 0);
			REQUIRE(n == -1 || avail < max);
			return;
		}
		REQUIRE((size_t)n <= avail && (size_t)n <= max);
		check_reply(buf + pos, (size_t)n, code);
		/* The reply alone, in a block of its own, parses the same;
		 * one octet less is incomplete. */
		piece = fuzz_copy(buf + pos, (size_t)n);
		REQUIRE(smtp_reply_parse(piece, (size_t)n, max, &code2) == n &&
		    code2 == code);
		REQUIRE(smtp_reply_parse(piece, (size_t)n - 1, max,
		    &code2) == 0);
		check_ehlo(piece, (size_t)n);
		free(piece);
		pos += (size_t)n;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*buf = fuzz_copy(data, size);

	run_replies(buf, size, 2048);
	run_replies(buf, size, 64);
	check_ehlo(buf, size);
	free(buf);
	return 0;
}
