/*
 * auth.c: credentials file, strict base64, PLAIN and LOGIN messages (see
 * auth.h for the contracts and the file format).
 *
 * The db is one malloc'd copy of the file, with each user name and hash
 * NUL-terminated in place, and an array of entries sorted by user name
 * that point into it.  Nothing in it changes after auth_db_load() returns.
 */
#include <sys/types.h>
#include <sys/stat.h>

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "log.h"
#include "yamlutil.h"

/* Largest credentials file read, in octets. */
#define AUTH_FILE_MAX	(16 * 1024 * 1024)

/* Longest user name quoted in an error message, in octets. */
#define QUOTE_MAX	64

/* How the part of a hash that sets its cost is found (see kind_key()). */
enum key_rule {
	KEY_BEFORE_SALT,	/* up to the '$' before the salt field, which
				 * is the next to last: "$y$j9T$", "$6$",
				 * "$6$rounds=N$" */
	KEY_BEFORE_LAST,	/* up to the last '$'; salt and hash share
				 * the last field: "$2b$12$" */
	KEY_SCRYPT		/* "$7$" and 11 characters of N, r and p */
};

/* A kind of hash the file may hold. */
struct hash_kind {
	const char	*prefix;	/* "$y$" */
	const char	*name;		/* "yescrypt", for messages */
	unsigned	 dollars_min;	/* '$' characters in a whole hash */
	unsigned	 dollars_max;
	size_t		 lastlen;	/* length of the field after the last
					 * '$' */
	enum key_rule	 key;		/* where its cost parameters end */
};

static const struct hash_kind kinds[] = {
	{ "$y$",  "yescrypt",      4, 4, 43, KEY_BEFORE_SALT },
	{ "$gy$", "gost-yescrypt", 4, 4, 43, KEY_BEFORE_SALT },
	{ "$7$",  "scrypt",        3, 3, 43, KEY_SCRYPT },
	{ "$2b$", "bcrypt",        3, 3, 53, KEY_BEFORE_LAST },
	{ "$2y$", "bcrypt",        3, 3, 53, KEY_BEFORE_LAST },
	{ "$6$",  "SHA-512-crypt", 3, 4, 86, KEY_BEFORE_SALT },
	{ "$5$",  "SHA-256-crypt", 3, 4, 43, KEY_BEFORE_SALT },
};

/*
 * What an unknown user is checked against when the file has no users: a
 * yescrypt setting at the default cost.  crypt_rn() costs the same with a
 * setting as with a whole hash.
 */
static const char dummy_setting[] = "$y$j9T$iVQ1wPaWa5wLxHWZ6AbWd.";

/* One user of the file. */
struct auth_user {
	const char	*name;		/* user name, NUL-terminated, in
					 * db->text */
	size_t		 namelen;	/* its length */
	const char	*hash;		/* crypt(3) hash, NUL-terminated, in
					 * db->text */
	size_t		 hashlen;	/* its length */
	const struct hash_kind *kind;	/* the hash's kind */
	size_t		 keylen;	/* length of hash's prefix that holds
					 * kind and cost (kind_key()) */
	size_t		 line;		/* line it is on, 1-based */
};

struct auth_db {
	char			*text;		/* the file, NUL-terminated;
						 * names and hashes point in */
	size_t			 textlen;	/* its length without the NUL */
	struct auth_user	*users;		/* sorted by name (memcmp, then
						 * length) */
	size_t			 nusers;	/* entries in users */
	const char		*dummy;		/* hash run for unknown users:
						 * one user's, or
						 * dummy_setting */
	int			 world_readable; /* file mode had S_IROTH */
};

/* One problem found while loading, kept until all are sorted. */
struct load_err {
	size_t		 line;		/* 1-based; 0: the whole file */
	size_t		 col;		/* 1-based octet column */
	size_t		 seq;		/* order found, for a stable sort */
	char		*msg;		/* text after the position, malloc'd */
};

/* State of one auth_db_load(). */
struct load_ctx {
	const char	*path;		/* the file, for messages */
	struct load_err	*errs;		/* problems found so far */
	size_t		 nerrs;		/* entries used in errs */
	size_t		 errcap;	/* entries allocated in errs */
	struct auth_user *users;	/* entries parsed so far, file order */
	size_t		 nusers;	/* entries used in users */
	size_t		 usercap;	/* entries allocated in users */
};

