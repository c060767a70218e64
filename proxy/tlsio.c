/*
 * tlsio.c: TLS for one connection over memory BIOs (see tlsio.h).
 *
 * The SSL object reads from rbio and writes to wbio, two growing memory
 * BIOs: tlsio_feed() appends to rbio, tlsio_take() drains wbio.  An empty
 * rbio answers "retry" rather than end of file, so SSL_read() and
 * SSL_do_handshake() report SSL_ERROR_WANT_READ until more input is fed.
 * OpenSSL's error queue is per thread; each call clears it first and keeps
 * the first error of its own in t->err.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tlsio.h"

struct tlsio_ctx {
	SSL_CTX		*ssl_ctx;	/* OpenSSL's context (refcounted: each
					 * SSL holds a reference) */
	bool		 verify;	/* client: peer certificates are
					 * verified */
};

struct tlsio {
	SSL		*ssl;		/* the connection */
	BIO		*rbio;		/* ciphertext in, owned by ssl */
	BIO		*wbio;		/* ciphertext out, owned by ssl */
	char		 err[200];	/* why the last call failed */
};

/* Copies the first queued OpenSSL error (or fallback) into buf. */
static void
tlsio_errstr(char *buf, size_t size, const char *fallback)
{
	unsigned long e = ERR_get_error();

	if (e != 0)
		ERR_error_string_n(e, buf, size);
	else
		snprintf(buf, size, "%s", fallback);
	ERR_clear_error();
}

struct tlsio_ctx *
tlsio_server_ctx(const struct tlsio_server_params *p, char *err,
    size_t errsize)
{
	struct tlsio_ctx	*c;
	static const unsigned char sid[] = "smtpgate";

	ERR_clear_error();
	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    (c->ssl_ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errsize, "out of memory");
		free(c);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(c->ssl_ctx, p->min_version);
	/*
	 * No renegotiation (a client-triggered CPU sink), the server picks
	 * the cipher, and small buffers for idle connections.
	 */
	SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_dh_auto(c->ssl_ctx, 1);
	SSL_CTX_set_session_id_context(c->ssl_ctx, sid, sizeof(sid) - 1);
	/* One TLS 1.3 ticket (OpenSSL sends two): SMTP clients seldom
	 * resume, and each ticket costs an encryption per handshake. */
	SSL_CTX_set_num_tickets(c->ssl_ctx, 1);
	if (SSL_CTX_set_cipher_list(c->ssl_ctx, p->ciphers != NULL &&
	    p->ciphers[0] != '\0' ? p->ciphers : TLSIO_DEFAULT_CIPHERS) != 1) {
		snprintf(err, errsize, "no usable cipher in the cipher list");
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, p->cert_file) != 1) {
		tlsio_errstr(err, errsize, "cannot load the certificate");
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, p->key_file,
	    SSL_FILETYPE_PEM) != 1) {
		tlsio_errstr(err, errsize, "cannot load the private key");
		goto fail;
	}
	if (SSL_CTX_check_private_key(c->ssl_ctx) != 1) {
		tlsio_errstr(err, errsize, "the private key does not match "
		    "the certificate");
		goto fail;
	}
	ERR_clear_error();
	return c;
fail:
	ERR_clear_error();
	tlsio_ctx_free(c);
	return NULL;
}

struct tlsio_ctx *
tlsio_client_ctx(const struct tlsio_client_params *p, char *err,
    size_t errsize)
{
	struct tlsio_ctx *c;

	ERR_clear_error();
	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    (c->ssl_ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		snprintf(err, errsize, "out of memory");
		free(c);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
	c->verify = p->verify;
	SSL_CTX_set_verify(c->ssl_ctx, p->verify ? SSL_VERIFY_PEER :
	    SSL_VERIFY_NONE, NULL);
	if (p->ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(c->ssl_ctx, p->ca_file,
		    NULL) != 1) {
			tlsio_errstr(err, errsize, "cannot load the CA file");
			ERR_clear_error();
			tlsio_ctx_free(c);
			return NULL;
		}
	} else if (p->verify)
		SSL_CTX_set_default_verify_paths(c->ssl_ctx);
	ERR_clear_error();
	return c;
}

void
tlsio_ctx_free(struct tlsio_ctx *ctx)
{
	if (ctx == NULL)
		return;
	SSL_CTX_free(ctx->ssl_ctx);
	free(ctx);
}

