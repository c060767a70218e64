/*
 * smtpload.c: an SMTP load client with TLS (plaintext, STARTTLS, implicit
 * TLS), for deploy/tlsbench.sh.  smtp-source has no TLS; this does what
 * it does over TLS as well, and counts handshakes.
 *
 * Not built by CMake.  Build it by hand:
 *
 *   cc -O2 -Wall -Wextra -o /tmp/smtpload deploy/bench/smtpload.c \
 *       -lssl -lcrypto -lpthread
 *
 * Each thread runs an epoll loop over its share of the sessions, all
 * non-blocking.  A session is one connection after another: greeting,
 * EHLO, [STARTTLS, handshake, EHLO,] then per message MAIL, RCPT, DATA,
 * the message and its dot, and QUIT once it has sent the messages it took
 * for that connection (-d).  With implicit TLS the handshake comes first.
 * With -H no mail is sent: greeting, EHLO, [STARTTLS, handshake,] QUIT,
 * and -m counts connections.  Commands are not pipelined.  Every reply
 * code is checked; a wrong one is an error: it is printed (the first
 * few), counted, and ends that connection (its messages are not resent).
 * Certificates are not verified.  Every connection makes a full handshake
 * unless -r keeps each session's last TLS session for the next one.
 *
 * Usage: smtpload [-2HIrS] [-C ciphers] [-d per-conn] [-f from] [-j threads]
 *            [-l size] [-M helo] [-m count] [-s sessions] [-t to]
 *            [-T timeout] host:port
 *   -S       STARTTLS (RFC 3207)         -I   implicit TLS
 *   -H       handshakes only, no mail    -r   resume TLS sessions
 *   -2       TLS 1.2 at most             -C   TLS 1.2 cipher list
 *   -d N     messages per connection; 0: -m / -s, one connection per
 *            session, as smtp-source -d [1]
 *   -j N     threads [1]                 -T S  idle timeout, seconds [60]
 *
 * Prints one line of key=value figures (elapsed seconds, messages and
 * connections and handshakes per second, errors, client CPU seconds) and
 * exits 1 if there was any error, 2 on a usage or setup error.
 */

#define _GNU_SOURCE		/* memmem() */

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define SL_IBUF		4096	/* longest reply we take, all its lines */
#define SL_MAXERR	10	/* errors printed; the rest are counted */
#define SL_LINE		76	/* body line length, without CRLF */

enum sl_mode {
	SL_PLAIN,		/* no TLS */
	SL_STARTTLS,		/* EHLO, STARTTLS, handshake, EHLO */
	SL_IMPLICIT,		/* handshake first */
};

enum sl_state {
	S_IDLE,			/* no connection */
	S_CONNECT,		/* connect() under way */
	S_HANDSHAKE,		/* TLS handshake under way */
	S_GREETING,		/* awaiting 220 */
	S_EHLO,			/* awaiting EHLO's 250 */
	S_STARTTLS,		/* awaiting STARTTLS's 220 */
	S_EHLO2,		/* awaiting the 250 to EHLO over TLS */
	S_MAIL,			/* awaiting MAIL's 250 */
	S_RCPT,			/* awaiting RCPT's 250 */
	S_DATA,			/* awaiting DATA's 354 */
	S_DOT,			/* awaiting the 250 to the final dot */
	S_QUIT,			/* awaiting QUIT's 221 */
};

static const char *const strstate[] = {
	"idle", "connect", "handshake", "greeting", "ehlo", "starttls",
	"ehlo2", "mail", "rcpt", "data", "dot", "quit",
};

