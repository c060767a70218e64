/*
 * clients.h: connections per client address, for
 * limits: max_connections_per_client.  One table per process, shared by
 * the workers.
 */
#ifndef SMTPGATE_CLIENTS_H
#define SMTPGATE_CLIENTS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct client_table;

/*
 * The address bytes of sa (AF_INET or AF_INET6) into a, zero-padded to 16;
 * returns their number (4 or 16).  What the table keys on, for other
 * per-address tables too.
 */
size_t client_addr_bytes(const struct sockaddr *sa, unsigned char a[16]);

/* The hash (FNV-1a) of an address's len bytes. */
uint32_t client_addr_hash(const unsigned char *a, size_t len);

/* A new, empty table; NULL when out of memory. */
struct client_table *client_table_new(void);
void client_table_free(struct client_table *);

/*
 * Counts one more connection from sa, unless max (nonzero) are open
 * already.  Returns 0 when counted, -1 when at the limit (not counted).
 */
int client_table_add(struct client_table *, const struct sockaddr *sa,
    unsigned max);

/* Counts one connection from sa less (one client_table_add() counted). */
void client_table_del(struct client_table *, const struct sockaddr *sa);

#endif /* SMTPGATE_CLIENTS_H */
