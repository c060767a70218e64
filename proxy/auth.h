/*
 * auth.h: what SMTP AUTH (RFC 4954) needs, without the session: a
 * credentials file checked with crypt(3), strict base64 (RFC 4648) and the
 * client messages of the PLAIN (RFC 4616) and LOGIN mechanisms.
 *
 * The decoders are pure: (buf, len) in, a result out, nothing allocated,
 * nothing read past buf[len - 1].  Only auth_db_load() allocates, and only
 * auth_db_verify() is slow.
 *
 * What the session does with these (not done here):
 *
 *  - "AUTH PLAIN" with an initial response, or the client's answer to an
 *    empty "334 " challenge, is base64: decode it with auth_b64_decode(),
 *    then auth_plain_parse().  An initial response of "=" stands for an
 *    empty one (RFC 4954 4) and must be handled before decoding: for PLAIN
 *    an empty message is a syntax error.  An answer of "*" cancels the
 *    exchange (501 5.7.0, RFC 4954 4).
 *  - "AUTH LOGIN" sends "334 " AUTH_LOGIN_PROMPT_USER and then
 *    "334 " AUTH_LOGIN_PROMPT_PASS; each answer is decoded and checked
 *    with auth_login_field().  LOGIN has no RFC; this is what Postfix and
 *    Outlook do.  An initial response to AUTH LOGIN, when given, is the
 *    user name.
 *  - An AUTH line may be longer than the 512 octets of other commands: RFC
 *    4954 4 allows 12288.  A PLAIN message of three 255-octet fields takes
 *    AUTH_B64_ENCODED_LEN(AUTH_PLAIN_MAX) = 1024 base64 characters.
 *  - auth_db_verify() takes milliseconds (yescrypt) and must run in libuv's
 *    thread pool (uv_queue_work), never on the loop thread.
 *  - Passwords are copied into the caller's structs; wipe them with
 *    explicit_bzero() once verified.
 */
#ifndef SMTPGATE_AUTH_H
#define SMTPGATE_AUTH_H

#include <stddef.h>

/* Longest user name and password, in octets (RFC 4616 sets 255 as what a
 * server must at least accept; we accept no more). */
#define AUTH_FIELD_MAX		255

/* Longest PLAIN message: authzid NUL authcid NUL passwd, each at most
 * AUTH_FIELD_MAX octets. */
#define AUTH_PLAIN_MAX		(3 * AUTH_FIELD_MAX + 2)

/* Octets decoded from n base64 characters, at most; characters that n
 * octets encode to. */
#define AUTH_B64_DECODED_MAX(n)	((n) / 4 * 3)
#define AUTH_B64_ENCODED_LEN(n)	(((n) + 2) / 3 * 4)

/* The two challenges of AUTH LOGIN: base64 of "Username:" and "Password:". */
#define AUTH_LOGIN_PROMPT_USER	"VXNlcm5hbWU6"
#define AUTH_LOGIN_PROMPT_PASS	"UGFzc3dvcmQ6"

/*
 * Results of the decoders: 0 or one of these.  The comment says which
 * reply the session is expected to give.
 */
enum auth_err {
	AUTH_OK = 0,
	AUTH_E_BASE64 = -1,	/* not strict base64 (501 5.5.2) */
	AUTH_E_NOSPACE = -2,	/* decoded text larger than the output
				 * buffer (501 5.5.2: the caller sizes it
				 * for the longest valid message) */
	AUTH_E_SYNTAX = -3,	/* PLAIN without exactly two NULs; a LOGIN
				 * field holding a NUL (501 5.5.2) */
	AUTH_E_EMPTY = -4,	/* empty user name or password (535 5.7.8) */
	AUTH_E_TOOLONG = -5,	/* a field over AUTH_FIELD_MAX octets
				 * (535 5.7.8) */
	AUTH_E_AUTHZID = -6	/* PLAIN authzid given and different from
				 * the authcid: we do not act on behalf of
				 * others (535 5.7.8) */
};

/* A short English text for an auth_err ("bad base64"), for logs. */
const char *auth_strerror(int err);

/* ---- Base64 (RFC 4648 4) ------------------------------------------------ */

/*
 * Decodes in[0..inlen) strictly: only the RFC 4648 4 alphabet, no white
 * space or line breaks, a length that is a multiple of 4, '=' padding only
 * at the end and only as much as needed, and the bits that padding leaves
 * unused set to zero (the canonical encoding, RFC 4648 3.5).  Empty input
 * decodes to nothing.
 *
 * Returns AUTH_OK and sets *outlen; AUTH_E_BASE64 for bad input and
 * AUTH_E_NOSPACE when the result does not fit in outsize octets (both
 * checked before anything is written).  On error *outlen is 0 and out is
 * left as it was.  AUTH_B64_DECODED_MAX(inlen) octets are always enough.
 */
int auth_b64_decode(const char *in, size_t inlen, unsigned char *out,
    size_t outsize, size_t *outlen);

/*
 * Encodes in[0..inlen) as base64 with padding.  Returns the length of the
 * encoding (AUTH_B64_ENCODED_LEN(inlen)), NUL not counted.  Writes it and
 * a NUL only when outsize is larger than that; otherwise writes nothing
 * but an empty string (when outsize > 0), and the caller, seeing a result
 * >= outsize, treats it as an error.
 */
size_t auth_b64_encode(const unsigned char *in, size_t inlen, char *out,
    size_t outsize);

/* ---- PLAIN (RFC 4616) and LOGIN messages -------------------------------- */

/*
 * A decoded PLAIN message.  The fields are copies, so the struct can be
 * handed to a thread-pool job while the session reuses its input buffer.
 */
