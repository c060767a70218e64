/*
 * fuzz_mailrcpt.c: the argument of MAIL and RCPT, smtp_mailrcpt_parse()
 * (path grammar and the ESMTP parameter list) and smtp_params_check(),
 * and the xtext encoder smtp_xtext_encode() (proxy/smtp_parse.c).
 *
 * The input is the argument after "MAIL " / "RCPT " ("FROM:<a@b> SIZE=1");
 * it is parsed both as MAIL and as RCPT.  Checked besides memory safety:
 *
 *  - the parts of an accepted path lie inside it, in order, and hold no
 *    control character (the path is forwarded to the backend: a CR or LF
 *    there would start a command of the client's choosing);
 *  - the flags say what the path is (null, route, literal, UTF-8, ...);
 *  - parameters are keyword [= value] with the octets the grammar allows;
 *  - writing the path and parameters back out parses to the same result;
 *  - smtp_params_check() fills only values it can give and refuses UTF-8
 *    without SMTPUTF8;
 *  - the xtext of the input is valid xtext, decodes back to the input, and
 *    the encoder writes nothing past the room it is given.
 */
#include <strings.h>

#include "fuzz.h"
#include "smtp_parse.h"

/* Nonzero when p lies in [start, start + len]. */
static int
inside(const char *p, const char *start, size_t len)
{
	return p >= start && p <= start + len;
}

/* Checks an accepted path against the argument a[0..alen) it came from. */
static void
check_path(const struct smtp_path *p, const char *a, size_t alen,
    int is_rcpt)
{
	const char	*mbox_end;
	size_t		 i;
	int		 utf8 = 0;

	REQUIRE(p->raw != NULL && inside(p->raw + p->rawlen, a, alen));
	REQUIRE(p->rawlen >= 2 && p->rawlen <= 256);
	REQUIRE(p->raw[0] == '<' && p->raw[p->rawlen - 1] == '>');
	for (i = 0; i < p->rawlen; i++) {
		REQUIRE((unsigned char)p->raw[i] >= 0x20 &&
		    p->raw[i] != 0x7f);
		utf8 |= (unsigned char)p->raw[i] >= 0x80;
	}
	REQUIRE(!!(p->flags & SMTP_PATH_UTF8) == utf8);

	if (p->flags & SMTP_PATH_NULL) {
		REQUIRE(!is_rcpt && p->rawlen == 2 && p->mailbox == NULL);
		REQUIRE(p->flags == SMTP_PATH_NULL);
		return;
	}
	/* The mailbox runs to the closing '>'. */
	REQUIRE(p->mailbox != NULL && p->mailbox > p->raw);
	mbox_end = p->mailbox + p->mailboxlen;
	REQUIRE(mbox_end == p->raw + p->rawlen - 1);
	REQUIRE(p->local == p->mailbox && p->locallen > 0 &&
	    p->locallen <= 64 && p->locallen <= p->mailboxlen);

	if (p->flags & SMTP_PATH_ROUTE) {
		REQUIRE(p->route == p->raw + 1 && p->route[0] == '@');
		REQUIRE(p->route + p->routelen + 1 == p->mailbox &&
		    p->route[p->routelen] == ':');
	} else
		REQUIRE(p->route == NULL && p->mailbox == p->raw + 1);

	REQUIRE(!!(p->flags & SMTP_PATH_QUOTED) == (p->local[0] == '"'));
	if (p->flags & SMTP_PATH_POSTMASTER) {
		REQUIRE(is_rcpt && p->domain == NULL);
		REQUIRE(!(p->flags & (SMTP_PATH_ROUTE | SMTP_PATH_QUOTED)));
		REQUIRE(p->locallen == 10 &&
		    strncasecmp(p->local, "Postmaster", 10) == 0);
		REQUIRE(p->mailboxlen == p->locallen);
		return;
	}
	REQUIRE(p->domain != NULL && p->domainlen > 0);
	REQUIRE(p->domain == p->local + p->locallen + 1 &&
	    p->domain[-1] == '@');
	REQUIRE(p->domain + p->domainlen == mbox_end);
	REQUIRE(!!(p->flags & SMTP_PATH_LITERAL) == (p->domain[0] == '['));
	if (p->flags & SMTP_PATH_LITERAL)
		REQUIRE(p->domainlen >= 3 &&
		    p->domain[p->domainlen - 1] == ']');
}

