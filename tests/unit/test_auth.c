/*
 * test_auth.c: unit tests for proxy/auth.c.
 *
 * The decoders are table driven, with every input copied to end right
 * before a PROT_NONE page (a read one octet too far faults) and also given
 * each of its truncated prefixes.  The credentials file tests write files
 * to a private mkdtemp() directory: the hashes of the valid file are made
 * here with crypt_gensalt_rn() and crypt_rn(), so each run has new salts;
 * the error cases check every line of the error text, in order, against
 * "FILE:LINE:COL: message" prefixes, so a missing or an extra error fails
 * the case.
 */
#include <sys/mman.h>
#include <sys/stat.h>

#include <crypt.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "test.h"

#define S(s)		s, sizeof(s) - 1	/* literal, length */
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* Ten and a hundred octets, to build inputs of a given length. */
#define X10		"xxxxxxxxxx"
#define X100		X10 X10 X10 X10 X10 X10 X10 X10 X10 X10
#define X255		X100 X100 X10 X10 X10 X10 X10 "xxxxx"

/*
 * Valid hashes of unknown passwords, for the error cases, where only the
 * columns matter: HY is 73 octets, so "alice:" HY ends in column 79.
 */
#define HY	"$y$j9T$K2OcGxkonZFO7/OcFCnOw.$DmQ9AHXJjFaFfvzkzY1Hxdj6." \
		"YopTgorUH5XiQlcEJB"
#define H6SUM	"reDZOIoIdlttAhYwbDes6.EUpV1B9AeR94ZY5sHittePCPUcyIiA6LRNi3" \
		"rnICBffWjYDKpYkV3OZJv/36drQ."	/* an 86-octet $6$ hash part */

/* Readable pages followed by a PROT_NONE page. */
struct guard {
	char	*end;		/* first octet of the PROT_NONE page */
	size_t	 size;		/* readable octets before it */
};

static struct guard	 guard;
static char		 tmpdir[] = "/tmp/test_auth.XXXXXX"; /* our files */
static char		 dbfile[PATH_MAX];	/* tmpdir/users */

/* Maps two readable pages and a PROT_NONE one after them; exits on error. */
static void
guard_init(void)
{
	size_t	 pg = (size_t)sysconf(_SC_PAGESIZE);
	char	*m;

	guard.size = 2 * pg;
	m = mmap(NULL, guard.size + pg, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m + guard.size, pg, PROT_NONE) == -1) {
		perror("guard page");
		exit(2);
	}
	guard.end = m + guard.size;
}

/*
 * Copies s[0..len) to end right before the guard page and returns the
 * copy, which the next call overwrites.
 */
static const char *
at_guard(const void *s, size_t len)
{
	char	*p;

	if (len > guard.size) {
		fprintf(stderr, "test input of %zu octets too long\n", len);
		exit(2);
	}
	p = guard.end - len;
	if (len > 0)
		memmove(p, s, len);
	return p;
}

/* Returns 1 when all size octets at p are zero. */
static int
all_zero(const void *p, size_t size)
{
	const unsigned char	*c = p;
	size_t			 i;

	for (i = 0; i < size; i++)
		if (c[i] != 0)
			return 0;
	return 1;
}

/* ---- Base64 ------------------------------------------------------------- */