struct auth_plain {
	char	authcid[AUTH_FIELD_MAX + 1];	/* user name, NUL-terminated,
						 * holds no NUL */
	size_t	authcidlen;			/* its length, 1 to 255 */
	char	passwd[AUTH_FIELD_MAX + 1];	/* password, NUL-terminated,
						 * holds no NUL; wipe it with
						 * explicit_bzero() after use */
	size_t	passwdlen;			/* its length, 1 to 255 */
	int	authzid;			/* 1 when the client named an
						 * authzid (then equal to
						 * authcid), else 0 */
};

/*
 * Parses a decoded PLAIN message msg[0..len): authzid NUL authcid NUL
 * passwd (RFC 4616 2).  The checks come in this order: exactly two NULs
 * (AUTH_E_SYNTAX), every field at most AUTH_FIELD_MAX octets
 * (AUTH_E_TOOLONG), authcid and passwd not empty (AUTH_E_EMPTY), authzid
 * empty or equal to authcid, octet for octet (AUTH_E_AUTHZID).  The
 * contents are not checked further: no SASLprep, user names are compared
 * as octets by auth_db_verify().
 *
 * Returns AUTH_OK and fills *out.  On error *out is all zeros, so no part
 * of a password is left in it.
 */
int auth_plain_parse(const unsigned char *msg, size_t len,
    struct auth_plain *out);

/*
 * Checks one decoded answer of AUTH LOGIN (the user name or the password)
 * in msg[0..len) and copies it to out as a C string.  Returns AUTH_OK,
 * AUTH_E_EMPTY, AUTH_E_TOOLONG, or AUTH_E_SYNTAX when it holds a NUL (it
 * could not be passed on as a C string).  On error out is all zeros.
 */
int auth_login_field(const unsigned char *msg, size_t len,
    char out[AUTH_FIELD_MAX + 1]);

/* ---- Credentials file --------------------------------------------------- */

/*
 * The credentials file, one "user:hash" per line:
 *
 *	# comment
 *	alice:$y$j9T$...$...
 *	bob:$6$rounds=100000$...$...
 *
 *  - A line is empty, a comment ('#' in column 1), or an entry.  Lines end
 *    in LF; the last one may lack it.
 *  - White space is never trimmed: a line that begins or ends with a space,
 *    a tab or a CR (DOS line ends) is an error, and so is a line of white
 *    space only.  Trimming would let "bob :x" and "bob:x " mean something
 *    other than what they show.
 *  - A user name is 1 to 255 octets of printable ASCII other than ':' and
 *    octets >= 0x80 (UTF-8 is kept as it is); no space, tab or control
 *    character.  It cannot begin with '#'.  Names match exactly, octet for
 *    octet, case included: "Alice" and "alice" are two users, as with
 *    Postfix's Cyrus and Dovecot SASL by default.
 *  - A hash is a complete crypt(3) string of one of these kinds:
 *    yescrypt "$y$", gost-yescrypt "$gy$", scrypt "$7$", bcrypt "$2b$"
 *    and "$2y$", SHA-512-crypt "$6$", SHA-256-crypt "$5$".  Anything else
 *    (plain text, DES, MD5-crypt "$1$", "!" or "*" to lock an account) is
 *    an error: delete the line to lock a user out.  Each hash is checked
 *    at load with crypt_checksalt() and by the length of each part, and
 *    crypt(3) is run once for each kind and cost found, which catches
 *    costs it refuses ("$2b$99$").  bcrypt looks at no more than the
 *    first 72 octets of a password.
 *  - A user given twice is an error.
 *  - Columns in errors count octets from 1.
 */
struct auth_db;

/*
 * Loads the credentials file at path.  On success returns the db and sets
 * *errors to NULL; the caller frees the db with auth_db_free().  A file
 * without entries gives an empty db, against which every check fails.  On
 * failure returns NULL and sets *errors to a malloc'd text that the caller
 * frees, with one "FILE:LINE:COL: message\n" line per problem (all of
 * them, in file order), or a single "FILE: message\n" when the file
 * cannot be read.  Messages never quote a hash, and control characters
 * (in FILE too) are shown as '?'.
 *
 * As it runs crypt(3) once per kind and cost in the file, this takes as
 * long as a login or a few: not for the loop thread either.  The db never
 * changes after this returns, so any number of threads may call
 * auth_db_verify() on it at once.  To reload (SIGHUP), load a new one and
 * free the old one once no job uses it.
 */
struct auth_db *auth_db_load(const char *path, char **errors);

/* Frees db and wipes the hashes it held.  NULL is allowed. */
void auth_db_free(struct auth_db *db);

/* Number of users in db. */
size_t auth_db_count(const struct auth_db *db);

/*
 * Returns 1 when the file was readable by others (mode & S_IROTH) when it
 * was loaded: worth a warning, as anyone on the host can then try to crack
 * the hashes offline; not an error.
 */
int auth_db_world_readable(const struct auth_db *db);

/*
 * Checks the password pass of user (both C strings) against db.  Returns 1
 * when they match, 0 when they do not or the user is unknown, -1 when
 * crypt(3) failed (out of memory); errno is then set.
 *
 * SLOW: this runs the user's hash function, which takes milliseconds
 * (yescrypt) or more.  Call it from the thread pool (uv_queue_work), not
 * from the loop thread.  It is thread-safe (crypt_rn() with a private,
 * heap-allocated struct crypt_data, wiped before it is freed).
 *
 * An unknown user costs what a known one does: the password is run
 * through the hash of a real user of the most common kind and cost in the
 * file, and the result thrown away, so timing does not tell which users
 * exist.  With several kinds or costs in one file, the time still tells
 * which kind a known user has; use one kind.  The result is compared with
 * the stored hash in constant time.
 */
int auth_db_verify(const struct auth_db *db, const char *user,
    const char *pass);

#endif /* SMTPGATE_AUTH_H */