/* ---- Small helpers ------------------------------------------------------ */

static void
oom(void)
{
	fatalx("auth: out of memory");
}

/* Makes room for entry n of the array v of *cap entries of size octets. */
static void *
grow(void *v, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return v;
	*cap = *cap ? *cap * 2 : 16;
	if ((v = reallocarray(v, *cap, size)) == NULL)
		oom();
	return v;
}

/* Records a problem at line:col (line 0: the whole file). */
static void __attribute__((format(printf, 4, 5)))
load_error(struct load_ctx *c, size_t line, size_t col, const char *fmt, ...)
{
	struct load_err	*e;
	va_list		 ap;

	c->errs = grow(c->errs, &c->errcap, c->nerrs, sizeof(*c->errs));
	e = &c->errs[c->nerrs];
	e->line = line;
	e->col = col;
	e->seq = c->nerrs++;
	va_start(ap, fmt);
	if (vasprintf(&e->msg, fmt, ap) < 0)
		oom();
	va_end(ap);
}

/* qsort() order of errors: line, column, then order found. */
static int
load_errcmp(const void *a, const void *b)
{
	const struct load_err	*x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * Returns every error as one malloc'd text, "FILE:LINE:COL: message\n"
 * each, in file order, and frees them.
 */
static char *
load_errtext(struct load_ctx *c)
{
	struct load_err	*e;
	char		*text = NULL;
	size_t		 i, size = 0;
	FILE		*f;

	qsort(c->errs, c->nerrs, sizeof(*c->errs), load_errcmp);
	if ((f = open_memstream(&text, &size)) == NULL)
		oom();
	for (i = 0; i < c->nerrs; i++) {
		e = &c->errs[i];
		yu_putclean(f, c->path);
		if (e->line)
			fprintf(f, ":%zu:%zu", e->line, e->col);
		fputs(": ", f);
		yu_putclean(f, e->msg);
		putc('\n', f);
		free(e->msg);
	}
	if (fclose(f) != 0 || text == NULL)
		oom();
	free(c->errs);
	c->errs = NULL;
	c->nerrs = c->errcap = 0;
	return text;
}

/*
 * Writes s[0..len) to buf as a quoted string for a message, with octets
 * outside printable ASCII as \xNN and '"' and '\' escaped, cut after
 * QUOTE_MAX octets with "...".  Returns buf.
 */
static const char *
quote(const char *s, size_t len, char *buf, size_t size)
{
	static const char	 hex[] = "0123456789abcdef";
	size_t			 i, o = 0;
	unsigned char		 ch;

	/* Room for '"', QUOTE_MAX octets as \xNN, "...", '"' and NUL. */
	if (size < 4 * QUOTE_MAX + 6)
		fatalx("quote: buffer of %zu octets", size);
	buf[o++] = '"';
	for (i = 0; i < len && i < QUOTE_MAX; i++) {
		ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)ch;
		} else if (ch >= 0x20 && ch < 0x7f)
			buf[o++] = (char)ch;
		else {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[ch >> 4];
			buf[o++] = hex[ch & 0xf];
		}
	}
	if (len > QUOTE_MAX) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static int
