/*
 * fuzz_auth.c: the SMTP AUTH decoders of proxy/auth.c: strict base64
 * (auth_b64_decode(), auth_b64_encode()) and the PLAIN and LOGIN client
 * messages (auth_plain_parse(), auth_login_field()).
 *
 * The input is read two ways: as a client's base64 response, decoded into
 * buffers of the sizes the session uses (smtp_session.c: PLAIN and LOGIN)
 * and then parsed, and as a decoded message itself, which reaches the
 * message parsers more directly.  Checked besides memory safety:
 *
 *  - what is accepted is canonical base64: encoding the result gives the
 *    input back; and whatever is encoded decodes back to itself, so no
 *    canonical text is refused;
 *  - on error nothing is written to the output and the length is 0;
 *  - the encoder with too little room writes only an empty string;
 *  - the PLAIN and LOGIN results agree with a plain reading of RFC 4616
 *    (fields split at NULs, limits, authzid) and are all zeros on error.
 */
#include "auth.h"
#include "fuzz.h"

/* The session's buffers: PLAIN and LOGIN messages, decoded. */
#define PLAIN_SIZE	(AUTH_PLAIN_MAX + 1)
#define LOGIN_SIZE	(AUTH_FIELD_MAX + 2)

/* Nonzero when the n octets at p are all zero. */
static int
all_zero(const void *p, size_t n)
{
	const unsigned char	*c = p;
	size_t			 i;

	for (i = 0; i < n; i++)
		if (c[i] != 0)
			return 0;
	return 1;
}

/* auth_plain_parse() on m[0..n) against RFC 4616 read plainly. */
static void
check_plain(const unsigned char *m, size_t n)
{
	struct auth_plain	 p;
	const unsigned char	*f[3];
	size_t			 len[3], i, k = 0;
	int			 r, want;

	f[0] = m;
	for (i = 0; i < n; i++)
		if (m[i] == '\0' && ++k < 3)
			f[k] = m + i + 1;
	if (k != 2)
		want = AUTH_E_SYNTAX;
	else {
		len[0] = (size_t)(f[1] - f[0]) - 1;
		len[1] = (size_t)(f[2] - f[1]) - 1;
		len[2] = (size_t)(m + n - f[2]);
		if (len[0] > AUTH_FIELD_MAX || len[1] > AUTH_FIELD_MAX ||
		    len[2] > AUTH_FIELD_MAX)
			want = AUTH_E_TOOLONG;
		else if (len[1] == 0 || len[2] == 0)
			want = AUTH_E_EMPTY;
		else if (len[0] != 0 && (len[0] != len[1] ||
		    memcmp(f[0], f[1], len[1]) != 0))
			want = AUTH_E_AUTHZID;
		else
			want = AUTH_OK;
	}
	memset(&p, 0xa5, sizeof(p));
	r = auth_plain_parse(m, n, &p);
	REQUIRE(r == want);
	REQUIRE(auth_strerror(r) != NULL);
	if (r != AUTH_OK) {
		REQUIRE(all_zero(&p, sizeof(p)));
		return;
	}
	REQUIRE(p.authcidlen == len[1] && p.passwdlen == len[2]);
	REQUIRE(memcmp(p.authcid, f[1], len[1]) == 0 &&
	    p.authcid[len[1]] == '\0');
	REQUIRE(memcmp(p.passwd, f[2], len[2]) == 0 &&
	    p.passwd[len[2]] == '\0');
	REQUIRE(p.authzid == (len[0] != 0));
}

/* auth_login_field() on m[0..n). */
static void
check_login(const unsigned char *m, size_t n)
{
	char	 out[AUTH_FIELD_MAX + 1];
	int	 r, want;

	if (memchr(m, '\0', n) != NULL)
		want = AUTH_E_SYNTAX;
	else if (n > AUTH_FIELD_MAX)
		want = AUTH_E_TOOLONG;
	else if (n == 0)
		want = AUTH_E_EMPTY;
	else
		want = AUTH_OK;
	memset(out, 0xa5, sizeof(out));
	r = auth_login_field(m, n, out);
	REQUIRE(r == want);
	if (r != AUTH_OK)
		REQUIRE(all_zero(out, sizeof(out)));
	else
		REQUIRE(memcmp(out, m, n) == 0 && out[n] == '\0');
}

/*
 * Decodes in[0..len) into a block of outsize octets as the session does,
 * checks the result and hands it to the message parsers.
 */
static void
check_decode(const char *in, size_t len, size_t outsize)
{
	unsigned char	*out, *big;
	char		*enc;
	size_t		 n, n2, i;
	int		 r;

	out = (unsigned char *)fuzz_alloc(outsize);
	memset(out, 0xa5, outsize);
	n = 1;
	r = auth_b64_decode(in, len, out, outsize, &n);
	if (r != AUTH_OK) {
		REQUIRE(r == AUTH_E_BASE64 || r == AUTH_E_NOSPACE);
		REQUIRE(n == 0);
		for (i = 0; i < outsize; i++)
			REQUIRE(out[i] == 0xa5);
		if (r == AUTH_E_NOSPACE) {
			/* It fits where the header says it always does. */
			big = (unsigned char *)fuzz_alloc(
			    AUTH_B64_DECODED_MAX(len));
			REQUIRE(auth_b64_decode(in, len, big,
			    AUTH_B64_DECODED_MAX(len), &n2) == AUTH_OK &&
			    n2 > outsize);
			free(big);
		}
		free(out);
		return;
	}
	REQUIRE(len % 4 == 0 && n <= outsize &&
	    n <= AUTH_B64_DECODED_MAX(len) && n + 2 >= len / 4 * 3);
	/* Canonical: encoding the result gives the input back. */
	enc = fuzz_alloc(len + 1);
	REQUIRE(auth_b64_encode(out, n, enc, len + 1) == len);
	REQUIRE(memcmp(enc, in, len) == 0 && enc[len] == '\0');
	free(enc);
	if (outsize == PLAIN_SIZE)
		check_plain(out, n);
	else
		check_login(out, n);
	free(out);
}

/* Encoding data[0..n) and decoding that gives data back. */
static void
check_encode(const unsigned char *data, size_t n)
{
	size_t		 need = AUTH_B64_ENCODED_LEN(n), m;
	char		*enc, *small;
	unsigned char	*dec;

	enc = fuzz_alloc(need + 1);
	REQUIRE(auth_b64_encode(data, n, enc, need + 1) == need);
	REQUIRE(strlen(enc) == need);
	dec = (unsigned char *)fuzz_alloc(n);
	REQUIRE(auth_b64_decode(enc, need, dec, n, &m) == AUTH_OK && m == n);
	REQUIRE(n == 0 || memcmp(dec, data, n) == 0);
	/* No room for the NUL: nothing but an empty string is written. */
	small = fuzz_alloc(need);
	if (need > 0) {
		memset(small, 'x', need);
		REQUIRE(auth_b64_encode(data, n, small, need) == need);
		REQUIRE(small[0] == '\0');
		for (m = 1; m < need; m++)
			REQUIRE(small[m] == 'x');
	}
	free(small);
	free(dec);
	free(enc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*in = fuzz_copy(data, size);

	check_decode(in, size, PLAIN_SIZE);
	check_decode(in, size, LOGIN_SIZE);
	check_plain((const unsigned char *)in, size);
	check_login((const unsigned char *)in, size);
	check_encode((const unsigned char *)in, size);
	free(in);
	return 0;
}