/* Checks the parameters of an accepted argument a[0..alen). */
static void
check_params(const struct smtp_mailrcpt *m, const char *a, size_t alen)
{
	const struct smtp_param	*sp;
	const char		*prev = m->path.raw + m->path.rawlen;
	size_t			 i;
	int			 n;

	REQUIRE(m->nparams >= 0 && m->nparams <= SMTP_PARAMS_MAX);
	for (n = 0; n < m->nparams; n++) {
		sp = &m->params[n];
		REQUIRE(sp->key > prev && sp->key[-1] == ' ');
		REQUIRE(sp->keylen > 0 && inside(sp->key + sp->keylen, a, alen));
		REQUIRE((sp->key[0] >= '0' && sp->key[0] <= '9') ||
		    ((sp->key[0] | 0x20) >= 'a' && (sp->key[0] | 0x20) <= 'z'));
		for (i = 0; i < sp->keylen; i++)
			REQUIRE(sp->key[i] == '-' ||
			    (sp->key[i] >= '0' && sp->key[i] <= '9') ||
			    ((sp->key[i] | 0x20) >= 'a' &&
			    (sp->key[i] | 0x20) <= 'z'));
		prev = sp->key + sp->keylen;
		if (sp->val == NULL) {
			REQUIRE(sp->vallen == 0);
			continue;
		}
		REQUIRE(sp->val == prev + 1 && *prev == '=');
		REQUIRE(sp->vallen > 0 && inside(sp->val + sp->vallen, a, alen));
		for (i = 0; i < sp->vallen; i++)
			REQUIRE((unsigned char)sp->val[i] > ' ' &&
			    sp->val[i] != '=' && sp->val[i] != 0x7f);
		prev = sp->val + sp->vallen;
	}
}

/* Writes m back out as an argument; parsing that must give the same. */
static void
check_roundtrip(const struct smtp_mailrcpt *m, int is_rcpt)
{
	struct smtp_mailrcpt	 again;
	char			*buf, *p;
	size_t			 size = 8 + m->path.rawlen;
	int			 n;

	for (n = 0; n < m->nparams; n++)
		size += 2 + m->params[n].keylen + m->params[n].vallen;
	p = buf = malloc(size);
	REQUIRE(buf != NULL);
	p += sprintf(p, "%s", is_rcpt ? "TO:" : "FROM:");
	memcpy(p, m->path.raw, m->path.rawlen);
	p += m->path.rawlen;
	for (n = 0; n < m->nparams; n++) {
		*p++ = ' ';
		memcpy(p, m->params[n].key, m->params[n].keylen);
		p += m->params[n].keylen;
		if (m->params[n].val != NULL) {
			*p++ = '=';
			memcpy(p, m->params[n].val, m->params[n].vallen);
			p += m->params[n].vallen;
		}
	}
	REQUIRE(smtp_mailrcpt_parse(buf, (size_t)(p - buf), is_rcpt,
	    &again) == SMTP_ARG_OK);
	REQUIRE(again.path.rawlen == m->path.rawlen &&
	    again.path.flags == m->path.flags &&
	    again.path.mailboxlen == m->path.mailboxlen &&
	    again.path.locallen == m->path.locallen &&
	    again.path.domainlen == m->path.domainlen &&
	    again.path.routelen == m->path.routelen &&
	    again.nparams == m->nparams);
	for (n = 0; n < m->nparams; n++)
		REQUIRE(again.params[n].keylen == m->params[n].keylen &&
		    again.params[n].vallen == m->params[n].vallen &&
		    (again.params[n].val == NULL) ==
		    (m->params[n].val == NULL));
	free(buf);
}

