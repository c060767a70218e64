/*
 * fuzz.h: what the libFuzzer targets in tests/fuzz share.
 *
 * Each target is one fuzz_<name>.c defining LLVMFuzzerTestOneInput(); it
 * is built by CMake with -DSMTPGATE_FUZZ=ON (clang) and run by
 * tests/fuzz/run.sh on the seeds in tests/fuzz/corpus/<name>/.  Besides
 * what AddressSanitizer and UndefinedBehaviorSanitizer catch, a target
 * checks the contract of the parser it drives with REQUIRE(), which
 * aborts: libFuzzer then saves the input as a crash.
 */
#ifndef SMTPGATE_FUZZ_H
#define SMTPGATE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Prints the failed condition and aborts, also in builds with NDEBUG. */
#define REQUIRE(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: contract broken: %s\n",		\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * Returns a malloc'd block of exactly n octets (one when n is 0), so that
 * AddressSanitizer reports any access past its end.  Never NULL (aborts
 * instead).  The caller frees it.
 */
static inline char *
fuzz_alloc(size_t n)
{
	char	*c;

	if ((c = malloc(n ? n : 1)) == NULL)
		abort();
	return c;
}

/* Returns a copy of p[0..n) in a block from fuzz_alloc(n). */
static inline char *
fuzz_copy(const void *p, size_t n)
{
	char	*c = fuzz_alloc(n);

	if (n)
		memcpy(c, p, n);
	return c;
}

/* Returns a malloc'd "dir/name"; never NULL (aborts instead). */
static inline char *
fuzz_path(const char *dir, const char *name)
{
	char	*p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		abort();
	return p;
}

/* Replaces the file at path with p[0..n); aborts when it cannot. */
static inline void
fuzz_write(const char *path, const void *p, size_t n)
{
	FILE	*f;

	if ((f = fopen(path, "w")) == NULL || fwrite(p, 1, n, f) != n ||
	    fclose(f) != 0) {
		perror(path);
		abort();
	}
}

/*
 * Checks the error text of a loader (config_load(), policy_load()): one
 * or more lines, each "FILE: message" or "FILE:LINE:COL: message" ending
 * in LF, with no other control character, so that a log line or a
 * terminal shows each error as one line and nothing else.
 */
static inline void
fuzz_check_errtext(const char *errs)
{
	const char	*line, *nl, *p;

	REQUIRE(errs != NULL && *errs != '\0');
	for (line = errs; *line != '\0'; line = nl + 1) {
		nl = strchr(line, '\n');
		REQUIRE(nl != NULL && nl > line);
		for (p = line; p < nl; p++)
			REQUIRE((unsigned char)*p >= 0x20 && *p != 0x7f);
		REQUIRE(memchr(line, ':', (size_t)(nl - line)) != NULL);
	}
}

#endif /* SMTPGATE_FUZZ_H */
