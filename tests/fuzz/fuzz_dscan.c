/*
 * fuzz_dscan.c: the DATA scanner, smtp_dscan() (proxy/smtp_parse.c), which
 * finds the end of message data and any bare CR or LF in it.
 *
 * The input is what a client sends after DATA's 354: one or more messages
 * and whatever follows.  It is fed to the scanner the way the session
 * does, in pieces (all at once, one octet at a time, and in pseudo-random
 * pieces of 1 to 64 octets), keeping what was not consumed for the next
 * call, each call's piece in a block of its own so that AddressSanitizer
 * sees any read past it.  After an end of data the scanner is reset and
 * the rest is scanned as the next message.  Every way of cutting must
 * agree with a plain reference scan:
 *
 *  - the end is the first ".\r\n" at the start of the data or right after
 *    a CRLF (a dot after a bare LF starts no line);
 *  - a bare CR is one not followed by LF, a bare LF one not preceded by
 *    CR; the first of them, before the end, is the offence reported;
 *  - everything before the first offence is forwardable, nothing after;
 *  - at most one octet, a final CR, is held back, and after the end the
 *    scanner consumes nothing more.
 */
#include "fuzz.h"
#include "smtp_parse.h"

/* What the reference scan finds in one message. */
struct ref {
	size_t	consumed;	/* octets consumed, terminator included */
	int	done;		/* 1 when the terminator was found */
	int	bad;		/* 0 or SMTP_DSCAN_BARE_CR / _BARE_LF */
	size_t	fwd;		/* forwardable octets: up to the first
				 * offence, or all consumed */
};

/* Scans d[0..n), the whole rest of the input, the simplest way. */
static void
ref_scan(const char *d, size_t n, struct ref *r)
{
	size_t	i, lim;

	r->done = 0;
	lim = n > 0 && d[n - 1] == '\r' ? n - 1 : n;
	for (i = 0; i + 2 < n; i++)
		if (d[i] == '.' && d[i + 1] == '\r' && d[i + 2] == '\n' &&
		    (i == 0 || (i >= 2 && d[i - 2] == '\r' &&
		    d[i - 1] == '\n'))) {
			r->done = 1;
			lim = i + 3;
			break;
		}
	r->consumed = lim;
	r->bad = 0;
	r->fwd = lim;
	for (i = 0; i < lim; i++) {
		if (d[i] == '\r' && d[i + 1] != '\n')
			r->bad = SMTP_DSCAN_BARE_CR;
		else if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r'))
			r->bad = SMTP_DSCAN_BARE_LF;
		else
			continue;
		r->fwd = i;
		break;
	}
}

/* A small xorshift generator for the piece sizes. */
static uint32_t
next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/*
 * Feeds d[0..n) to the scanner in pieces: mode 0 all at once, 1 octet by
 * octet, 2 pseudo-random sizes from seed.  Checks each message against
 * ref_scan().
 */
static void
feed(const char *d, size_t n, int mode, uint32_t seed)
{
	struct smtp_dscan	 s;
	struct ref		 want;
	size_t			 start = 0, pos = 0, recvd = 0, got, fwd, sum;
	size_t			 step;
	char			*piece;
	int			 done;

	memset(&s, 0, sizeof(s));
	sum = 0;
	ref_scan(d, n, &want);
	seed |= 1;
	while (pos < n || recvd < n) {
		/* More octets arrive. */
		step = mode == 0 ? n : mode == 1 ? 1 : 1 + next_rand(&seed) % 64;
		recvd = recvd + step < n ? recvd + step : n;

		piece = fuzz_copy(d + pos, recvd - pos);
		got = smtp_dscan(&s, piece, recvd - pos, &fwd, &done);
		free(piece);
		REQUIRE(got <= recvd - pos && fwd <= got);
		/* Only a final CR is held back, unless the end was found. */
		REQUIRE(done || got == recvd - pos ||
		    (got + 1 == recvd - pos && d[recvd - 1] == '\r'));
		/* Forwardable octets come first and stop at the offence. */
		REQUIRE(fwd == got || sum + fwd == want.fwd);
		sum += fwd;
		pos += got;
		REQUIRE(s.bytes == pos - start);
		if (!done) {
			if (recvd == n)
				break;
			continue;
		}
		/* One message ended: compare, then the next one. */
		REQUIRE(want.done && pos - start == want.consumed);
		REQUIRE(s.bad == want.bad && sum == want.fwd);
		REQUIRE(smtp_dscan(&s, d + pos, pos < n ? 1 : 0, &fwd,
		    &done) == 0 && done == 1 && fwd == 0);
		memset(&s, 0, sizeof(s));
		start = pos;
		sum = 0;
		ref_scan(d + start, n - start, &want);
	}
	/* The input ended inside a message. */
	REQUIRE(!want.done && pos - start == want.consumed);
	REQUIRE(s.bad == want.bad && sum == want.fwd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char	*d = (const char *)data;
	uint32_t	 seed = 2166136261u;
	size_t		 i;

	for (i = 0; i < size; i++)
		seed = (seed ^ data[i]) * 16777619u;
	feed(d, size, 0, seed);
	feed(d, size, 1, seed);
	feed(d, size, 2, seed);
	return 0;
}