/* Checks smtp_params_check() on an accepted argument. */
static void
check_meaning(const struct smtp_mailrcpt *m, int is_rcpt, int smtputf8)
{
	struct smtp_mail_opts	 o;
	enum smtp_arg_err	 e;

	e = smtp_params_check(m, is_rcpt, smtputf8, &o);
	REQUIRE(e == SMTP_ARG_OK || e == SMTP_ARG_PARAM_UNKNOWN ||
	    e == SMTP_ARG_PARAM_VALUE || e == SMTP_ARG_PARAM_DUP ||
	    e == SMTP_ARG_UTF8);
	REQUIRE(o.body == 0 || o.body == 7 || o.body == 8);
	REQUIRE(o.ret != 3);
	if (is_rcpt)
		REQUIRE(o.size == 0 && o.body == 0 && !o.smtputf8 &&
		    o.ret == 0 && !o.envid);
	else
		REQUIRE(!o.notify && !o.orcpt);
	if (e == SMTP_ARG_UTF8)
		REQUIRE(m->path.flags & SMTP_PATH_UTF8);
	if (e == SMTP_ARG_OK && (m->path.flags & SMTP_PATH_UTF8))
		REQUIRE(is_rcpt ? smtputf8 : o.smtputf8);
	if (e == SMTP_ARG_OK && m->nparams == 0)
		REQUIRE(o.size == 0 && o.body == 0 && o.ret == 0);
}

/* Value of upper-case hex digit c, or -1. */
static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* smtp_xtext_encode(): valid xtext that decodes back; bounded writes. */
static void
check_xtext(const char *src, size_t len)
{
	char	*dst, *small;
	size_t	 n, i, j, cut;

	dst = malloc(3 * len + 1);
	REQUIRE(dst != NULL);
	n = smtp_xtext_encode(dst, 3 * len + 1, src, len);
	REQUIRE(n >= len && n <= 3 * len && dst[n] == '\0');
	for (i = 0, j = 0; i < n; j++) {
		REQUIRE(j < len);
		REQUIRE((unsigned char)dst[i] >= 33 &&
		    (unsigned char)dst[i] <= 126 && dst[i] != '=');
		if (dst[i] == '+') {
			REQUIRE(i + 2 < n && hexval(dst[i + 1]) >= 0 &&
			    hexval(dst[i + 2]) >= 0);
			REQUIRE((unsigned char)src[j] ==
			    hexval(dst[i + 1]) * 16 + hexval(dst[i + 2]));
			i += 3;
		} else
			REQUIRE(src[j] == dst[i++]);
	}
	REQUIRE(j == len);

	/* Too little room: the same length, and only the room written. */
	cut = n / 2;
	small = fuzz_copy(dst, cut);
	REQUIRE(smtp_xtext_encode(small, cut, src, len) == n);
	REQUIRE(memcmp(small, dst, cut) == 0);
	free(small);
	free(dst);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_mailrcpt	 m;
	enum smtp_arg_err	 e;
	char			*a = fuzz_copy(data, size);
	int			 is_rcpt;

	for (is_rcpt = 0; is_rcpt <= 1; is_rcpt++) {
		e = smtp_mailrcpt_parse(a, size, is_rcpt, &m);
		if (e != SMTP_ARG_OK && e != SMTP_ARG_TOO_MANY) {
			REQUIRE(e == SMTP_ARG_SYNTAX || e == SMTP_ARG_PATH ||
			    e == SMTP_ARG_PARAM_SYNTAX);
			continue;
		}
		check_path(&m.path, a, size, is_rcpt);
		check_params(&m, a, size);
		if (e == SMTP_ARG_TOO_MANY) {
			REQUIRE(m.nparams == SMTP_PARAMS_MAX);
			continue;
		}
		check_roundtrip(&m, is_rcpt);
		check_meaning(&m, is_rcpt, 0);
		check_meaning(&m, is_rcpt, 1);
	}
	check_xtext(a, size);
	free(a);
	return 0;
}