/* What every thread reads; set up before they start. */
struct sl_run {
	enum sl_mode	 mode;		/* plaintext, STARTTLS or implicit */
	bool		 hs_only;	/* -H: no mail, count connections */
	bool		 resume;	/* -r: resume TLS sessions */
	int		 per_conn;	/* -d: messages per connection (-d 0:
					 * each session's share, -m / -s) */
	int		 timeout;	/* -T: seconds without progress */
	struct sockaddr_storage addr;	/* the server */
	socklen_t	 addrlen;	/* its length */
	SSL_CTX		*ctx;		/* client context, shared */
	const char	*helo;		/* our EHLO name */
	const char	*from;		/* MAIL FROM */
	const char	*to;		/* RCPT TO */
	char		*msg;		/* the message, with its final dot */
	size_t		 msglen;	/* its length */
	atomic_int	 printed;	/* errors printed so far */
	atomic_flag	 tls_noted;	/* the first handshake was described */
	char		 tls_desc[96];	/* "TLSv1.3/TLS_AES_..." of that one */
};

struct sl_thread;

/* One session: a slot that runs connection after connection. */
struct sl_sess {
	struct sl_thread *t;		/* the thread that runs it */
	int		 id;		/* for error messages */
	int		 fd;		/* the socket, -1 when idle */
	SSL		*ssl;		/* TLS, once started; else NULL */
	SSL_SESSION	*saved;		/* -r: for the next connection */
	enum sl_state	 state;		/* what we wait for */
	int		 todo;		/* messages still to send on this
					 * connection */
	bool		 want_out;	/* EPOLLOUT is registered */
	bool		 tls_wants_write; /* SSL_read said WANT_WRITE */
	const char	*out;		/* what is being sent: cmd or the
					 * message; never copied */
	size_t		 outlen;	/* its length */
	size_t		 outoff;	/* bytes of it sent */
	char		 cmd[600];	/* the command being sent */
	size_t		 ilen;		/* bytes in ibuf */
	char		 ibuf[SL_IBUF];	/* reply bytes not yet consumed */
};

/* One thread: an epoll loop, its sessions and its counters. */
struct sl_thread {
	struct sl_run	*run;		/* the shared settings */
	pthread_t	 tid;		/* the thread */
	int		 ep;		/* its epoll descriptor */
	struct sl_sess	*sess;		/* its sessions */
	int		 nsess;		/* how many */
	long		 left;		/* messages (-H: connections) not yet
					 * taken by a connection */
	int		 active;	/* sessions with a connection */
	long		 msgs;		/* messages accepted (250 to the dot) */
	long		 conns;		/* connections ended by 221 */
	long		 hs;		/* TLS handshakes completed */
	long		 resumed;	/* of which resumed */
	long		 errors;	/* connections that failed */
};

static int	sess_fail(struct sl_sess *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));

/* Returns the reason of the first queued OpenSSL error and clears the
 * queue (it is per thread). */
static const char *
sslerr(const char *fallback)
{
	const char	*r = ERR_reason_error_string(ERR_get_error());

	ERR_clear_error();
	return r != NULL ? r : fallback;
}

/* Prints usage and exits 2. */
static void
usage(void)
{
	fprintf(stderr, "usage: smtpload [-2HIrS] [-C ciphers] [-d per-conn] "
	    "[-f from] [-j threads]\n\t[-l size] [-M helo] [-m count] "
	    "[-s sessions] [-t to] [-T timeout] host:port\n");
	exit(2);
}

/* Returns the monotonic clock in seconds. */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Counts an error on s's connection and prints it (the first SL_MAXERR of
 * the run).  Returns -1, for the caller to return; the caller's caller
 * closes the connection.
 */
static int
sess_fail(struct sl_sess *s, const char *fmt, ...)
{
	va_list	ap;
	char	msg[300];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->t->errors++;
	if (atomic_fetch_add(&s->t->run->printed, 1) < SL_MAXERR)
		fprintf(stderr, "smtpload: session %d (%s): %s\n", s->id,
		    strstate[s->state], msg);
	return -1;
}

/* Registers s's socket for input, and for output when out is true. */
static void
sess_watch(struct sl_sess *s, bool out)
{
	struct epoll_event ev;

	if (out == s->want_out)
		return;
	s->want_out = out;
	ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
	ev.data.ptr = s;
	epoll_ctl(s->t->ep, EPOLL_CTL_MOD, s->fd, &ev);
}