is_white(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Octets allowed in a user name: printable ASCII but ':', and >= 0x80. */
static int
is_namechar(int c)
{
	return (c > 0x20 && c < 0x7f && c != ':') || c >= 0x80;
}

/* Compares two users by name: memcmp order, a prefix first. */
static int
usercmp_name(const char *a, size_t alen, const char *b, size_t blen)
{
	int	r;

	r = memcmp(a, b, alen < blen ? alen : blen);
	if (r != 0)
		return r;
	return alen < blen ? -1 : alen > blen;
}

/* qsort() order of users: by name, then line. */
static int
usercmp(const void *a, const void *b)
{
	const struct auth_user	*x = a, *y = b;
	int			 r;

	if ((r = usercmp_name(x->name, x->namelen, y->name, y->namelen)))
		return r;
	return x->line < y->line ? -1 : x->line > y->line;
}

/* qsort() order of pointers to users: by cost key, then line. */
static int
usercmp_key(const void *a, const void *b)
{
	const struct auth_user	*x = *(const struct auth_user *const *)a;
	const struct auth_user	*y = *(const struct auth_user *const *)b;
	int			 r;

	if ((r = usercmp_name(x->hash, x->keylen, y->hash, y->keylen)))
		return r;
	return x->line < y->line ? -1 : x->line > y->line;
}

/* ---- Hashes ------------------------------------------------------------- */

/*
 * Returns the length of the prefix of hash h (of kind k, already checked)
 * that names its kind and cost, without the salt: two users with the same
 * prefix cost the same to check.
 */
static size_t
kind_key(const struct hash_kind *k, const char *h, size_t len)
{
	const char	*last, *p;

	switch (k->key) {
	case KEY_SCRYPT:
		return strlen(k->prefix) + 11;
	case KEY_BEFORE_LAST:
		return (size_t)((const char *)memrchr(h, '$', len) - h) + 1;
	case KEY_BEFORE_SALT:
		last = memrchr(h, '$', len);
		p = memrchr(h, '$', (size_t)(last - h));
		return (size_t)(p - h) + 1;
	}
	fatalx("kind_key: rule %d", (int)k->key);
}

/*
 * Checks that h[0..len) is a whole hash that crypt(3) can use and that we
 * accept.  Returns NULL and sets *kind and *keylen (see kind_key()), or
 * why not: a constant or why, a buffer of whysize octets.  h is
 * NUL-terminated and holds printable ASCII only.
 */
static const char *
hash_check(const char *h, size_t len, const struct hash_kind **kind,
    size_t *keylen, char *why, size_t whysize)
{
	const struct hash_kind		*k = NULL;
	const char			*last;
	size_t				 i, plen;
	unsigned			 dollars = 0;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		plen = strlen(kinds[i].prefix);
		if (len >= plen && memcmp(h, kinds[i].prefix, plen) == 0) {
			k = &kinds[i];
			break;
		}
	}
	if (k == NULL)
		return "not a supported crypt(3) hash: use yescrypt ($y$), "
		    "gost-yescrypt ($gy$), scrypt ($7$), bcrypt ($2b$, $2y$), "
		    "SHA-512-crypt ($6$) or SHA-256-crypt ($5$)";
	if (len >= CRYPT_OUTPUT_SIZE)
		return "password hash too long";
	for (i = 0; i < len; i++)
		dollars += h[i] == '$';
	last = memrchr(h, '$', len);
	plen = strlen(k->prefix);
	/*
	 * A missing salt or hash field, or a hash of the wrong length,
	 * would never match: crypt_rn() would take it all for a setting.
	 * Only "rounds=N" may add a field to SHA-crypt.
	 */
	if (dollars < k->dollars_min || dollars > k->dollars_max ||
	    len - (size_t)(last - h) - 1 != k->lastlen ||
	    (dollars > k->dollars_min && strncmp(h + plen, "rounds=", 7)) ||
	    (k->key == KEY_SCRYPT && (size_t)(last - h) < plen + 11)) {
		snprintf(why, whysize, "incomplete or malformed %s hash",
		    k->name);
		return why;
	}
	/* $5$ is "legacy" to libxcrypt, yet still works. */
	switch (crypt_checksalt(h)) {
	case CRYPT_SALT_OK:
	case CRYPT_SALT_METHOD_LEGACY:
		break;
	case CRYPT_SALT_METHOD_DISABLED:
		snprintf(why, whysize, "%s is disabled in this libcrypt",
		    k->name);
		return why;
	default:
		snprintf(why, whysize, "malformed %s hash (crypt(3) "
		    "refuses it)", k->name);
		return why;
	}
	*kind = k;
	*keylen = kind_key(k, h, len);
	return NULL;
}

/* ---- Loading ------------------------------------------------------------ */

/*
 * Reads the file at path into a malloc'd, NUL-terminated buffer.  Returns
 * it and sets *len and *mode, or NULL after recording why.
 */
