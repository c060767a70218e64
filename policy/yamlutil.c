/*
 * yamlutil.c: helpers shared by the YAML loaders of policy/: error
 * collection, node descriptions, reading and parsing a file, map keys.
 */

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>

#include "yamlutil.h"

void
yu_oom(void)
{
	fputs("smtpgate: out of memory while loading a YAML file\n", stderr);
	abort();
}

char *
yu_xstrdup(const char *s)
{
	char	*p;

	if ((p = strdup(s)) == NULL)
		yu_oom();
	return p;
}

void *
yu_grow(void *v, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return v;
	*cap = *cap ? *cap * 2 : 8;
	if ((v = reallocarray(v, *cap, size)) == NULL)
		yu_oom();
	return v;
}

void
yu_error(struct yu_errs *errs, const yaml_mark_t *mark, const char *fmt, ...)
{
	va_list		 ap;

	va_start(ap, fmt);
	yu_verror(errs, mark, fmt, ap);
	va_end(ap);
}

void
yu_verror(struct yu_errs *errs, const yaml_mark_t *mark, const char *fmt,
    va_list ap)
{
	struct yu_err	*e;

	errs->v = yu_grow(errs->v, &errs->cap, errs->n, sizeof(*errs->v));
	e = &errs->v[errs->n];
	e->file = errs->file;
	e->fileidx = errs->fileidx;
	e->line = mark ? mark->line + 1 : 0;
	e->col = mark ? mark->column + 1 : 0;
	e->seq = errs->n++;
	if (vasprintf(&e->msg, fmt, ap) < 0)
		yu_oom();
}

/* qsort() order of errors: by file, line, column, then order found. */
static int
yu_errcmp(const void *a, const void *b)
{
	const struct yu_err	*x = a, *y = b;

	if (x->fileidx != y->fileidx)
		return x->fileidx < y->fileidx ? -1 : 1;
	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * Writes s to f with control characters (and DEL) as '?': a file name or
 * a YAML value may hold any of them ("\n" in a double-quoted key), and an
 * error must stay on its one line and not drive the reader's terminal.
 */
void
yu_putclean(FILE *f, const char *s)
{
	for (; *s != '\0'; s++)
		putc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, f);
}

char *
yu_errtext(struct yu_errs *errs)
{
	struct yu_err	*e;
	char		*text = NULL;
	size_t		 i, size = 0;
	FILE		*f;

	qsort(errs->v, errs->n, sizeof(*errs->v), yu_errcmp);
	if ((f = open_memstream(&text, &size)) == NULL)
		yu_oom();
	for (i = 0; i < errs->n; i++) {
		e = &errs->v[i];
		yu_putclean(f, e->file);
		if (e->line)
			fprintf(f, ":%zu:%zu", e->line, e->col);
		fputs(": ", f);
		yu_putclean(f, e->msg);
		putc('\n', f);
		free(e->msg);
	}
	if (fclose(f) != 0 || text == NULL)
		yu_oom();
	free(errs->v);
	errs->v = NULL;
	errs->n = errs->cap = 0;
	return text;
}

