/*
 * fuzz_config.c: the main configuration loader, config_load()
 * (policy/config.c with policy/yamlutil.c).
 *
 * The input is a smtpgate.yaml.  It is written to a file in a private
 * directory which also holds a small valid policy ("policy.yaml") and a
 * credentials file with one cheap SHA-256-crypt hash ("users"), so that
 * "policy: policy.yaml" and "auth: { users_file: users }" load too.
 * Checked besides memory safety and leaks:
 *
 *  - a refused file gives error text of whole lines with no control
 *    character (the policy's and the credentials file's included);
 *  - a loaded config has what config_load() promises: one reference, at
 *    least one listen address and one backend within the limits, a
 *    worker count, a hostname and backend HELO name, a policy.
 */
#include "config.h"
#include "fuzz.h"

static char	*cfgfile;	/* dir/smtpgate.yaml: the input */
static char	*polfile;	/* dir/policy.yaml */
static char	*usersfile;	/* dir/users */

static const char policy_text[] =
	"relay:\n"
	"  trusted_networks: [127.0.0.0/8]\n"
	"  local_domains: [example.test]\n"
	"rules:\n"
	"  - name: r\n"
	"    match: { helo: '/^localhost$/i' }\n"
	"    action: warn\n";

/* "secret", hashed with the fewest rounds SHA-256-crypt allows. */
static const char users_text[] =
	"alice:$5$rounds=1000$fuzzsalt$qGCc4JvvMNwwgoU2eJ4FMcZ.jSqNaOPBoUN0Jv2"
	"w9O2\n";

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	cfgfile = fuzz_tmpfile("fuzz_config", "smtpgate.yaml");
	polfile = fuzz_tmpfile("fuzz_config", "policy.yaml");
	usersfile = fuzz_tmpfile("fuzz_config", "users");
	fuzz_write(polfile, policy_text, sizeof(policy_text) - 1);
	fuzz_write(usersfile, users_text, sizeof(users_text) - 1);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config	*cfg;
	char		*errs = NULL;
	unsigned	 i;

	fuzz_write(cfgfile, data, size);
	cfg = config_load(cfgfile, &errs);
	if (cfg == NULL) {
		fuzz_check_errtext(errs);
		free(errs);
		return 0;
	}
	REQUIRE(errs == NULL);
	REQUIRE(atomic_load(&cfg->refs) == 1);
	REQUIRE(cfg->policy != NULL && strcmp(cfg->path, cfgfile) == 0);
	REQUIRE(cfg->nlisten >= 1 && cfg->nlisten <= CFG_MAX_LISTEN);
	REQUIRE(cfg->nbackends >= 1 && cfg->nbackends <= CFG_MAX_BACKENDS);
	for (i = 0; i < cfg->nlisten; i++)
		REQUIRE(cfg->listen[i].addr.sslen > 0);
	for (i = 0; i < cfg->nbackends; i++)
		REQUIRE(cfg->backends[i].sslen > 0);
	REQUIRE(cfg->workers >= 1);
	REQUIRE(cfg->hostname[0] != '\0' && cfg->backend_helo[0] != '\0');
	REQUIRE(cfg->auth_users == NULL || cfg->auth_db != NULL);
	config_unref(config_ref(cfg));
	REQUIRE(atomic_load(&cfg->refs) == 1);
	config_unref(cfg);
	return 0;
}
