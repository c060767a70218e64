/*
 * log.h: one line per event on stderr, "key=value" after a timestamp and a
 * level.  Safe from every worker thread: each line is built in a local
 * buffer and written with one write(2).
 */
#ifndef SMTPGATE_LOG_H
#define SMTPGATE_LOG_H

#include "config.h"

/* Sets the highest level that is written; read atomically by log_msg(). */
void log_set_level(enum log_level lvl);

/* Nonzero when a message at lvl would be written. */
int log_enabled(enum log_level lvl);

/* Writes one line: "TIMESTAMP LEVEL MESSAGE\n".  Control characters in the
 * formatted message (CR, LF, ...) are written as '?' so a peer cannot forge
 * log lines. */
void log_msg(enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...)	log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)	log_msg(LOG_LVL_WARNING, __VA_ARGS__)
#define log_info(...)	log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)	do { if (log_enabled(LOG_LVL_DEBUG))		\
	log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)

/* Aborts the process after logging: for broken invariants only. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif /* SMTPGATE_LOG_H */