static const struct b64_test {
	const char	*in;
	size_t		 inlen;
	int		 rc;		/* expected result */
	const char	*out;		/* expected octets when AUTH_OK */
	size_t		 outlen;
} b64_tests[] = {
	/* RFC 4648 10. */
	{ S(""), AUTH_OK, S("") },
	{ S("Zg=="), AUTH_OK, S("f") },
	{ S("Zm8="), AUTH_OK, S("fo") },
	{ S("Zm9v"), AUTH_OK, S("foo") },
	{ S("Zm9vYg=="), AUTH_OK, S("foob") },
	{ S("Zm9vYmE="), AUTH_OK, S("fooba") },
	{ S("Zm9vYmFy"), AUTH_OK, S("foobar") },
	/* RFC 4616 4 and the LOGIN prompts; every value of 6 bits. */
	{ S("AHRpbQB0YW5zdGFhZnRhbnN0YWFm"), AUTH_OK,
	  S("\0tim\0tanstaaftanstaaf") },
	{ S("VXNlcm5hbWU6"), AUTH_OK, S("Username:") },
	{ S("UGFzc3dvcmQ6"), AUTH_OK, S("Password:") },
	{ S("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), AUTH_OK,
	  S("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e"
	    "\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d"
	    "\x1e\x1f") },
	{ S("+/+/"), AUTH_OK, S("\xfb\xff\xbf") },
	{ S("////"), AUTH_OK, S("\xff\xff\xff") },
	/* Length not a multiple of 4, missing or extra padding. */
	{ S("Zg"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zg="), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9vY"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zg==="), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9v===="), AUTH_E_BASE64, NULL, 0 },
	{ S("Z==="), AUTH_E_BASE64, NULL, 0 },
	{ S("===="), AUTH_E_BASE64, NULL, 0 },
	{ S("="), AUTH_E_BASE64, NULL, 0 },
	/* Padding anywhere but at the end. */
	{ S("Zg==Zm9v"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm8=Zm9v"), AUTH_E_BASE64, NULL, 0 },
	{ S("=Zm9"), AUTH_E_BASE64, NULL, 0 },
	{ S("Z=g="), AUTH_E_BASE64, NULL, 0 },
	/* Padding with nonzero bits under it (not canonical, 3.5). */
	{ S("Zh=="), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9="), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm+="), AUTH_E_BASE64, NULL, 0 },
	/* White space, line ends, other alphabets, other octets. */
	{ S("Zm9v\r\n"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9v YmFy"), AUTH_E_BASE64, NULL, 0 },
	{ S(" Zm9vYmF"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9vYmF\t"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9\nvYmFy\n"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm-_"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9v\0\0\0\0"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm9\xc3"), AUTH_E_BASE64, NULL, 0 },
	{ S("Zm.v"), AUTH_E_BASE64, NULL, 0 },
	{ S("*"), AUTH_E_BASE64, NULL, 0 },
};

static void
test_b64_decode(void)
{
	const struct b64_test	*t;
	unsigned char		 out[64];
	const char		*in;
	size_t			 i, k, outlen;
	int			 rc;

	for (i = 0; i < NELEM(b64_tests); i++) {
		t = &b64_tests[i];
		memset(out, '#', sizeof(out));
		outlen = 99;
		rc = auth_b64_decode(at_guard(t->in, t->inlen), t->inlen, out,
		    sizeof(out), &outlen);
		CHECKF(rc == t->rc, "b64 %zu: rc %d, want %d", i, rc, t->rc);
		if (t->rc == AUTH_OK)
			CHECKF(outlen == t->outlen &&
			    memcmp(out, t->out, outlen) == 0 &&
			    out[outlen] == '#', "b64 %zu: output", i);
		else
			CHECKF(outlen == 0 && out[0] == '#',
			    "b64 %zu: wrote on error", i);

		/* Exactly the room needed is enough; one octet less is not. */
		if (t->rc == AUTH_OK) {
			rc = auth_b64_decode(t->in, t->inlen, out, t->outlen,
			    &outlen);
			CHECKF(rc == AUTH_OK && outlen == t->outlen,
			    "b64 %zu: exact room", i);
		}
		if (t->rc == AUTH_OK && t->outlen > 0) {
			memset(out, '#', sizeof(out));
			rc = auth_b64_decode(t->in, t->inlen, out,
			    t->outlen - 1, &outlen);
			CHECKF(rc == AUTH_E_NOSPACE && outlen == 0 &&
			    out[0] == '#', "b64 %zu: no room: %d", i, rc);
		}

		/* Prefixes: whatever the result, in bounds and consistent. */
		for (k = 0; k < t->inlen; k++) {
			in = at_guard(t->in, k);
			rc = auth_b64_decode(in, k, out, sizeof(out), &outlen);
			if (k % 4 != 0)
				CHECKF(rc == AUTH_E_BASE64, "b64 %zu prefix "
				    "%zu: rc %d", i, k, rc);
			else
				CHECKF(rc != AUTH_OK || outlen <= k / 4 * 3,
				    "b64 %zu prefix %zu", i, k);
		}
	}
}

static const struct enc_test {
	const char	*in;
	size_t		 inlen;
	const char	*want;
} enc_tests[] = {
	{ S(""), "" },
	{ S("f"), "Zg==" },
	{ S("fo"), "Zm8=" },
	{ S("foo"), "Zm9v" },
	{ S("foob"), "Zm9vYg==" },
	{ S("fooba"), "Zm9vYmE=" },
	{ S("foobar"), "Zm9vYmFy" },
	{ S("Username:"), AUTH_LOGIN_PROMPT_USER },
	{ S("Password:"), AUTH_LOGIN_PROMPT_PASS },
	{ S("\xfb\xff\xbf"), "+/+/" },
	{ S("\0tim\0tanstaaftanstaaf"), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm" },
};

static void
test_b64_encode(void)
{
	const struct enc_test	*t;
	unsigned char		 raw[256], back[256];
	char			 out[400];
	size_t			 i, n, len, backlen;

	for (i = 0; i < NELEM(enc_tests); i++) {
		t = &enc_tests[i];
		len = strlen(t->want);
		memset(out, '#', sizeof(out));
		n = auth_b64_encode((const unsigned char *)t->in, t->inlen,
		    out, sizeof(out));
		CHECKF(n == len && strcmp(out, t->want) == 0, "enc %zu: %s",
		    i, out);
		CHECK(n == AUTH_B64_ENCODED_LEN(t->inlen));
		/* No room for the NUL: nothing but an empty string. */
		memset(out, '#', sizeof(out));
		n = auth_b64_encode((const unsigned char *)t->in, t->inlen,
		    out, len);
		CHECKF(n == len && (len == 0 || out[0] == '\0') &&
		    (len < 2 || out[1] == '#'), "enc %zu: short buffer", i);
	}
	CHECK(auth_b64_encode((const unsigned char *)"f", 1, NULL, 0) == 4);

	/* Round trips of every length up to 255 over all octet values. */
	for (i = 0; i < sizeof(raw); i++)
		raw[i] = (unsigned char)(i * 37 + 11);
	for (len = 0; len < sizeof(raw); len++) {
		n = auth_b64_encode(raw, len, out, sizeof(out));
		CHECKF(auth_b64_decode(out, n, back, sizeof(back), &backlen) ==
		    AUTH_OK && backlen == len && memcmp(raw, back, len) == 0,
		    "round trip %zu", len);
	}
}

/* ---- PLAIN and LOGIN ---------------------------------------------------- */

static const struct plain_test {
	const char	*msg;
	size_t		 len;
	int		 rc;		/* expected result */
	const char	*authcid;	/* expected when AUTH_OK */
	const char	*passwd;
	int		 authzid;
} plain_tests[] = {
	/* RFC 4616 4. */
	{ S("\0tim\0tanstaaftanstaaf"), AUTH_OK, "tim",
	  "tanstaaftanstaaf", 0 },
	{ S("Kurt\0Kurt\0xipj3plmq"), AUTH_OK, "Kurt", "xipj3plmq", 1 },
	{ S("Ursel\0Kurt\0xipj3plmq"), AUTH_E_AUTHZID, NULL, NULL, 0 },
	{ S("kurt\0Kurt\0xipj3plmq"), AUTH_E_AUTHZID, NULL, NULL, 0 },
	{ S("Kur\0Kurt\0xipj3plmq"), AUTH_E_AUTHZID, NULL, NULL, 0 },
	{ S("\0u\0p"), AUTH_OK, "u", "p", 0 },
	{ S("\0us er\0pass word"), AUTH_OK, "us er", "pass word", 0 },
	{ S("\0\xc3\xbc\0\xe2\x82\xac"), AUTH_OK, "\xc3\xbc", "\xe2\x82\xac",
	  0 },
	/* Field counts. */
	{ S(""), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("user"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("\0user"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("user\0pass"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("\0user\0pass\0"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("\0user\0pa\0ss"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	{ S("\0\0\0"), AUTH_E_SYNTAX, NULL, NULL, 0 },
	/* Empty fields. */
	{ S("\0\0"), AUTH_E_EMPTY, NULL, NULL, 0 },
	{ S("\0\0pass"), AUTH_E_EMPTY, NULL, NULL, 0 },
	{ S("\0user\0"), AUTH_E_EMPTY, NULL, NULL, 0 },
	{ S("user\0user\0"), AUTH_E_EMPTY, NULL, NULL, 0 },
	/* Lengths: 255 is the most. */
	{ S("\0" X255 "\0p"), AUTH_OK, X255, "p", 0 },
	{ S("\0u\0" X255), AUTH_OK, "u", X255, 0 },
	{ S(X255 "\0" X255 "\0" X255), AUTH_OK, X255, X255, 1 },
	{ S("\0" X255 "x\0p"), AUTH_E_TOOLONG, NULL, NULL, 0 },
	{ S("\0u\0" X255 "x"), AUTH_E_TOOLONG, NULL, NULL, 0 },
	{ S(X255 "x\0u\0p"), AUTH_E_TOOLONG, NULL, NULL, 0 },
	/* A length error comes before an empty or a foreign authzid. */
	{ S("\0\0" X255 "x"), AUTH_E_TOOLONG, NULL, NULL, 0 },
	{ S("other\0u\0" X255 "x"), AUTH_E_TOOLONG, NULL, NULL, 0 },
};

static void
test_plain(void)
{
	const struct plain_test	*t;
	struct auth_plain	 p;
	const unsigned char	*in;
	size_t			 i, k;
	int			 rc;

	for (i = 0; i < NELEM(plain_tests); i++) {
		t = &plain_tests[i];
		memset(&p, '#', sizeof(p));
		in = (const unsigned char *)at_guard(t->msg, t->len);
		rc = auth_plain_parse(in, t->len, &p);
		CHECKF(rc == t->rc, "plain %zu: rc %d (%s), want %d", i, rc,
		    auth_strerror(rc), t->rc);
		if (rc != t->rc)
			continue;
		if (rc != AUTH_OK) {
			CHECKF(all_zero(&p, sizeof(p)), "plain %zu: not "
			    "wiped", i);
			continue;
		}
		CHECKF(strcmp(p.authcid, t->authcid) == 0 &&
		    p.authcidlen == strlen(t->authcid) &&
		    strcmp(p.passwd, t->passwd) == 0 &&
		    p.passwdlen == strlen(t->passwd) &&
		    p.authzid == t->authzid, "plain %zu: fields", i);

		/* A prefix of a good message has fewer or shorter fields. */
		for (k = 0; k < t->len; k++) {
			in = (const unsigned char *)at_guard(t->msg, k);
			rc = auth_plain_parse(in, k, &p);
			CHECKF(rc != AUTH_OK ? all_zero(&p, sizeof(p)) :
			    p.passwdlen < strlen(t->passwd),
			    "plain %zu prefix %zu: rc %d", i, k, rc);
		}
	}
}

static const struct login_test {
	const char	*msg;
	size_t		 len;
	int		 rc;		/* expected result */
} login_tests[] = {
	{ S("alice"), AUTH_OK },
	{ S("pass word"), AUTH_OK },
	{ S(X255), AUTH_OK },
	{ S(""), AUTH_E_EMPTY },
	{ S(X255 "x"), AUTH_E_TOOLONG },
	{ S("ali\0ce"), AUTH_E_SYNTAX },
	{ S("\0"), AUTH_E_SYNTAX },
	{ S(X255 "\0"), AUTH_E_SYNTAX },
};

static void
test_login(void)
{
	const struct login_test	*t;
	char			 out[AUTH_FIELD_MAX + 1];
	size_t			 i;
	int			 rc;

	for (i = 0; i < NELEM(login_tests); i++) {
		t = &login_tests[i];
		memset(out, '#', sizeof(out));
		rc = auth_login_field((const unsigned char *)at_guard(t->msg,
		    t->len), t->len, out);
		CHECKF(rc == t->rc, "login %zu: rc %d", i, rc);
		if (rc == AUTH_OK)
			CHECKF(strlen(out) == t->len &&
			    memcmp(out, t->msg, t->len) == 0,
			    "login %zu: field", i);
		else
			CHECKF(all_zero(out, sizeof(out)), "login %zu: not "
			    "wiped", i);
	}
	for (rc = AUTH_E_AUTHZID; rc <= AUTH_OK; rc++)
		CHECK(strcmp(auth_strerror(rc), "unknown error") != 0);
	CHECK(strcmp(auth_strerror(1), "unknown error") == 0);
}

/* ---- Credentials file --------------------------------------------------- */

/* Writes text (len octets) to path with mode; exits on error. */
static void
write_file(const char *path, const char *text, size_t len, mode_t mode)
{
	FILE	*f;

	if ((f = fopen(path, "w")) == NULL ||
	    fwrite(text, 1, len, f) != len || fclose(f) != 0 ||
	    chmod(path, mode) == -1) {
		perror(path);
		exit(2);
	}
}

/*
 * Returns a malloc'd hash of pass with a new salt of kind prefix at cost
 * count (0: the default).  Exits on error: the test cannot go on.
 */
static char *
make_hash(const char *prefix, unsigned long count, const char *pass)
{
	char			 setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data	*cd;
	char			*h;

	if ((cd = calloc(1, sizeof(*cd))) == NULL ||
	    crypt_gensalt_rn(prefix, count, NULL, 0, setting,
	    sizeof(setting)) == NULL ||
	    crypt_rn(pass, setting, cd, sizeof(*cd)) == NULL ||
	    (h = strdup(cd->output)) == NULL) {
		perror(prefix);
		exit(2);
	}
	free(cd);
	return h;
}

/* A user of the valid file and the password that belongs to it. */
struct cred {
	const char	*user;
	const char	*pass;
	const char	*prefix;	/* hash kind */
	unsigned long	 count;		/* cost, 0 for the default */
};

static const struct cred creds[] = {
	{ "alice", "correct horse battery staple", "$y$", 1 },
	{ "Alice", "another one", "$y$", 1 },
	{ "bob", "hunter2", "$6$", 1000 },
	{ "carol", "p\xc3\xa4ssw\xc3\xb6rd", "$5$", 1000 },
	{ "dave", "bcrypt, cost 4", "$2b$", 4 },
	{ "erin", "gost", "$gy$", 1 },
	{ "\xc3\xbcrsula", "utf-8 user", "$y$", 1 },
	{ "x@example.com", "mail address", "$y$", 1 },
	{ X255, "long name", "$6$", 1000 },
};

static const struct verify_test {
	const char	*user;
	const char	*pass;
	int		 want;
} verify_tests[] = {
	{ "alice", "correct horse battery staple", 1 },
	{ "alice", "correct horse battery stapl", 0 },
	{ "alice", "correct horse battery staple ", 0 },
	{ "alice", "", 0 },
	{ "alice", "another one", 0 },
	{ "Alice", "another one", 1 },
	{ "Alice", "correct horse battery staple", 0 },
	{ "ALICE", "correct horse battery staple", 0 },
	{ "alic", "correct horse battery staple", 0 },
	{ "alice ", "correct horse battery staple", 0 },
	{ "bob", "hunter2", 1 },
	{ "bob", "Hunter2", 0 },
	{ "carol", "p\xc3\xa4ssw\xc3\xb6rd", 1 },
	{ "carol", "passwort", 0 },
	{ "dave", "bcrypt, cost 4", 1 },
	{ "dave", "bcrypt, cost 5", 0 },
	{ "erin", "gost", 1 },
	{ "\xc3\xbcrsula", "utf-8 user", 1 },
	{ "x@example.com", "mail address", 1 },
	{ X255, "long name", 1 },
	{ X255 "x", "long name", 0 },
	{ "mallory", "hunter2", 0 },
	{ "", "", 0 },
	{ "#", "x", 0 },
};

/* Loads dbfile; returns the db, or NULL after printing the errors. */
static struct auth_db *
load_ok(void)
{
	struct auth_db	*db;
	char		*errors;

	if ((db = auth_db_load(dbfile, &errors)) == NULL) {
		fprintf(stderr, "%s", errors);
		free(errors);
	}
	return db;
}

static void
test_db_valid(void)
{
	struct auth_db	*db;
	char		*text = NULL, *hash;
	size_t		 i, size = 0;
	FILE		*f;
	int		 rc;

	/* Comments, blank lines, and no LF after the last line. */
	if ((f = open_memstream(&text, &size)) == NULL)
		exit(2);
	fprintf(f, "# test users\n\n#\n##:#\n");
	for (i = 0; i < NELEM(creds); i++) {
		hash = make_hash(creds[i].prefix, creds[i].count,
		    creds[i].pass);
		fprintf(f, "%s%s:%s", i ? "\n" : "", creds[i].user, hash);
		free(hash);
		if (i == 3)
			fprintf(f, "\n\n# more\n");
	}
	if (fclose(f) != 0)
		exit(2);

	write_file(dbfile, text, size, 0600);
	if ((db = load_ok()) == NULL) {
		CHECKF(0, "valid file refused");
		free(text);
		return;
	}
	CHECK(auth_db_count(db) == NELEM(creds));
	CHECK(auth_db_world_readable(db) == 0);
	for (i = 0; i < NELEM(verify_tests); i++) {
		rc = auth_db_verify(db, verify_tests[i].user,
		    verify_tests[i].pass);
		CHECKF(rc == verify_tests[i].want, "verify %zu (%.20s): %d",
		    i, verify_tests[i].user, rc);
	}
	auth_db_free(db);

	/* Readable by others: loaded, with the flag set. */
	write_file(dbfile, text, size, 0644);
	if ((db = load_ok()) != NULL) {
		CHECK(auth_db_world_readable(db) == 1);
		auth_db_free(db);
	} else
		CHECKF(0, "mode 0644 refused");
	free(text);

	/* A file without users: no one gets in. */
	write_file(dbfile, S("# nobody\n\n"), 0600);
	if ((db = load_ok()) != NULL) {
		CHECK(auth_db_count(db) == 0);
		CHECK(auth_db_verify(db, "alice", "x") == 0);
		CHECK(auth_db_verify(db, "", "") == 0);
		auth_db_free(db);
	} else
		CHECKF(0, "file without users refused");
	write_file(dbfile, S(""), 0600);
	if ((db = load_ok()) != NULL) {
		CHECK(auth_db_count(db) == 0);
		auth_db_free(db);
	} else
		CHECKF(0, "empty file refused");
	auth_db_free(NULL);
}

/* Where an error is and what its message starts with. */
static const struct db_err_test {
	const char	*text;
	size_t		 len;
	const char	*errs[6];	/* "LINE:COL: message" prefixes, in
					 * order; NULL ends them */
} db_err_tests[] = {
	{ S("alice:" HY "\nbob:" HY "\nalice:" HY "\n"),
	  { "3:1: duplicate user \"alice\" (first on line 1)" } },
	{ S("alice:" HY "\nalice:" HY "\n# x\nalice:" HY),
	  { "2:1: duplicate user \"alice\" (first on line 1)",
	    "4:1: duplicate user \"alice\" (first on line 1)" } },
	{ S("# users\n\nalice:secret\n"),
	  { "3:7: not a supported crypt(3) hash" } },
	{ S("alice:" HY "\nbob:$1$zZPti5Q0$QyGWYpmDs7ARwwtxxpRPC0\n"),
	  { "2:5: not a supported crypt(3) hash" } },
	{ S("bob:se7o5Uu8xE/hs\n"), { "1:5: not a supported" } },
	{ S("bob:!\n"), { "1:5: not a supported" } },
	{ S("bob:*\n"), { "1:5: not a supported" } },
	{ S("bob:!" HY "\n"), { "1:5: not a supported" } },
	{ S("carol:$6$abc\n"),
	  { "1:7: incomplete or malformed SHA-512-crypt hash" } },
	{ S("carol:$6$\n"),
	  { "1:7: incomplete or malformed SHA-512-crypt hash" } },
	{ S("carol:$y$j9T$\n"),
	  { "1:7: incomplete or malformed yescrypt hash" } },
	{ S("carol:$y$j9T$K2OcGxkonZFO7/OcFCnOw.\n"),
	  { "1:7: incomplete or malformed yescrypt hash" } },
	{ S("carol:" HY "x\n"),
	  { "1:7: incomplete or malformed yescrypt hash" } },
	{ S("carol:$6$a$b$" H6SUM "\n"),
	  { "1:7: incomplete or malformed SHA-512-crypt hash" } },
	{ S("carol:$6$" H6SUM "\n"),
	  { "1:7: incomplete or malformed SHA-512-crypt hash" } },
	{ S("carol:$2b$05$short\n"),
	  { "1:7: incomplete or malformed bcrypt hash" } },
	{ S("carol:$6$ab*c$" H6SUM "\n"),
	  { "1:7: malformed SHA-512-crypt hash (crypt(3) refuses it)" } },
	/* crypt_checksalt() takes these, crypt_rn() does not. */
	{ S("carol:$6$rounds=x$ab$" H6SUM "\n"),
	  { "1:7: crypt(3) cannot use this SHA-512-crypt hash" } },
	{ S("dave:$2b$99$DT3T2DZit74ZpBeo1ypnSOTD8/WV4YAHBt.5Uzc01HKi2NYDHk2Ci"
	    "\nerin:$2b$99$DT3T2DZit74ZpBeo1ypnSOTD8/WV4YAHBt.5Uzc01HKi2NYDHk"
	    "2Cj\nfrank:" HY "\n"),
	  { "1:6: crypt(3) cannot use this bcrypt hash",
	    "2:6: crypt(3) cannot use this bcrypt hash" } },
	/* White space, never trimmed. */
	{ S(" alice:" HY "\n"), { "1:1: line begins with white space" } },
	{ S("\t# comment\n"), { "1:1: line begins with white space" } },
	{ S("alice:" HY " \n"), { "1:80: line ends with white space" } },
	{ S("alice:" HY " \t \n"), { "1:80: line ends with white space" } },
	{ S("alice:" HY "\r\n"), { "1:80: line ends with CR" } },
	{ S("alice:" HY "\nbob:" HY "\r\n"), { "2:78: line ends with CR" } },
	{ S("\n   \n"), { "2:1: line of white space only" } },
	{ S("alice :" HY "\n"), { "1:6: user name \"alice \" holds a space" } },
	{ S("alice: " HY "\n"),
	  { "1:7: password hash holds a space or a control character" } },
	/* Fields. */
	{ S("alice\n"), { "1:1: expected \"user:hash\", found no ':'" } },
	{ S(":" HY "\n"), { "1:1: empty user name" } },
	{ S("alice:\n"), { "1:7: empty password hash" } },
	{ S("alice:" HY ":x\n"), { "1:80: a third field" } },
	{ S("al ice:" HY "\n"), { "1:3: user name \"al ice\" holds a space" } },
	{ S("a\0b:" HY "\n"), { "1:2: user name \"a\\x00b\" holds" } },
	{ S("a\x7f" "b:" HY "\n"), { "1:2: user name \"a\\x7fb\" holds" } },
	{ S("alice:$y$j9T$K2Oc\x01xkonZFO7/OcFCnOw.$DmQ9AHXJjFaFfvzkzY1Hxdj6."
	    "YopTgorUH5XiQlcEJB\n"), { "1:18: password hash holds a space" } },
	{ S(X255 "x:" HY "\n"), { "1:1: user name longer than 255 octets" } },
	{ S("\xef\xbb\xbf" "alice:" HY "\n"), { "1:1: byte order mark" } },
	/* Every problem of a file, in order. */
	{ S("alice:secret\nbob:" HY "\n bad\nbob:" HY "\nx y:$6$abc\n"
	    "carol:" HY "\nbob:" HY "\n"),
	  { "1:7: not a supported crypt(3) hash",
	    "3:1: line begins with white space",
	    "4:1: duplicate user \"bob\" (first on line 2)",
	    "5:2: user name \"x y\" holds a space",
	    "5:5: incomplete or malformed SHA-512-crypt hash",
	    "7:1: duplicate user \"bob\" (first on line 2)" } },
};

/*
 * Checks errors, the text auth_db_load() gave, against want: every line
 * must be "dbfile:" followed by the next prefix of want.  Returns 1 when
 * all match and there are no more lines than prefixes.
 */
static int
errors_match(const char *errors, const char *const *want, size_t nwant)
{
	const char	*line, *nl;
	size_t		 i, flen = strlen(dbfile);

	line = errors;
	for (i = 0; i < nwant && want[i] != NULL; i++) {
		if ((nl = strchr(line, '\n')) == NULL ||
		    strncmp(line, dbfile, flen) != 0 || line[flen] != ':' ||
		    strncmp(line + flen + 1, want[i], strlen(want[i])) != 0)
			return 0;
		line = nl + 1;
	}
	return *line == '\0';
}

static void
test_db_errors(void)
{
	const struct db_err_test	*t;
	struct auth_db			*db;
	char				*errors, path[PATH_MAX + 16];
	size_t				 i;

	for (i = 0; i < NELEM(db_err_tests); i++) {
		t = &db_err_tests[i];
		write_file(dbfile, t->text, t->len, 0600);
		errors = NULL;
		db = auth_db_load(dbfile, &errors);
		CHECKF(db == NULL && errors != NULL, "db err %zu: loaded", i);
		if (db != NULL) {
			auth_db_free(db);
			continue;
		}
		CHECKF(errors_match(errors, t->errs, NELEM(t->errs)),
		    "db err %zu: got:\n%s", i, errors);
		free(errors);
	}

	/* No file, and a directory. */
	snprintf(path, sizeof(path), "%s/none", tmpdir);
	db = auth_db_load(path, &errors);
	CHECK(db == NULL && errors != NULL &&
	    strncmp(errors, path, strlen(path)) == 0 &&
	    strcmp(errors + strlen(path),
	    ": cannot open: No such file or directory\n") == 0);
	free(errors);
	db = auth_db_load(tmpdir, &errors);
	CHECK(db == NULL && errors != NULL &&
	    strcmp(errors + strlen(tmpdir), ": not a regular file\n") == 0);
	free(errors);

	/* Control characters in the file name are shown as '?'. */
	snprintf(path, sizeof(path), "%s/no\nsuch\033[1m", tmpdir);
	db = auth_db_load(path, &errors);
	snprintf(path, sizeof(path), "%s/no?such?[1m", tmpdir);
	CHECKF(db == NULL && errors != NULL &&
	    strncmp(errors, path, strlen(path)) == 0 &&
	    strcmp(errors + strlen(path),
	    ": cannot open: No such file or directory\n") == 0, "%s", errors);
	free(errors);
}

/* A thread checking passwords against a shared db. */
struct verifier {
	pthread_t		 tid;		/* the thread */
	const struct auth_db	*db;		/* shared, read only */
	int			 wrong;		/* results not as expected */
};

/* Checks every case of verify_tests twice; counts wrong results. */
static void *
verifier_run(void *arg)
{
	struct verifier	*v = arg;
	size_t		 i;
	int		 round;

	for (round = 0; round < 2; round++)
		for (i = 0; i < NELEM(verify_tests); i++)
			v->wrong += auth_db_verify(v->db, verify_tests[i].user,
			    verify_tests[i].pass) != verify_tests[i].want;
	return NULL;
}

/* Four threads check passwords on one db at once. */
static void
test_db_threads(void)
{
	struct verifier	 v[4];
	struct auth_db	*db;
	char		*text = NULL, *hash;
	size_t		 i, size = 0;
	FILE		*f;

	if ((f = open_memstream(&text, &size)) == NULL)
		exit(2);
	for (i = 0; i < NELEM(creds); i++) {
		hash = make_hash(creds[i].prefix, creds[i].count,
		    creds[i].pass);
		fprintf(f, "%s:%s\n", creds[i].user, hash);
		free(hash);
	}
	if (fclose(f) != 0)
		exit(2);
	write_file(dbfile, text, size, 0600);
	free(text);
	if ((db = load_ok()) == NULL) {
		CHECKF(0, "thread test file refused");
		return;
	}
	for (i = 0; i < NELEM(v); i++) {
		v[i].db = db;
		v[i].wrong = 0;
		if (pthread_create(&v[i].tid, NULL, verifier_run, &v[i])) {
			perror("pthread_create");
			exit(2);
		}
	}
	for (i = 0; i < NELEM(v); i++) {
		pthread_join(v[i].tid, NULL);
		CHECKF(v[i].wrong == 0, "thread %zu: %d wrong", i, v[i].wrong);
	}
	auth_db_free(db);
}

int
main(void)
{
	guard_init();
	test_b64_decode();
	test_b64_encode();
	test_plain();
	test_login();

	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(dbfile, sizeof(dbfile), "%s/users", tmpdir);
	test_db_valid();
	test_db_errors();
	test_db_threads();
	unlink(dbfile);
	rmdir(tmpdir);
	TEST_DONE();
}
