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

/* How many files fuzz_tmpfile() hands out, at the most. */
#define FUZZ_TMPFILES_MAX	8

/*
 * The paths fuzz_tmpfile() made: [0] the private directory, then its
 * files, NULL after the last.
 */
static inline char **
fuzz__tmp_paths(void)
{
	static char	*paths[1 + FUZZ_TMPFILES_MAX + 1];

	return paths;
}

/* At exit: removes the files fuzz_tmpfile() named, then the directory. */
static inline void
fuzz__tmp_cleanup(void)
{
	char	**paths = fuzz__tmp_paths();
	size_t	  i;

	if (paths[0] == NULL)
		return;
	for (i = 1; paths[i] != NULL; i++)
		unlink(paths[i]);
	rmdir(paths[0]);
}

/*
 * Returns the malloc'd path "DIR/name" of a file in the target's private
 * directory DIR, "$TMPDIR/<target>.XXXXXX" (/tmp without TMPDIR), made at
 * the first call.  The files and the directory are removed at exit.
 * Aborts when it cannot make the directory or when called more than
 * FUZZ_TMPFILES_MAX times.
 */
static inline char *
fuzz_tmpfile(const char *target, const char *name)
{
	char		**paths = fuzz__tmp_paths();
	const char	 *tmp;
	char		 *pattern;
	size_t		  i;

	if (paths[0] == NULL) {
		tmp = getenv("TMPDIR");
		if (asprintf(&pattern, "%s.XXXXXX", target) < 0)
			abort();
		paths[0] = fuzz_path(tmp != NULL && *tmp != '\0' ? tmp : "/tmp",
		    pattern);
		free(pattern);
		if (mkdtemp(paths[0]) == NULL) {
			perror(paths[0]);
			abort();
		}
		atexit(fuzz__tmp_cleanup);
	}
	for (i = 1; paths[i] != NULL; i++)
		;
	if (i > FUZZ_TMPFILES_MAX)
		abort();
	paths[i] = fuzz_path(paths[0], name);
	return paths[i];
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