static char *
load_read(struct load_ctx *c, size_t *len, mode_t *mode)
{
	struct stat	 st;
	char		*buf = NULL;
	size_t		 n = 0, cap;
	ssize_t		 r;
	int		 fd;

	/* O_NONBLOCK: a FIFO must not hang the open; it is refused below. */
	if ((fd = open(c->path, O_RDONLY | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK)) == -1) {
		load_error(c, 0, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) == -1) {
		load_error(c, 0, 0, "cannot stat: %s", strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		load_error(c, 0, 0, "not a regular file");
		goto fail;
	}
	if (st.st_size > AUTH_FILE_MAX)
		goto toolarge;
	*mode = st.st_mode;
	/* Room for the NUL and one octet more, to see the end at once. */
	cap = (size_t)st.st_size + 2;
	if ((buf = malloc(cap)) == NULL)
		oom();
	for (;;) {
		if (n + 1 == cap) {
			/* The file grew since fstat(). */
			cap *= 2;
			if ((buf = realloc(buf, cap)) == NULL)
				oom();
		}
		r = read(fd, buf + n, cap - 1 - n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			load_error(c, 0, 0, "cannot read: %s",
			    strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > AUTH_FILE_MAX)
			goto toolarge;
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
toolarge:
	load_error(c, 0, 0, "larger than %d octets", AUTH_FILE_MAX);
fail:
	free(buf);
	close(fd);
	return NULL;
}

/*
 * Parses one line s[0..len), number lineno, into c->users, or records
 * what is wrong with it.  s[len] is the line's LF or the file's NUL; both
 * it and the ':' are overwritten with NULs.
 */
static void
load_line(struct load_ctx *c, char *s, size_t len, size_t lineno)
{
	struct auth_user	*u;
	const struct hash_kind	*kind = NULL;
	const char		*why;
	char			*colon, *hash, q[4 * QUOTE_MAX + 8];
	char			 whybuf[128];
	size_t			 i, namelen, hashlen, keylen = 0;
	int			 bad = 0;

	if (len == 0 || s[0] == '#')
		return;
	if (lineno == 1 && len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
		load_error(c, lineno, 1, "byte order mark at the start of "
		    "the file");
		return;
	}
	for (i = 0; i < len && is_white((unsigned char)s[i]); i++)
		;
	if (i == len) {
		load_error(c, lineno, 1, "line of white space only");
		return;
	}
	if (i > 0) {
		load_error(c, lineno, 1, "line begins with white space "
		    "(comments start in column 1)");
		return;
	}
	if (is_white((unsigned char)s[len - 1])) {
		for (i = len; i > 0 && is_white((unsigned char)s[i - 1]); i--)
			;
		load_error(c, lineno, i + 1, s[len - 1] == '\r' ?
		    "line ends with CR (DOS line ends?)" :
		    "line ends with white space");
		return;
	}
	if ((colon = memchr(s, ':', len)) == NULL) {
		load_error(c, lineno, 1, "expected \"user:hash\", found no "
		    "':'");
		return;
	}
	namelen = (size_t)(colon - s);
	hash = colon + 1;
	hashlen = len - namelen - 1;

	if (namelen == 0) {
		load_error(c, lineno, 1, "empty user name");
		bad = 1;
	} else if (namelen > AUTH_FIELD_MAX) {
		load_error(c, lineno, 1, "user name longer than %d octets",
		    AUTH_FIELD_MAX);
		bad = 1;
	} else {
		for (i = 0; i < namelen; i++)
			if (!is_namechar((unsigned char)s[i]))
				break;
		if (i < namelen) {
			load_error(c, lineno, i + 1, "user name %s holds a "
			    "space or a control character",
			    quote(s, namelen, q, sizeof(q)));
			bad = 1;
		}
	}

	for (i = 0; i < hashlen; i++)
		if ((unsigned char)hash[i] <= 0x20 ||
		    (unsigned char)hash[i] >= 0x7f || hash[i] == ':')
			break;
	if (hashlen == 0) {
		load_error(c, lineno, namelen + 2, "empty password hash");
		return;
	}
	if (i < hashlen) {
		load_error(c, lineno, namelen + 2 + i, hash[i] == ':' ?
		    "a third field: expected \"user:hash\"" :
		    "password hash holds a space or a control character");
		return;
	}
	/* hash_check() wants a C string. */
	hash[hashlen] = '\0';
	if ((why = hash_check(hash, hashlen, &kind, &keylen, whybuf,
	    sizeof(whybuf))) != NULL) {
		load_error(c, lineno, namelen + 2, "%s", why);
		return;
	}
	if (bad)
		return;

	*colon = '\0';
	c->users = grow(c->users, &c->usercap, c->nusers, sizeof(*c->users));
	u = &c->users[c->nusers++];
	u->name = s;
	u->namelen = namelen;
	u->hash = hash;
	u->hashlen = hashlen;
	u->kind = kind;
	u->keylen = keylen;
	u->line = lineno;
}

/*
 * Runs crypt(3) with an empty password on the hash of user u, to find what
 * crypt_checksalt() does not look at, such as "rounds=x" or a bcrypt cost
 * of 99.  Returns 1 when crypt_rn() takes it and gives back a hash of the
 * same shape (same length, same setting), else 0.
 */
static int
hash_try(const struct auth_user *u)
{
	struct crypt_data	*cd;
	const char		*out, *last;
	int			 ok;

	if ((cd = calloc(1, sizeof(*cd))) == NULL)
		oom();
	last = memrchr(u->hash, '$', u->hashlen);
	out = crypt_rn("", u->hash, cd, sizeof(*cd));
	ok = out != NULL && strlen(out) == u->hashlen &&
	    memcmp(out, u->hash, (size_t)(last - u->hash)) == 0;
	free(cd);
	return ok;
}

/*
 * Sorts the users by kind and cost (kind_key()), checks one hash of each
 * kind and cost with hash_try() and records an error for each user of a
 * kind and cost that fails.  Returns the hash that unknown users are to be
 * checked against: the first user's (in the file) among those whose kind
 * and cost are the most common.
 */
static const char *
load_costs(struct load_ctx *c)
{
	struct auth_user	**v, *best;
	size_t			  i, j, run, bestrun = 0;

	if (c->nusers == 0)
		return dummy_setting;
	if ((v = calloc(c->nusers, sizeof(*v))) == NULL)
		oom();
	for (i = 0; i < c->nusers; i++)
		v[i] = &c->users[i];
	qsort(v, c->nusers, sizeof(*v), usercmp_key);
	best = v[0];
	/* Each group of one kind and cost is v[i..i + run), by line. */
	for (i = 0; i < c->nusers; i += run) {
		for (run = 1; i + run < c->nusers; run++)
			if (usercmp_name(v[i]->hash, v[i]->keylen,
			    v[i + run]->hash, v[i + run]->keylen) != 0)
				break;
		if (!hash_try(v[i])) {
			for (j = i; j < i + run; j++)
				load_error(c, v[j]->line, v[j]->namelen + 2,
				    "crypt(3) cannot use this %s hash (bad "
				    "cost?)", v[j]->kind->name);
			continue;
		}
		/* Ties go to the group that comes first in the file. */
		if (run > bestrun || (run == bestrun &&
		    v[i]->line < best->line)) {
			best = v[i];
			bestrun = run;
		}
	}
	free(v);
	return best->hash;
}

struct auth_db *
auth_db_load(const char *path, char **errors)
{
	struct load_ctx	 c;
	struct auth_db	*db;
	const char	*dummy;
	char		*text, *p, *end, *nl, q[4 * QUOTE_MAX + 8];
	size_t		 len, lineno, i, first;
	mode_t		 mode = 0;

	memset(&c, 0, sizeof(c));
	c.path = path;
	if ((text = load_read(&c, &len, &mode)) == NULL) {
		*errors = load_errtext(&c);
		return NULL;
	}

	for (p = text, end = text + len, lineno = 1; p < end; lineno++) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		load_line(&c, p, (size_t)(nl - p), lineno);
		*nl = '\0';
		p = nl + 1;
	}

	if (c.nusers > 1)
		qsort(c.users, c.nusers, sizeof(*c.users), usercmp);
	for (i = 1, first = 0; i < c.nusers; i++) {
		if (usercmp_name(c.users[i].name, c.users[i].namelen,
		    c.users[first].name, c.users[first].namelen) != 0) {
			first = i;
			continue;
		}
		load_error(&c, c.users[i].line, 1, "duplicate user %s (first "
		    "on line %zu)", quote(c.users[i].name, c.users[i].namelen,
		    q, sizeof(q)), c.users[first].line);
	}

	dummy = load_costs(&c);

	if (c.nerrs) {
		*errors = load_errtext(&c);
		explicit_bzero(text, len);
		free(text);
		free(c.users);
		return NULL;
	}
	if ((db = calloc(1, sizeof(*db))) == NULL)
		oom();
	db->text = text;
	db->textlen = len;
	db->users = c.users;
	db->nusers = c.nusers;
	db->dummy = dummy;
	db->world_readable = (mode & S_IROTH) != 0;
	*errors = NULL;
	return db;
}

void
auth_db_free(struct auth_db *db)
{
	if (db == NULL)
		return;
	explicit_bzero(db->text, db->textlen);
	free(db->text);
	free(db->users);
	free(db);
}

size_t
auth_db_count(const struct auth_db *db)
{
	return db->nusers;
}

int
auth_db_world_readable(const struct auth_db *db)
{
	return db->world_readable;
}

/* ---- Checking a password ------------------------------------------------ */

/* Returns the user named name[0..len) in db, or NULL. */
static const struct auth_user *
db_find(const struct auth_db *db, const char *name, size_t len)
{
	size_t	lo = 0, hi = db->nusers, mid;
	int	r;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		r = usercmp_name(name, len, db->users[mid].name,
		    db->users[mid].namelen);
		if (r == 0)
			return &db->users[mid];
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * Returns 1 when a[0..len) equals b[0..len), taking the same time whatever
 * the contents.
 */
static int
ct_equal(const char *a, const char *b, size_t len)
{
	const volatile unsigned char	*x = (const unsigned char *)a;
	const volatile unsigned char	*y = (const unsigned char *)b;
	unsigned char			 d = 0;
	size_t				 i;

	for (i = 0; i < len; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

int
auth_db_verify(const struct auth_db *db, const char *user, const char *pass)
{
	const struct auth_user	*u;
	struct crypt_data	*cd;
	const char		*hash, *out;
	size_t			 userlen, hashlen, outlen;
	int			 match, saved;

	userlen = strnlen(user, AUTH_FIELD_MAX + 1);
	u = userlen <= AUTH_FIELD_MAX ? db_find(db, user, userlen) : NULL;
	hash = u != NULL ? u->hash : db->dummy;
	hashlen = strlen(hash);

	/* 32 KiB: on the heap, as thread-pool stacks may be small. */
	if ((cd = calloc(1, sizeof(*cd))) == NULL)
		return -1;
	if ((out = crypt_rn(pass, hash, cd, sizeof(*cd))) == NULL) {
		saved = errno;
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
		errno = saved;
		return -1;
	}
	/* The length is no secret: it follows from the kind. */
	outlen = strlen(out);
	match = outlen == hashlen && ct_equal(out, hash, hashlen);
	/* It holds the password. */
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return u != NULL ? match : 0;
}

/* ---- Base64 ------------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Returns the value of base64 character c, or -1 (also for '='). */
static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int
auth_b64_decode(const char *in, size_t inlen, unsigned char *out,
    size_t outsize, size_t *outlen)
{
	const unsigned char	*s = (const unsigned char *)in;
	size_t			 i, pad = 0, n;
	int			 v[4], j;
	unsigned long		 q;

	*outlen = 0;
	if (inlen % 4 != 0)
		return AUTH_E_BASE64;
	if (inlen > 0 && s[inlen - 1] == '=')
		pad = inlen > 1 && s[inlen - 2] == '=' ? 2 : 1;

	/* Validate it all first: nothing is written on error. */
	for (i = 0; i < inlen - pad; i++)
		if (b64_value(s[i]) < 0)
			return AUTH_E_BASE64;
	if (pad > 0) {
		/* The bits after the last octet must be zero (RFC 4648
		 * 3.5): 4 of the character before "==", 2 before "=". */
		j = b64_value(s[inlen - pad - 1]);
		if ((pad == 2 && (j & 0x0f)) || (pad == 1 && (j & 0x03)))
			return AUTH_E_BASE64;
	}
	n = inlen / 4 * 3 - pad;
	if (n > outsize)
		return AUTH_E_NOSPACE;

	for (i = 0, n = 0; i < inlen; i += 4) {
		for (j = 0; j < 4; j++)
			v[j] = s[i + j] == '=' ? 0 : b64_value(s[i + j]);
		q = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 |
		    (unsigned long)v[2] << 6 | (unsigned long)v[3];
		out[n++] = (unsigned char)(q >> 16);
		if (i + 4 < inlen || pad < 2)
			out[n++] = (unsigned char)(q >> 8);
		if (i + 4 < inlen || pad < 1)
			out[n++] = (unsigned char)q;
	}
	*outlen = n;
	return AUTH_OK;
}

size_t
auth_b64_encode(const unsigned char *in, size_t inlen, char *out,
    size_t outsize)
{
	size_t		 i, n = 0, need = AUTH_B64_ENCODED_LEN(inlen);
	unsigned long	 q;

	if (outsize <= need) {
		if (outsize > 0)
			out[0] = '\0';
		return need;
	}
	for (i = 0; i + 2 < inlen; i += 3) {
		q = (unsigned long)in[i] << 16 | (unsigned long)in[i + 1] << 8 |
		    in[i + 2];
		out[n++] = b64_alphabet[q >> 18 & 63];
		out[n++] = b64_alphabet[q >> 12 & 63];
		out[n++] = b64_alphabet[q >> 6 & 63];
		out[n++] = b64_alphabet[q & 63];
	}
	if (i < inlen) {
		q = (unsigned long)in[i] << 16;
		if (i + 1 < inlen)
			q |= (unsigned long)in[i + 1] << 8;
		out[n++] = b64_alphabet[q >> 18 & 63];
		out[n++] = b64_alphabet[q >> 12 & 63];
		out[n++] = i + 1 < inlen ? b64_alphabet[q >> 6 & 63] : '=';
		out[n++] = '=';
	}
	out[n] = '\0';
	return n;
}

/* ---- PLAIN and LOGIN ---------------------------------------------------- */

int
auth_plain_parse(const unsigned char *msg, size_t len, struct auth_plain *out)
{
	const unsigned char	*nul1, *nul2, *zid, *cid, *pw;
	size_t			 zidlen, cidlen, pwlen;

	memset(out, 0, sizeof(*out));
	if ((nul1 = memchr(msg, '\0', len)) == NULL)
		return AUTH_E_SYNTAX;
	nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 - msg) - 1);
	if (nul2 == NULL)
		return AUTH_E_SYNTAX;
	zid = msg;
	zidlen = (size_t)(nul1 - msg);
	cid = nul1 + 1;
	cidlen = (size_t)(nul2 - cid);
	pw = nul2 + 1;
	pwlen = len - (size_t)(pw - msg);
	if (memchr(pw, '\0', pwlen) != NULL)
		return AUTH_E_SYNTAX;
	if (zidlen > AUTH_FIELD_MAX || cidlen > AUTH_FIELD_MAX ||
	    pwlen > AUTH_FIELD_MAX)
		return AUTH_E_TOOLONG;
	if (cidlen == 0 || pwlen == 0)
		return AUTH_E_EMPTY;
	if (zidlen != 0 && (zidlen != cidlen || memcmp(zid, cid, cidlen)))
		return AUTH_E_AUTHZID;

	memcpy(out->authcid, cid, cidlen);
	out->authcidlen = cidlen;
	memcpy(out->passwd, pw, pwlen);
	out->passwdlen = pwlen;
	out->authzid = zidlen != 0;
	return AUTH_OK;
}

int
auth_login_field(const unsigned char *msg, size_t len,
    char out[AUTH_FIELD_MAX + 1])
{
	memset(out, 0, AUTH_FIELD_MAX + 1);
	if (memchr(msg, '\0', len) != NULL)
		return AUTH_E_SYNTAX;
	if (len > AUTH_FIELD_MAX)
		return AUTH_E_TOOLONG;
	if (len == 0)
		return AUTH_E_EMPTY;
	memcpy(out, msg, len);
	return AUTH_OK;
}

const char *
auth_strerror(int err)
{
	switch (err) {
	case AUTH_OK:
		return "ok";
	case AUTH_E_BASE64:
		return "bad base64";
	case AUTH_E_NOSPACE:
		return "decoded message too long";
	case AUTH_E_SYNTAX:
		return "malformed message";
	case AUTH_E_EMPTY:
		return "empty user name or password";
	case AUTH_E_TOOLONG:
		return "user name or password too long";
	case AUTH_E_AUTHZID:
		return "authorization identity differs from the user";
	}
	return "unknown error";
}
