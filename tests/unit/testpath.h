/*
 * testpath.h: parses a path for unit tests of code that takes
 * struct smtp_path (filters, rules).
 */
#ifndef SMTPGATE_TESTPATH_H
#define SMTPGATE_TESTPATH_H

#include <stdio.h>
#include <stdlib.h>

#include "smtp_parse.h"

/* Parses "<path>" as a MAIL (is_rcpt 0) or RCPT argument into m, using buf
 * (size bytes) as its storage; a bad path is a bug in the test: exit 2. */
static inline void
test_path(const char *path, int is_rcpt, char *buf, size_t size,
    struct smtp_mailrcpt *m)
{
	int n;

	n = snprintf(buf, size, "%s%s", is_rcpt ? "TO:" : "FROM:", path);
	if (n < 0 || (size_t)n >= size ||
	    smtp_mailrcpt_parse(buf, (size_t)n, is_rcpt, m) != SMTP_ARG_OK) {
		fprintf(stderr, "bad test path %s\n", path);
		exit(2);
	}
}

#endif /* SMTPGATE_TESTPATH_H */