/*
 * Sends what is left of s->out.  Returns 0 (all sent, or EPOLLOUT armed
 * for the rest) or -1.  SSL_write() is retried with the same pointer, as
 * OpenSSL wants, since s->out does not move until it is all sent.
 */
static int
sess_flush(struct sl_sess *s)
{
	ssize_t	n;
	int	e;

	while (s->outoff < s->outlen) {
		if (s->ssl != NULL) {
			n = SSL_write(s->ssl, s->out + s->outoff,
			    (int)(s->outlen - s->outoff));
			if (n <= 0) {
				e = SSL_get_error(s->ssl, (int)n);
				if (e == SSL_ERROR_WANT_WRITE)
					break;
				/* Retried when input comes (sess_event). */
				if (e == SSL_ERROR_WANT_READ) {
					sess_watch(s, false);
					return 0;
				}
				return sess_fail(s, "SSL_write: %s",
				    sslerr("connection closed"));
			}
		} else {
			n = send(s->fd, s->out + s->outoff,
			    s->outlen - s->outoff, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				return sess_fail(s, "send: %s", strerror(errno));
			}
		}
		s->outoff += (size_t)n;
	}
	sess_watch(s, s->outoff < s->outlen || s->tls_wants_write);
	return 0;
}

/* Sends a command (CRLF added) and waits for reply state st. */
static int
sess_cmd(struct sl_sess *s, enum sl_state st, const char *fmt, ...)
{
	va_list	ap;
	int	n;

	va_start(ap, fmt);
	n = vsnprintf(s->cmd, sizeof(s->cmd) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(s->cmd) - 2)
		return sess_fail(s, "command too long");
	memcpy(s->cmd + n, "\r\n", 2);
	s->out = s->cmd;
	s->outlen = (size_t)n + 2;
	s->outoff = 0;
	s->state = st;
	return sess_flush(s);
}

/* MAIL for the next message, or QUIT when this connection has sent its
 * share. */
static int
sess_next(struct sl_sess *s)
{
	if (s->todo > 0)
		return sess_cmd(s, S_MAIL, "MAIL FROM:<%s>", s->t->run->from);
	return sess_cmd(s, S_QUIT, "QUIT");
}

/*
 * Advances the TLS handshake.  Returns 0 (done, or waiting for the
 * socket) or -1.  Once done: the greeting (implicit TLS), or the EHLO
 * that RFC 3207 wants after STARTTLS, or QUIT with -H.
 */
static int
sess_handshake(struct sl_sess *s)
{
	struct sl_run	*run = s->t->run;
	int		 r, e;

	if ((r = SSL_do_handshake(s->ssl)) != 1) {
		e = SSL_get_error(s->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			sess_watch(s, e == SSL_ERROR_WANT_WRITE);
			return 0;
		}
		return sess_fail(s, "handshake: %s",
		    sslerr("connection closed"));
	}
	s->t->hs++;
	if (SSL_session_reused(s->ssl))
		s->t->resumed++;
	if (!atomic_flag_test_and_set(&run->tls_noted))
		snprintf(run->tls_desc, sizeof(run->tls_desc), "%s/%s",
		    SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl));
	sess_watch(s, false);
	if (run->mode == SL_IMPLICIT) {
		s->state = S_GREETING;
		return 0;
	}
	if (run->hs_only)
		return sess_cmd(s, S_QUIT, "QUIT");
	return sess_cmd(s, S_EHLO2, "EHLO %s", run->helo);
}

/* Starts TLS on s's socket. */
static int
sess_tls(struct sl_sess *s)
{
	if ((s->ssl = SSL_new(s->t->run->ctx)) == NULL ||
	    SSL_set_fd(s->ssl, s->fd) != 1)
		return sess_fail(s, "SSL_new failed");
	SSL_set_connect_state(s->ssl);
	if (s->saved != NULL)
		SSL_set_session(s->ssl, s->saved);
	s->state = S_HANDSHAKE;
	return sess_handshake(s);
}

/*
 * Acts on one whole reply (code, and all of its lines in text, len
 * bytes).  Returns 0 to go on, 1 when the connection is done (221), -1
 * on an error.
 */