int
yu_isempty(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && n->data.scalar.length == 0 &&
	    n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

const char *
yu_got(const yaml_node_t *n, char *buf, size_t size)
{
	const unsigned char	*s;
	size_t			 i, j, len;

	if (n->type == YAML_SEQUENCE_NODE)
		return "a list";
	if (n->type == YAML_MAPPING_NODE)
		return "a map";
	if (yu_isempty(n))
		return "nothing";
	s = n->data.scalar.value;
	len = n->data.scalar.length;
	buf[0] = '"';
	for (i = 0, j = 1; i < len && j + 5 < size && j < 61; i++)
		buf[j++] = s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	if (i < len) {
		memcpy(buf + j, "...", 3);
		j += 3;
	}
	buf[j++] = '"';
	buf[j] = '\0';
	return buf;
}

const char *
yu_scalar(struct yu_errs *errs, const yaml_node_t *v, const char *path,
    const char *expect)
{
	char	 got[80];

	if (v->type != YAML_SCALAR_NODE || yu_isempty(v)) {
		yu_error(errs, &v->start_mark, "%s: expected %s, got %s", path,
		    expect, yu_got(v, got, sizeof(got)));
		return NULL;
	}
	if (strlen((const char *)v->data.scalar.value) !=
	    v->data.scalar.length) {
		yu_error(errs, &v->start_mark, "%s: contains a NUL character",
		    path);
		return NULL;
	}
	return (const char *)v->data.scalar.value;
}

char *
yu_read(const char *path, size_t max, size_t *len, char *why, size_t whysize)
{
	struct stat	 st;
	FILE		*f;
	char		*buf;
	size_t		 n;
	int		 fd;

	/*
	 * O_NONBLOCK and the S_ISREG check: a FIFO or a terminal named as
	 * a policy file or include would block the (re)load forever.
	 */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) == -1) {
		snprintf(why, whysize, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(why, whysize, "cannot stat: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, whysize, "not a regular file");
		close(fd);
		return NULL;
	}
	if ((f = fdopen(fd, "r")) == NULL) {
		snprintf(why, whysize, "cannot open: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	if ((buf = malloc(max + 1)) == NULL)
		yu_oom();
	n = fread(buf, 1, max + 1, f);
	why[0] = '\0';
	if (ferror(f))
		snprintf(why, whysize, "cannot read: %s", strerror(errno));
	else if (n > max)
		snprintf(why, whysize, "larger than %zu bytes; not a "
		    "configuration file", max);
	fclose(f);
	if (why[0] != '\0') {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* Reports a libyaml parser failure with libyaml's own problem text. */
static void
yu_syntax(struct yu_errs *errs, const yaml_parser_t *p, const char *data)
{
	yaml_mark_t	 m = p->problem_mark;
	size_t		 i;

	if (p->error == YAML_MEMORY_ERROR)
		yu_oom();
	if (p->error == YAML_READER_ERROR) {
		/* Reader errors carry a byte offset, not a mark. */
		memset(&m, 0, sizeof(m));
		for (i = 0; i < p->problem_offset && data[i] != '\0'; i++) {
			if (data[i] == '\n') {
				m.line++;
				m.column = 0;
			} else
				m.column++;
		}
		yu_error(errs, &m, "invalid text: %s", p->problem);
	} else if (p->context != NULL)
		yu_error(errs, &m, "YAML syntax error: %s (%s at line %zu, "
		    "column %zu)", p->problem, p->context,
		    p->context_mark.line + 1, p->context_mark.column + 1);
	else
		yu_error(errs, &m, "YAML syntax error: %s",
		    p->problem ? p->problem : "unknown problem");
}

int
yu_parse(struct yu_errs *errs, const char *data, size_t len,
    yaml_document_t *doc)
{
	yaml_parser_t	 parser;
	yaml_document_t	 next;
	yaml_node_t	*root;

	if (!yaml_parser_initialize(&parser))
		yu_oom();
	yaml_parser_set_input_string(&parser, (const unsigned char *)data,
	    len);
	if (!yaml_parser_load(&parser, doc)) {
		yu_syntax(errs, &parser, data);
		yaml_parser_delete(&parser);
		return -1;
	}

	/* A "---" and more settings would be ignored. */
	if ((root = yaml_document_get_root_node(doc)) == NULL)
		;	/* the end of the stream: nothing follows */
	else if (!yaml_parser_load(&parser, &next))
		yu_syntax(errs, &parser, data);
	else {
		if ((root = yaml_document_get_root_node(&next)) != NULL)
			yu_error(errs, &root->start_mark, "only one YAML "
			    "document is allowed");
		yaml_document_delete(&next);
	}
	yaml_parser_delete(&parser);
	return 0;
}

/* Returns the name of entry i of a table of keys (see yu_map_key()). */
static const char *
yu_keyname(const void *keys, size_t stride, size_t i)
{
	const char	*name;

	memcpy(&name, (const char *)keys + i * stride, sizeof(name));
	return name;
}

long
yu_map_key(struct yu_errs *errs, yaml_document_t *doc, const yaml_node_t *map,
    const yaml_node_pair_t *p, const void *keys, size_t stride,
    const char *prefix, char *path, size_t pathsize)
{
	const yaml_node_pair_t	*q;
	const yaml_node_t	*kn, *qk;
	const char		*name, *kname;
	char			 got[80], known[512];
	size_t			 i, len;

	kn = yaml_document_get_node(doc, p->key);
	if (kn->type != YAML_SCALAR_NODE) {
		yu_error(errs, &kn->start_mark, "%s%sexpected a setting name, "
		    "got %s", prefix, *prefix ? ": " : "",
		    yu_got(kn, got, sizeof(got)));
		return -1;
	}
	name = (const char *)kn->data.scalar.value;
	snprintf(path, pathsize, "%s%s%s", prefix, *prefix ? "." : "", name);

	/* libyaml keeps duplicate keys; the first one counts. */
	for (q = map->data.mapping.pairs.start; q < p; q++) {
		qk = yaml_document_get_node(doc, q->key);
		if (qk->type == YAML_SCALAR_NODE &&
		    strcmp((char *)qk->data.scalar.value, name) == 0) {
			yu_error(errs, &kn->start_mark, "%s: duplicate key "
			    "(first given at line %zu)", path,
			    qk->start_mark.line + 1);
			return -1;
		}
	}

	for (i = 0; (kname = yu_keyname(keys, stride, i)) != NULL; i++)
		if (strcmp(kname, name) == 0)
			return (long)i;
	known[0] = '\0';
	for (i = 0, len = 0; (kname = yu_keyname(keys, stride, i)) != NULL &&
	    len < sizeof(known); i++)
		len += (size_t)snprintf(known + len, sizeof(known) - len,
		    "%s%s", len ? ", " : "", kname);
	yu_error(errs, &kn->start_mark, "%s: unknown setting (known here: %s)",
	    path, known);
	return -1;
}

const char *
yu_host_check(const char *text, size_t size)
{
	size_t	 i, label = 0;

	if (text[0] == '\0')
		return "it is empty";
	if (strlen(text) >= size)
		return "it is too long";
	for (i = 0; text[i] != '\0'; i++) {
		if (text[i] == '.') {
			if (label == 0 || text[i - 1] == '-')
				return "it has an empty label or a label "
				    "ending in '-'";
			label = 0;
			continue;
		}
		if (text[i] == '-' && label == 0)
			return "a label starts with '-'";
		if (!(text[i] == '-' || (text[i] >= '0' && text[i] <= '9') ||
		    (text[i] >= 'a' && text[i] <= 'z') ||
		    (text[i] >= 'A' && text[i] <= 'Z')))
			return "only letters, digits, '-' and '.' are allowed";
		label++;
	}
	if (label == 0 || text[i - 1] == '-')
		return "it ends in '.' or '-'";
	return NULL;
}

const struct yu_unit yu_units_int[] = {
	{ "", 1 }, { NULL, 0 }
};
const struct yu_unit yu_units_size[] = {
	{ "", 1 }, { "K", 1ull << 10 }, { "M", 1ull << 20 },
	{ "G", 1ull << 30 }, { NULL, 0 }
};
const struct yu_unit yu_units_duration[] = {
	{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 },
	{ "h", 3600 * 1000 }, { NULL, 0 }
};

int
yu_number(const char *s, const struct yu_unit *units, uint64_t *v)
{
	uint64_t	 n = 0;
	const char	*p;

	for (p = s; *p >= '0' && *p <= '9'; p++) {
		if (n > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -2;
		n = n * 10 + (uint64_t)(*p - '0');
	}
	if (p == s)
		return -1;
	for (; units->suffix != NULL; units++) {
		if (strcasecmp(p, units->suffix) != 0)
			continue;
		if (n > UINT64_MAX / units->mult)
			return -2;
		*v = n * units->mult;
		return 0;
	}
	return -1;
}
