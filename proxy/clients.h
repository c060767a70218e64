/*
 * clients.h: connections per client address, for
 * limits: max_connections_per_client.  One table per process, shared by
 * the workers.
 */
#ifndef SMTPGATE_CLIENTS_H
#define SMTPGATE_CLIENTS_H

#include <sys/socket.h>

struct client_table;

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
