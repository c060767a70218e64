/*
 * explain.h: --explain, a policy decision shown without a network.
 */
#ifndef SMTPGATE_EXPLAIN_H
#define SMTPGATE_EXPLAIN_H

#include "config.h"

/*
 * Runs the filters of cfg's policy on the session the key=value words in
 * argv describe and prints every stage's decision to stdout.  Returns the
 * process exit status: 0, or 2 for bad arguments.
 */
int explain_run(const struct config *cfg, int argc, char **argv);

#endif /* SMTPGATE_EXPLAIN_H */