struct tlsio *
tlsio_new(struct tlsio_ctx *ctx, bool server, const char *name)
{
	struct tlsio *t;

	ERR_clear_error();
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	if ((t->ssl = SSL_new(ctx->ssl_ctx)) == NULL ||
	    (t->rbio = BIO_new(BIO_s_mem())) == NULL ||
	    (t->wbio = BIO_new(BIO_s_mem())) == NULL)
		goto fail;
	/* Empty means "not yet", never end of file. */
	BIO_set_mem_eof_return(t->rbio, -1);
	SSL_set_bio(t->ssl, t->rbio, t->wbio);
	if (server)
		SSL_set_accept_state(t->ssl);
	else {
		if (name != NULL && name[0] != '\0') {
			SSL_set_tlsext_host_name(t->ssl, name);
			if (ctx->verify && SSL_set1_host(t->ssl, name) != 1)
				goto fail;
		}
		SSL_set_connect_state(t->ssl);
	}
	return t;
fail:
	ERR_clear_error();
	if (t->ssl != NULL && SSL_get_rbio(t->ssl) == NULL) {
		BIO_free(t->rbio);
		BIO_free(t->wbio);
	}
	SSL_free(t->ssl);
	free(t);
	return NULL;
}

void
tlsio_free(struct tlsio *t)
{
	if (t == NULL)
		return;
	SSL_free(t->ssl);	/* and both BIOs */
	free(t);
}

int
tlsio_feed(struct tlsio *t, const void *buf, size_t len)
{
	if (len > INT_MAX || BIO_write(t->rbio, buf, (int)len) != (int)len) {
		snprintf(t->err, sizeof(t->err), "out of memory");
		return -1;
	}
	return 0;
}

/* Records why call r of t failed with SSL error e. */
static void
tlsio_fail(struct tlsio *t, int e)
{
	long v;

	if (e == SSL_ERROR_SSL && ERR_peek_error() != 0) {
		tlsio_errstr(t->err, sizeof(t->err), "protocol error");
		v = SSL_get_verify_result(t->ssl);
		if (v != X509_V_OK) {
			size_t n = strlen(t->err);

			snprintf(t->err + n, sizeof(t->err) - n,
			    " (certificate: %s)",
			    X509_verify_cert_error_string(v));
		}
		return;
	}
	tlsio_errstr(t->err, sizeof(t->err), e == SSL_ERROR_SYSCALL ?
	    "connection closed during the handshake" : "protocol error");
}

int
tlsio_handshake(struct tlsio *t)
{
	int r, e;

	ERR_clear_error();
	if ((r = SSL_do_handshake(t->ssl)) == 1)
		return 1;
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	tlsio_fail(t, e);
	return -1;
}

ssize_t
tlsio_read(struct tlsio *t, void *buf, size_t len)
{
	int r, e;

	ERR_clear_error();
	if (len > INT_MAX)
		len = INT_MAX;
	if ((r = SSL_read(t->ssl, buf, (int)len)) > 0)
		return r;
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	if (e == SSL_ERROR_ZERO_RETURN)
		return TLSIO_EOF;
	tlsio_fail(t, e);
	return TLSIO_ERR;
}

bool
tlsio_has_input(const struct tlsio *t)
{
	return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0;
}

int
tlsio_write(struct tlsio *t, const void *buf, size_t len)
{
	int r;

	ERR_clear_error();
	while (len > 0) {
		r = SSL_write(t->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
		if (r <= 0) {
			tlsio_fail(t, SSL_get_error(t->ssl, r));
			return -1;
		}
		buf = (const char *)buf + r;
		len -= (size_t)r;
	}
	return 0;
}

void
tlsio_close_notify(struct tlsio *t)
{
	ERR_clear_error();
	if (SSL_is_init_finished(t->ssl))
		(void)SSL_shutdown(t->ssl);
	ERR_clear_error();
}

size_t
tlsio_pending(const struct tlsio *t)
{
	return BIO_ctrl_pending(t->wbio);
}

size_t
tlsio_take(struct tlsio *t, void *buf, size_t size)
{
	int n;

	if (size > INT_MAX)
		size = INT_MAX;
	n = BIO_read(t->wbio, buf, (int)size);
	return n > 0 ? (size_t)n : 0;
}

const char *
tlsio_version(const struct tlsio *t)
{
	return SSL_get_version(t->ssl);
}

const char *
tlsio_cipher(const struct tlsio *t)
{
	return SSL_get_cipher_name(t->ssl);
}

const char *
tlsio_error(const struct tlsio *t)
{
	return t->err[0] ? t->err : "unknown error";
}
