/*
 * tlsio.h: TLS for one connection, with OpenSSL 3 and memory BIOs.
 *
 * A struct tlsio never touches a socket: the caller reads ciphertext from
 * its libuv stream and gives it to tlsio_feed(), takes the plaintext out
 * with tlsio_read(), encrypts with tlsio_write() and sends what
 * tlsio_take() hands out.  Nothing blocks; the handshake advances with
 * tlsio_handshake() each time input came.  One struct tlsio belongs to
 * one worker thread; a struct tlsio_ctx (certificate, key, protocol and
 * cipher settings) is built once per configuration and shared by every
 * thread.
 */
#ifndef SMTPGATE_TLSIO_H
#define SMTPGATE_TLSIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct tlsio_ctx;
struct tlsio;

/* What a server context is built from. */
struct tlsio_server_params {
	const char	*cert_file;	/* PEM: the certificate, then its chain */
	const char	*key_file;	/* PEM: the private key */
	const char	*ciphers;	/* TLS 1.2 cipher list (OpenSSL syntax) */
	int		 min_version;	/* TLS1_2_VERSION or TLS1_3_VERSION */
};

/* What a client context (to the backend) is built from. */
struct tlsio_client_params {
	const char	*ca_file;	/* PEM CA bundle; NULL: the system's */
	bool		 verify;	/* fail the handshake on an unverified
					 * certificate */
};

#define TLSIO_EOF	(-1)	/* tlsio_read(): the peer closed (close_notify) */
#define TLSIO_ERR	(-2)	/* tlsio_read(): a protocol error */

/* The default TLS 1.2 cipher list: forward secrecy and AEAD only. */
#define TLSIO_DEFAULT_CIPHERS						\
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"	\
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"	\
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"	\
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"

/*
 * Builds a server context: loads and checks the certificate chain and the
 * key.  Returns it, or NULL with the reason in err.
 */
struct tlsio_ctx *tlsio_server_ctx(const struct tlsio_server_params *p,
    char *err, size_t errsize);

/* Builds a client context.  Returns it, or NULL with the reason in err. */
struct tlsio_ctx *tlsio_client_ctx(const struct tlsio_client_params *p,
    char *err, size_t errsize);

/* Drops the caller's reference (connections hold their own).  NULL is ok. */
void tlsio_ctx_free(struct tlsio_ctx *ctx);

/*
 * A new connection's TLS state on ctx: a server, or a client that sends
 * name (may be NULL) as SNI and, when name is set and the context
 * verifies, checks that the certificate is for it.  NULL when out of
 * memory.
 */
struct tlsio *tlsio_new(struct tlsio_ctx *ctx, bool server, const char *name);

/* Frees t.  NULL is ok. */
void tlsio_free(struct tlsio *t);

/* Gives t ciphertext read from the peer.  Returns 0, or -1 (no memory). */
int tlsio_feed(struct tlsio *t, const void *buf, size_t len);

/*
 * Advances the handshake with the input fed so far.  Returns 1 when it is
 * done, 0 when it needs more input (tlsio_take() may have output to send
 * first), -1 when it failed (tlsio_error() says why).
 */
int tlsio_handshake(struct tlsio *t);

/*
 * Decrypts into buf.  Returns the bytes put there (> 0), 0 when no whole
 * record is buffered, TLSIO_EOF or TLSIO_ERR.
 */
ssize_t tlsio_read(struct tlsio *t, void *buf, size_t len);

/*
 * True when input is buffered that tlsio_read() has not returned yet
 * (plaintext, or ciphertext of a whole or partial record).
 */
bool tlsio_has_input(const struct tlsio *t);

/* Encrypts buf, all of it.  Returns 0, or -1. */
int tlsio_write(struct tlsio *t, const void *buf, size_t len);

/* Queues a close_notify alert (to be taken and sent). */
void tlsio_close_notify(struct tlsio *t);

/* Ciphertext waiting to be sent, in bytes. */
size_t tlsio_pending(const struct tlsio *t);

/* Moves up to size bytes of that ciphertext into buf; returns how many. */
size_t tlsio_take(struct tlsio *t, void *buf, size_t size);

/* The protocol version and cipher after the handshake ("TLSv1.3"). */
const char *tlsio_version(const struct tlsio *t);
const char *tlsio_cipher(const struct tlsio *t);

/* Why the last call failed, for the log. */
const char *tlsio_error(const struct tlsio *t);

#endif /* SMTPGATE_TLSIO_H */
