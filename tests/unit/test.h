/*
 * test.h: a minimal table-driven test harness for the unit tests.
 *
 * CHECK() records a failure with file and line and goes on; a test binary
 * ends with TEST_DONE(), which prints "N passed, N failed" and returns the
 * exit status ctest reads.
 */
#ifndef SMTPGATE_TEST_H
#define SMTPGATE_TEST_H

#include <stdio.h>
#include <string.h>

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

#endif /* SMTPGATE_TEST_H */