static int
sess_reply(struct sl_sess *s, int code, const char *text, size_t len)
{
	static const int want[] = {
		[S_GREETING] = 220, [S_EHLO] = 250, [S_STARTTLS] = 220,
		[S_EHLO2] = 250, [S_MAIL] = 250, [S_RCPT] = 250,
		[S_DATA] = 354, [S_DOT] = 250, [S_QUIT] = 221,
	};
	struct sl_run	*run = s->t->run;

	if (s->state < S_GREETING || code != want[s->state]) {
		while (len > 0 && (text[len - 1] == '\n' ||
		    text[len - 1] == '\r'))
			len--;
		return sess_fail(s, "expected %d, got: %.*s",
		    s->state < S_GREETING ? 0 : want[s->state],
		    (int)(len > 200 ? 200 : len), text);
	}
	switch (s->state) {
	case S_GREETING:
		return sess_cmd(s, S_EHLO, "EHLO %s", run->helo);
	case S_EHLO:
		if (run->mode == SL_STARTTLS) {
			if (memmem(text, len, "STARTTLS", 8) == NULL)
				return sess_fail(s, "no STARTTLS in EHLO reply");
			return sess_cmd(s, S_STARTTLS, "STARTTLS");
		}
		if (run->hs_only)
			return sess_cmd(s, S_QUIT, "QUIT");
		return sess_next(s);
	case S_STARTTLS:
		/* Anything after the 220 would be injected plaintext. */
		if (s->ilen > 0)
			return sess_fail(s, "data after STARTTLS's 220");
		return sess_tls(s);
	case S_EHLO2:
		return sess_next(s);
	case S_MAIL:
		return sess_cmd(s, S_RCPT, "RCPT TO:<%s>", run->to);
	case S_RCPT:
		return sess_cmd(s, S_DATA, "DATA");
	case S_DATA:
		s->out = run->msg;
		s->outlen = run->msglen;
		s->outoff = 0;
		s->state = S_DOT;
		return sess_flush(s);
	case S_DOT:
		s->t->msgs++;
		s->todo--;
		return sess_next(s);
	case S_QUIT:
		return 1;
	default:
		return sess_fail(s, "bad state");
	}
}

/*
 * Reads what the socket has and acts on each whole reply.  Returns 0, 1
 * (connection done) or -1.  Stops reading plaintext once STARTTLS has
 * switched to the handshake.
 */
static int
sess_input(struct sl_sess *s)
{
	ssize_t	 n;
	char	*p, *eol, *line;
	int	 r, e;

	while (s->state != S_HANDSHAKE) {
		if (s->ilen == sizeof(s->ibuf))
			return sess_fail(s, "reply too long");
		if (s->ssl != NULL) {
			s->tls_wants_write = false;
			n = SSL_read(s->ssl, s->ibuf + s->ilen,
			    (int)(sizeof(s->ibuf) - s->ilen));
			if (n <= 0) {
				e = SSL_get_error(s->ssl, (int)n);
				if (e == SSL_ERROR_WANT_READ) {
					sess_watch(s, s->outoff < s->outlen);
					return 0;
				}
				if (e == SSL_ERROR_WANT_WRITE) {
					s->tls_wants_write = true;
					sess_watch(s, true);
					return 0;
				}
				return sess_fail(s, "SSL_read: %s",
				    sslerr("connection closed"));
			}
		} else {
			n = recv(s->fd, s->ibuf + s->ilen,
			    sizeof(s->ibuf) - s->ilen, 0);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return 0;
			if (n < 0)
				return sess_fail(s, "recv: %s", strerror(errno));
			if (n == 0)
				return sess_fail(s, "connection closed");
		}
		s->ilen += (size_t)n;
		/* Whole replies: lines up to one whose 4th byte is not '-'. */
		p = s->ibuf;
		line = p;
		while ((eol = memchr(line, '\n', s->ibuf + s->ilen - line))
		    != NULL) {
			if (eol - line >= 3 && line[3] == '-') {
				line = eol + 1;
				continue;
			}
			if (eol - line < 3 || line[0] < '2' || line[0] > '5' ||
			    line[1] < '0' || line[1] > '9' ||
			    line[2] < '0' || line[2] > '9')
				return sess_fail(s, "bad reply line");
			r = (line[0] - '0') * 100 + (line[1] - '0') * 10 +
			    (line[2] - '0');
			s->ilen -= (size_t)(eol + 1 - s->ibuf);
			/* The reply's bytes stay put until ibuf is moved. */
			e = sess_reply(s, r, p, (size_t)(eol + 1 - p));
			memmove(s->ibuf, eol + 1, s->ilen);
			if (e != 0)
				return e;
			p = line = s->ibuf;
		}
	}
	return 0;
}

