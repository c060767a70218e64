/*
 * test.h: a minimal table-driven test harness for the unit tests.
 *
 * CHECK() records a failure with file and line and goes on; a test binary
 * ends with TEST_DONE(), which prints "N passed, N failed" and returns the
 * exit status ctest reads.
 */
#ifndef SMTPGATE_TEST_H
#define SMTPGATE_TEST_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int test_passed, test_failed;

#define CHECK(cond) do {						\
	if (cond) {							\
		test_passed++;						\
	} else {							\
		test_failed++;						\
		fprintf(stderr, "%s:%d: check failed: %s\n",		\
		    __FILE__, __LINE__, #cond);				\
	}								\
} while (0)

#define CHECKF(cond, ...) do {						\
	if (cond) {							\
		test_passed++;						\
	} else {							\
		test_failed++;						\
		fprintf(stderr, "%s:%d: check failed: %s: ",		\
		    __FILE__, __LINE__, #cond);				\
		fprintf(stderr, __VA_ARGS__);				\
		fputc('\n', stderr);					\
	}								\
} while (0)

#define TEST_DONE() do {						\
	printf("%d passed, %d failed\n", test_passed, test_failed);	\
	return test_failed ? 1 : 0;					\
} while (0)

/* Fills ss with the numeric address text; returns it as a sockaddr.  A bad
 * address is a bug in the test: exit 2. */
static inline const struct sockaddr *
test_addr(const char *text, struct sockaddr_storage *ss)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1)
		sin->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1)
		sin6->sin6_family = AF_INET6;
	else {
		fprintf(stderr, "bad test address %s\n", text);
		exit(2);
	}
	return (const struct sockaddr *)ss;
}

#endif /* SMTPGATE_TEST_H */
