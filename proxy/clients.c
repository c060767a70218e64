/*
 * clients.c: a small hash table of open connections per client address,
 * under one mutex (held for a few instructions per connect and close).
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "clients.h"

#define CT_BUCKETS	4096	/* chains; a busy gateway has a few thousand
				 * clients at once */

struct client_entry {
	struct client_entry	*next;		/* chain */
	unsigned char		 addr[16];	/* IPv4 in the first 4 bytes */
	int			 family;	/* AF_INET or AF_INET6 */
	unsigned		 count;		/* open connections */
};

struct client_table {
	uv_mutex_t		 lock;		/* guards everything below */
	struct client_entry	*bucket[CT_BUCKETS];
};

size_t
client_addr_bytes(const struct sockaddr *sa, unsigned char a[16])
{
	memset(a, 0, 16);
	if (sa->sa_family == AF_INET6) {
		memcpy(a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		return 16;
	}
	memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	return 4;
}

uint32_t
client_addr_hash(const unsigned char *a, size_t len)
{
	uint32_t	h = 2166136261u;
	size_t		i;

	for (i = 0; i < len; i++)
		h = (h ^ a[i]) * 16777619u;
	return h;
}

/* The chain of a. */
static struct client_entry **
ct_chain(struct client_table *t, const unsigned char *a, size_t len)
{
	return &t->bucket[client_addr_hash(a, len) % CT_BUCKETS];
}

struct client_table *
client_table_new(void)
{
	struct client_table *t;

	if ((t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	if (uv_mutex_init(&t->lock) != 0) {
		free(t);
		return NULL;
	}
	return t;
}

void
client_table_free(struct client_table *t)
{
	struct client_entry	*e, *next;
	size_t			 i;

	if (t == NULL)
		return;
	for (i = 0; i < CT_BUCKETS; i++)
		for (e = t->bucket[i]; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	uv_mutex_destroy(&t->lock);
	free(t);
}

int
client_table_add(struct client_table *t, const struct sockaddr *sa,
    unsigned max)
{
	struct client_entry	**chain, *e;
	unsigned char		  a[16];
	size_t			  len = client_addr_bytes(sa, a);
	int			  r = 0;

	uv_mutex_lock(&t->lock);
	chain = ct_chain(t, a, len);
	for (e = *chain; e != NULL; e = e->next)
		if (e->family == sa->sa_family && memcmp(e->addr, a, 16) == 0)
			break;
	if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
		memcpy(e->addr, a, 16);
		e->family = sa->sa_family;
		e->next = *chain;
		*chain = e;
	}
	if (e == NULL || (max != 0 && e->count >= max))
		r = -1;
	else
		e->count++;
	uv_mutex_unlock(&t->lock);
	return r;
}

void
client_table_del(struct client_table *t, const struct sockaddr *sa)
{
	struct client_entry	**pe, *e;
	unsigned char		  a[16];
	size_t			  len = client_addr_bytes(sa, a);

	uv_mutex_lock(&t->lock);
	for (pe = ct_chain(t, a, len); (e = *pe) != NULL; pe = &e->next) {
		if (e->family != sa->sa_family || memcmp(e->addr, a, 16) != 0)
			continue;
		if (--e->count == 0) {
			*pe = e->next;
			free(e);
		}
		break;
	}
	uv_mutex_unlock(&t->lock);
}