/* Closes s's connection, and keeps its TLS session if -r. */
static void
sess_close(struct sl_sess *s)
{
	if (s->ssl != NULL) {
		if (s->t->run->resume && SSL_get0_session(s->ssl) != NULL &&
		    SSL_SESSION_is_resumable(SSL_get0_session(s->ssl))) {
			SSL_SESSION_free(s->saved);
			s->saved = SSL_get1_session(s->ssl);
		}
		/* One close_notify, not awaiting the server's. */
		if (s->state == S_QUIT)
			(void)SSL_shutdown(s->ssl);
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->fd != -1) {
		close(s->fd);		/* and out of the epoll set */
		s->fd = -1;
		s->t->active--;
	}
	s->state = S_IDLE;
	s->ilen = 0;
	s->outlen = s->outoff = 0;
	s->want_out = s->tls_wants_write = false;
}

/*
 * Opens s's next connection if its thread has work left: takes up to -d
 * messages (-H: one connection) and connects.  A connection that fails
 * still used what it took, so a refusing server ends the run.
 */
static void
sess_start(struct sl_sess *s)
{
	struct sl_thread	*t = s->t;
	struct sl_run		*run = t->run;
	struct epoll_event	 ev;
	int			 one = 1;

	while (t->left > 0) {
		s->todo = run->hs_only ? 0 : run->per_conn > t->left ?
		    (int)t->left : run->per_conn;
		t->left -= run->hs_only ? 1 : s->todo;
		s->fd = socket(run->addr.ss_family, SOCK_STREAM |
		    SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s->fd == -1) {
			sess_fail(s, "socket: %s", strerror(errno));
			continue;
		}
		t->active++;
		setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		s->state = S_CONNECT;
		if (connect(s->fd, (struct sockaddr *)&run->addr,
		    run->addrlen) == -1 && errno != EINPROGRESS) {
			sess_fail(s, "connect: %s", strerror(errno));
			sess_close(s);
			continue;
		}
		s->want_out = true;
		ev.events = EPOLLIN | EPOLLOUT;
		ev.data.ptr = s;
		if (epoll_ctl(t->ep, EPOLL_CTL_ADD, s->fd, &ev) == -1) {
			sess_fail(s, "epoll_ctl: %s", strerror(errno));
			sess_close(s);
			continue;
		}
		return;
	}
}

/* Handles an epoll event on s.  Returns 0, 1 (done) or -1. */
static int
sess_event(struct sl_sess *s, uint32_t events)
{
	socklen_t	len = sizeof(int);
	int		err = 0;

	if (s->state == S_CONNECT) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return 0;
		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0)
			return sess_fail(s, "connect: %s", strerror(err));
		sess_watch(s, false);
		if (s->t->run->mode == SL_IMPLICIT)
			return sess_tls(s);
		s->state = S_GREETING;
	}
	if (s->state == S_HANDSHAKE && sess_handshake(s) == -1)
		return -1;
	if (s->state == S_HANDSHAKE)
		return 0;
	if (s->outoff < s->outlen && sess_flush(s) == -1)
		return -1;
	return sess_input(s);
}

