/*
 * yamlutil.h: helpers shared by the YAML loaders of policy/ (config.c and
 * policy.c).  Internal to policy/; not for the rest of the program.
 *
 * Both loaders read a whole file, parse it with libyaml's document API,
 * walk the node tree and record every problem found instead of stopping at
 * the first.  The errors are kept in a struct yu_errs and rendered at the
 * end as "FILE:LINE:COL: message" lines, sorted into file order (files in
 * the order they were opened, then line, column and the order found).
 */
#ifndef SMTPGATE_YAMLUTIL_H
#define SMTPGATE_YAMLUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <yaml.h>

/* One error found, kept until all are sorted. */
struct yu_err {
	const char	*file;		/* file it is in (not owned) */
	unsigned	 fileidx;	/* order that file was opened in */
	size_t		 line;		/* 1-based; 0: the whole file */
	size_t		 col;		/* 1-based */
	size_t		 seq;		/* order found: a stable sort */
	char		*msg;		/* the text after the position,
					 * malloc'd */
};

/* The errors of one load. */
struct yu_errs {
	struct yu_err	*v;		/* errors found so far */
	size_t		 n;		/* entries used in v */
	size_t		 cap;		/* entries allocated in v */
	const char	*file;		/* file new errors are in; not
					 * owned, must outlive
					 * yu_errtext() */
	unsigned	 fileidx;	/* its order among the files opened */
};

/* Prints "out of memory" and aborts: a loader cannot go on without it. */
void yu_oom(void) __attribute__((noreturn));

/* Returns a malloc'd copy of s; never NULL (aborts instead). */
char *yu_xstrdup(const char *s);

/*
 * Makes room for entry n (0-based) in the array v of *cap entries of size
 * bytes each, doubling it when full.  Returns the array, maybe moved; the
 * caller owns it.  Never NULL (aborts instead).
 */
void *yu_grow(void *v, size_t *cap, size_t n, size_t size);

/*
 * Records an error at mark (0-based, as libyaml gives it), or for the whole
 * file when mark is NULL, against errs->file.  The message is copied.
 */
void yu_error(struct yu_errs *errs, const yaml_mark_t *mark,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* yu_error() with a va_list. */
void yu_verror(struct yu_errs *errs, const yaml_mark_t *mark,
    const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/*
 * Returns every error as one malloc'd text that the caller frees, one
 * "FILE:LINE:COL: message\n" line each ("FILE: message\n" for a whole
 * file), in file order.  Control characters in FILE and message are
 * shown as '?', so each error is one line.  Empties errs.
 */
char *yu_errtext(struct yu_errs *errs);

/*
 * Writes s to f with control characters (and DEL) as '?', so that a name
 * or a message cannot split an error line or drive the reader's terminal.
 */
void yu_putclean(FILE *f, const char *s);

/* Returns nonzero for a scalar written as nothing at all ("key:"). */
int yu_isempty(const yaml_node_t *n);

/*
 * Describes node n for an error message ("a list", "\"abc\"") in buf,
 * which it returns.  Control characters are shown as '?' and long values
 * are cut short.
 */
const char *yu_got(const yaml_node_t *n, char *buf, size_t size);

/*
 * Returns the text of node v, or NULL after reporting "path: expected
 * <expect>, got ..." when v is not a scalar or is written as nothing, or
 * that it contains a NUL character.
 */
const char *yu_scalar(struct yu_errs *errs, const yaml_node_t *v,
    const char *path, const char *expect);

/*
 * Reads the file at path into a malloc'd, NUL-terminated buffer that the
 * caller frees, and sets *len.  Returns NULL when it cannot be read or is
 * larger than max bytes, with the reason ("cannot open: No such file or
 * directory") in why.
 */
char *yu_read(const char *path, size_t max, size_t *len, char *why,
    size_t whysize);

/*
 * Parses data (len bytes, the text of errs->file) into *doc, which the
 * caller then deletes with yaml_document_delete().  Returns 0, or -1 after
 * reporting a syntax error (then there is no document to delete).  More
 * than one YAML document in the text is reported as an error, but the
 * first is still returned so that its errors can be found too.
 */
int yu_parse(struct yu_errs *errs, const char *data, size_t len,
    yaml_document_t *doc);

/*
 * Looks up the key of pair p of mapping node map in a table of keys:
 * entries of stride bytes, each starting with its "const char *name", the
 * last one with a NULL name.  Writes the key's full name (prefix "." key)
 * to path.  Returns the entry's index, or -1 after reporting a key that is
 * not a scalar, a duplicate of an earlier key of map, or unknown (the
 * message then lists the known ones).
 */
long yu_map_key(struct yu_errs *errs, yaml_document_t *doc,
    const yaml_node_t *map, const yaml_node_pair_t *p, const void *keys,
    size_t stride, const char *prefix, char *path, size_t pathsize);

/*
 * Returns NULL when text is a valid host name shorter than size octets,
 * or why it is not: letters, digits and '-' in dot-separated labels, as
 * RFC 1035 has them.
 */
const char *yu_host_check(const char *text, size_t size);

/* A number's unit suffix and what it multiplies by. */
struct yu_unit {
	const char	*suffix;	/* "" for none, "ms", "K", ... */
	uint64_t	 mult;		/* what the number is multiplied by */
};

/* Plain integers; sizes (K, M, G: binary); durations in ms (ms, s, m, h;
 * no suffix means seconds).  Each ends with a NULL suffix. */
extern const struct yu_unit yu_units_int[];
extern const struct yu_unit yu_units_size[];
extern const struct yu_unit yu_units_duration[];

/*
 * Parses decimal digits followed by one of units' suffixes (case does not
 * matter) into *v (the number times the multiplier).  Returns 0, -1 when
 * malformed, or -2 when the value does not fit in 64 bits.
 */
int yu_number(const char *s, const struct yu_unit *units, uint64_t *v);

#endif /* SMTPGATE_YAMLUTIL_H */