/* One thread's loop, until its sessions have nothing left to do. */
static void *
thread_main(void *arg)
{
	struct sl_thread	*t = arg;
	struct epoll_event	 evs[64];
	double			 last = now_s();
	int			 i, n, r;

	for (i = 0; i < t->nsess; i++)
		sess_start(&t->sess[i]);
	while (t->active > 0) {
		n = epoll_wait(t->ep, evs, 64, 1000);
		if (n < 0 && errno != EINTR) {
			perror("smtpload: epoll_wait");
			exit(2);
		}
		if (n > 0)
			last = now_s();
		else if (now_s() - last > t->run->timeout) {
			for (i = 0; i < t->nsess; i++)
				if (t->sess[i].fd != -1) {
					sess_fail(&t->sess[i], "timeout");
					sess_close(&t->sess[i]);
				}
			break;
		}
		for (i = 0; i < n; i++) {
			struct sl_sess *s = evs[i].data.ptr;

			if (s->fd == -1)
				continue;
			if ((r = sess_event(s, evs[i].events)) == 0)
				continue;
			if (r == 1)
				t->conns++;
			sess_close(s);
			sess_start(s);
		}
	}
	return NULL;
}

/* Builds the message: a few header lines, body lines up to size bytes,
 * and the final dot.  No line starts with a dot. */
static void
make_msg(struct sl_run *run, size_t size)
{
	static const char fmt[] = "From: <%s>\r\nTo: <%s>\r\n"
	    "Subject: smtpload\r\nMessage-Id: <smtpload@%s>\r\n\r\n";
	size_t	hlen, cap, n, k;
	char	*m;

	hlen = (size_t)snprintf(NULL, 0, fmt, run->from, run->to, run->helo);
	/* The body may overshoot size by one empty line, then the dot. */
	cap = (hlen > size ? hlen : size) + 2 + 3 + 1;
	if ((m = malloc(cap)) == NULL) {
		perror("smtpload");
		exit(2);
	}
	n = (size_t)snprintf(m, cap, fmt, run->from, run->to, run->helo);
	while (n < size) {
		k = size - n >= SL_LINE + 2 ? SL_LINE :
		    size - n > 2 ? size - n - 2 : 0;
		memset(m + n, 'X', k);
		memcpy(m + n + k, "\r\n", 2);
		n += k + 2;
	}
	memcpy(m + n, ".\r\n", 3);
	run->msg = m;
	run->msglen = n + 3;
}

/* Resolves "host:port" or "[v6]:port" into run->addr; exits on error. */
static void
parse_addr(struct sl_run *run, const char *arg)
{
	struct addrinfo	 hints, *res;
	char		 host[256], *colon;
	int		 e;

	snprintf(host, sizeof(host), "%s", arg);
	if ((colon = strrchr(host, ':')) == NULL)
		usage();
	*colon = '\0';
	if (host[0] == '[' && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if ((e = getaddrinfo(host, colon + 1, &hints, &res)) != 0) {
		fprintf(stderr, "smtpload: %s: %s\n", arg, gai_strerror(e));
		exit(2);
	}
	memcpy(&run->addr, res->ai_addr, res->ai_addrlen);
	run->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
}

int
main(int argc, char *argv[])
{
	struct sl_run	 run;
	struct sl_thread *th;
	struct rusage	 ru;
	const char	*ciphers = NULL;
	long		 messages = 1000, sum[5] = { 0 };
	double		 t0, secs, cpu;
	size_t		 size = 2048;
	int		 sessions = 20, nthreads = 1, tls12 = 0, c, i, j, k;

	memset(&run, 0, sizeof(run));
	atomic_flag_clear(&run.tls_noted);
	run.mode = SL_PLAIN;
	run.per_conn = 1;
	run.timeout = 60;
	run.helo = "load.example.test";
	run.from = "load@sender.example";
	run.to = "load@rcpt.example";
	while ((c = getopt(argc, argv, "2C:d:f:HIj:l:M:m:rSs:t:T:")) != -1) {
		switch (c) {
		case '2': tls12 = 1; break;
		case 'C': ciphers = optarg; break;
		case 'd': run.per_conn = atoi(optarg); break;
		case 'f': run.from = optarg; break;
		case 'H': run.hs_only = true; break;
		case 'I': run.mode = SL_IMPLICIT; break;
		case 'j': nthreads = atoi(optarg); break;
		case 'l': size = strtoul(optarg, NULL, 10); break;
		case 'M': run.helo = optarg; break;
		case 'm': messages = atol(optarg); break;
		case 'r': run.resume = true; break;
		case 'S': run.mode = SL_STARTTLS; break;
		case 's': sessions = atoi(optarg); break;
		case 't': run.to = optarg; break;
		case 'T': run.timeout = atoi(optarg); break;
		default: usage();
		}
	}
	if (optind + 1 != argc || sessions < 1 || nthreads < 1 ||
	    messages < 1 || run.per_conn < 0 || run.timeout < 1 ||
	    size > (1u << 30))
		usage();
	if (nthreads > sessions)
		nthreads = sessions;
	/* -d 0: one connection per session for all of its share. */
	if (run.per_conn == 0)
		run.per_conn = (int)((messages + sessions - 1) / sessions);
	parse_addr(&run, argv[optind]);
	make_msg(&run, size);
	signal(SIGPIPE, SIG_IGN);

	if ((run.ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(run.ctx, TLS1_2_VERSION) != 1 ||
	    (tls12 && SSL_CTX_set_max_proto_version(run.ctx,
	    TLS1_2_VERSION) != 1) || (ciphers != NULL &&
	    SSL_CTX_set_cipher_list(run.ctx, ciphers) != 1)) {
		fprintf(stderr, "smtpload: cannot set up the TLS context\n");
		return 2;
	}
	SSL_CTX_set_verify(run.ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_mode(run.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Sessions are kept by hand (-r), never by the context's cache. */
	SSL_CTX_set_session_cache_mode(run.ctx, SSL_SESS_CACHE_OFF);

	if ((th = calloc((size_t)nthreads, sizeof(*th))) == NULL) {
		perror("smtpload");
		return 2;
	}
	for (i = 0, k = 0; i < nthreads; i++) {
		th[i].run = &run;
		th[i].nsess = sessions / nthreads + (i < sessions % nthreads);
		th[i].left = messages / nthreads + (i < messages % nthreads);
		if ((th[i].ep = epoll_create1(EPOLL_CLOEXEC)) == -1 ||
		    (th[i].sess = calloc((size_t)th[i].nsess,
		    sizeof(*th[i].sess))) == NULL) {
			perror("smtpload");
			return 2;
		}
		for (j = 0; j < th[i].nsess; j++) {
			th[i].sess[j].t = &th[i];
			th[i].sess[j].id = k++;
			th[i].sess[j].fd = -1;
		}
	}
	t0 = now_s();
	for (i = 0; i < nthreads; i++)
		if ((errno = pthread_create(&th[i].tid, NULL, thread_main,
		    &th[i])) != 0) {
			perror("smtpload: pthread_create");
			return 2;
		}
	for (i = 0; i < nthreads; i++) {
		pthread_join(th[i].tid, NULL);
		sum[0] += th[i].msgs;
		sum[1] += th[i].conns;
		sum[2] += th[i].hs;
		sum[3] += th[i].resumed;
		sum[4] += th[i].errors;
	}
	secs = now_s() - t0;
	getrusage(RUSAGE_SELF, &ru);
	cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
	    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	printf("elapsed=%.3f msgs=%ld msgs_per_s=%.1f conns=%ld "
	    "conns_per_s=%.1f handshakes=%ld hs_per_s=%.1f resumed=%ld "
	    "errors=%ld client_cpu_s=%.2f tls=%s\n", secs, sum[0],
	    sum[0] / secs, sum[1], sum[1] / secs, sum[2], sum[2] / secs,
	    sum[3], sum[4], cpu, run.tls_desc[0] ? run.tls_desc : "-");
	for (i = 0; i < nthreads; i++) {
		for (j = 0; j < th[i].nsess; j++)
			SSL_SESSION_free(th[i].sess[j].saved);
		free(th[i].sess);
		close(th[i].ep);
	}
	free(th);
	free(run.msg);
	SSL_CTX_free(run.ctx);
	return sum[4] > 0;
}
