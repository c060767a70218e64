/*
 * test_ruleindex.c: unit tests for policy/ruleindex.c, the rule index, as
 * the rules filter uses it.
 *
 * The index may only leave out rules that cannot match, so a stage must
 * decide exactly as trying every rule of the stage in file order does.
 * Random policies (a fixed seed, so that a failure can be run again) are
 * drawn from small pools of networks, names, addresses and header lines,
 * written as literals in mixed case and as regexes (some with a line name,
 * some that only look as if they had one), with many warn rules; random
 * sessions from pools that meet them often.  Each stage is run through
 * flt_run_stage() and compared with a reference that tries every rule with
 * flt_match(): the verdict, code, reply and rule named, and the rules the
 * rules filter logged as matching, in order (read back from stderr).  A
 * table checks a few cases by hand as well.
 */

#include <arpa/inet.h>
#include <netinet/in.h>

#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "filter.h"
#include "log.h"
#include "smtp_parse.h"
#include "test.h"
#include "testenv.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define ROUNDS		150		/* random policies */
#define MAX_RULES	60		/* rules in one */
#define SESSIONS	40		/* random sessions per policy */
#define MAX_LOGGED	MAX_RULES	/* rules logged in one stage */

static char	 tmpdir[] = "/tmp/test_ruleindex.XXXXXX";	/* our files */
static char	 polfile[PATH_MAX];		/* tmpdir/policy.yaml */
static char	 logfile[PATH_MAX];		/* tmpdir/stderr */
static int	 logfd = -1;			/* logfile, open */
static int	 errfd = -1;			/* the real stderr */
static struct pattern_scratch *scratch;	/* for the rules */

/* ---- Pools ----------------------------------------------------------------- */

/* What rules match: client networks (lists of 1-3 of these). */
static const char *const p_nets[] = {
	"10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "192.0.2.7",
	"198.51.100.0/24", "2001:db8::/32", "::/0", "0.0.0.0/0",
	"::ffff:192.0.2.0/120",
};
/* The other fields: literals (mixed case) and regexes. */
static const char *const p_client_re[] = {
	"/^10\\./", "/^192\\.0\\.2\\./", "/:/",
};
static const char *const p_name[] = {
	"mx.example.test", "MX.Example.TEST", "mail.spam.test", "unknown",
	"/\\.test$/i", "/^mx\\./",
};
static const char *const p_helo[] = {
	"bad.example", "BAD.example", "good.example", "[192.0.2.7]",
	"/^bad/i", "/example$/", "/^\\[/", "/^good\\.EXAMPLE$/i",
	"/x$|^\\[1/s",
};
static const char *const p_sender[] = {
	"a@spam.test", "A@SPAM.test", "b@ok.test", "c@Ok.Test",
	"/@spam\\.test$/i", "/^b@/", "/^$/", "/^(b)\\1?@/",
	"/(*NO_START_OPT)c@/i", "/OK\\.TEST$/i",
};
static const char *const p_rcpt[] = {
	"u@example.test", "U@EXAMPLE.TEST", "v@example.test", "Postmaster",
	"/^u@/i", "/example\\.test$/", "/^v@/m", "/(?<who>u)@/",
	"/^postmaster$/i",
};
static const char *const p_header[] = {
	"Subject: hello", "SUBJECT: Hello", "X-Mailer: Bulk 5", "Subject:",
	"NoColon", "/^Subject:.*win/i", "/^subject:.*hello/",
	"/^X-Mailer:\\s*bulk/i", "/^Subject:a|hello/", "/money/",
	"/^From:.*spam/", "/^X-Spam:/", "/^Subject:x/m", "/^(?i)to:/",
	"/^Subject:(win|lose)/", "/money$/m", "/(?i)X-NOTE: a/",
	"/line$/", "/hello/i",
};
static const char *const p_actions[] = {
	"warn", "warn", "warn", "accept", "reject", "tempfail", "refuse",
};

/* What sessions have. */
static const char *const s_clients[] = {
	"10.1.2.3", "10.9.9.9", "192.0.2.7", "192.0.2.8", "198.51.100.1",
	"203.0.113.5", "2001:db8::1", "2001:db9::1", "::ffff:192.0.2.7",
};
static const char *const s_names[] = {
	"mx.example.test", "MX.EXAMPLE.TEST", "mail.spam.test", "other.test",
	"unknown",
};
static const char *const s_helos[] = {
	"bad.example", "Bad.Example", "good.example", "GOOD.EXAMPLE",
	"[192.0.2.7]", "",
};
static const char *const s_senders[] = {
	"<a@spam.test>", "<A@Spam.Test>", "<b@ok.test>", "<C@OK.TEST>", "<>",
	"<@r.test:a@spam.test>", NULL,
};
static const char *const s_rcpts[] = {
	"<u@example.test>", "<U@Example.Test>", "<v@example.test>",
	"<Postmaster>", "<w@other.test>",
};
static const char *const s_headers[] = {
	"Subject: hello", "subject: HELLO", "Subject: win money",
	"X-Mailer: Bulk 5", "x-mailer: bulk 5", "From: <a@spam.test>",
	"NoColon", "nocolon", "Subject:", "X-Spam: yes", ": no name",
	"To: u@example.test", "Subject: lose", "X-Note: hello",
	"X-Note: a money line",
};

/* ---- Helpers ------------------------------------------------------------- */

/* A fixed-seed generator (splitmix64). */
static uint64_t rnd_state = 0x1de7;

static uint64_t
rnd(void)
{
	uint64_t	 z = (rnd_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

#define PICK(pool)	((pool)[rnd() % NELEM(pool)])

/* Loads text as a policy, which must be valid; exits when it is not. */
static struct policy *
load(const char *text)
{
	struct policy	*pol;
	FILE		*f;
	char		*errs = NULL;
	size_t		 len = strlen(text);

	if ((f = fopen(polfile, "w")) == NULL ||
	    fwrite(text, 1, len, f) != len || fclose(f) != 0) {
		perror(polfile);
		exit(2);
	}
	if ((pol = policy_load(polfile, &errs)) == NULL) {
		fprintf(stderr, "policy does not load:\n%s%s", errs ? errs : "",
		    text);
		exit(2);
	}
	return pol;
}

/* What a stage gave: the result and the rules logged as matching. */
struct outcome {
	enum flt_verdict	 verdict;	/* the stage's verdict */
	int			 code;		/* reply code */
	const char		*rule;		/* the rule named, or NULL */
	char			 reply[480];	/* reply text */
	char			 logged[MAX_LOGGED][16];	/* rules logged */
	size_t			 nlogged;	/* how many */
};

/* Reads the names of the rules logged in logfile ("rule=NAME ") into o. */
static void
read_logged(struct outcome *o)
{
	char		 buf[65536], *p, *end;
	ssize_t		 n;
	size_t		 len;

	o->nlogged = 0;
	if ((n = pread(logfd, buf, sizeof(buf) - 1, 0)) < 0)
		n = 0;
	buf[n] = '\0';
	for (p = buf; (p = strstr(p, " rule=")) != NULL; p = end) {
		p += strlen(" rule=");
		end = p + strcspn(p, " \n");
		len = (size_t)(end - p);
		if (o->nlogged < MAX_LOGGED && len < sizeof(o->logged[0])) {
			memcpy(o->logged[o->nlogged], p, len);
			o->logged[o->nlogged++][len] = '\0';
		}
	}
}

/* Runs stage st for s under pol through flt_run_stage(), with stderr read
 * back for the rules logged. */
static void
run_indexed(const struct policy *pol, enum flt_stage st,
    const struct test_sess *s, struct outcome *o)
{
	struct test_envbuf	 b;
	struct flt_run		 run;

	memset(&run, 0, sizeof(run));
	/* stderr shares logfd's offset: back to the start of it. */
	if (ftruncate(logfd, 0) != 0 || lseek(logfd, 0, SEEK_SET) != 0 ||
	    dup2(logfd, STDERR_FILENO) == -1)
		exit(2);
	o->verdict = flt_run_stage(&run, st, test_env(&b, pol, scratch, s));
	if (dup2(errfd, STDERR_FILENO) == -1)
		exit(2);
	o->code = run.res.code;
	o->rule = run.res.rule;
	snprintf(o->reply, sizeof(o->reply), "%s", run.res.reply);
	flt_run_reset(&run);
	read_logged(o);
}

/* The same by hand: every rule of the stage, in file order, the first one
 * that matches with an action other than warn decides. */
static void
run_reference(const struct policy *pol, enum pol_stage ps,
    const struct test_sess *s, struct outcome *o)
{
	static const enum flt_verdict verdicts[] = {
		[POL_REJECT] = FLT_REJECT, [POL_TEMPFAIL] = FLT_TEMPFAIL,
		[POL_REFUSE] = FLT_REFUSE, [POL_ACCEPT] = FLT_ACCEPT,
	};
	struct test_envbuf	 b;
	const struct flt_env	*env = test_env(&b, pol, scratch, s);
	const struct pol_rule	*r;
	size_t			 i;

	memset(o, 0, sizeof(*o));
	o->verdict = FLT_CONTINUE;
	for (i = 0; i < pol->nrules; i++) {
		r = &pol->rules[i];
		if (r->stage != ps || !flt_match(&r->match, env))
			continue;
		snprintf(o->logged[o->nlogged++], sizeof(o->logged[0]), "%s",
		    r->name);
		o->rule = r->name;
		if (r->action == POL_WARN)
			continue;
		o->verdict = verdicts[r->action];
		if (r->action != POL_ACCEPT) {
			o->code = r->code;
			snprintf(o->reply, sizeof(o->reply), "%s", r->reply);
		}
		return;
	}
}

/* Checks that got equals want; what names the case in failures. */
static int
same_outcome(const struct outcome *got, const struct outcome *want,
    const char *what)
{
	size_t	 i;
	int	 ok = got->verdict == want->verdict &&
	    got->code == want->code && strcmp(got->reply, want->reply) == 0 &&
	    (got->rule == NULL) == (want->rule == NULL) &&
	    (got->rule == NULL || strcmp(got->rule, want->rule) == 0) &&
	    got->nlogged == want->nlogged;

	for (i = 0; ok && i < got->nlogged; i++)
		ok = strcmp(got->logged[i], want->logged[i]) == 0;
	if (!ok) {
		fprintf(stderr, "%s: verdict %d/%d, code %d/%d, rule %s/%s, "
		    "logged %zu/%zu:", what, got->verdict, want->verdict,
		    got->code, want->code, got->rule ? got->rule : "-",
		    want->rule ? want->rule : "-", got->nlogged,
		    want->nlogged);
		for (i = 0; i < got->nlogged; i++)
			fprintf(stderr, " %s", got->logged[i]);
		fprintf(stderr, " /");
		for (i = 0; i < want->nlogged; i++)
			fprintf(stderr, " %s", want->logged[i]);
		fprintf(stderr, "\n");
	}
	return ok;
}

/* ---- Random policies ----------------------------------------------------- */

/* Appends a YAML single-quoted s to buf (at *len, size octets). */
static void
put_quoted(char *buf, size_t size, size_t *len, const char *s)
{
	*len += (size_t)snprintf(buf + *len, size - *len, "'");
	for (; *s != '\0'; s++)
		*len += (size_t)snprintf(buf + *len, size - *len,
		    *s == '\'' ? "''" : "%c", *s);
	*len += (size_t)snprintf(buf + *len, size - *len, "'");
}

/* Writes a random policy of n rules into buf. */
static void
random_policy(char *buf, size_t size, size_t n)
{
	static const char *const fields[] = {
		"client", "client_name", "helo", "sender", "recipient",
		"header",
	};
	size_t		 len = 0, i, f, k, j, nnets;
	unsigned	 used;

	len += (size_t)snprintf(buf + len, size - len, "rules:\n");
	for (i = 0; i < n; i++) {
		len += (size_t)snprintf(buf + len, size - len,
		    "  - name: r%zu\n    match: {", i);
		/* One field mostly, up to three. */
		k = 1 + (rnd() % 4 == 0) + (rnd() % 8 == 0);
		for (j = used = 0; j < k; j++) {
			f = rnd() % NELEM(fields);
			if (used & (1u << f))
				continue;
			len += (size_t)snprintf(buf + len, size - len, "%s %s: ",
			    used ? "," : "", fields[f]);
			used |= 1u << f;
			switch (f) {
			case 0:
				if (rnd() % 4 == 0) {
					put_quoted(buf, size, &len,
					    PICK(p_client_re));
					break;
				}
				nnets = 1 + rnd() % 3;
				len += (size_t)snprintf(buf + len, size - len,
				    "[");
				while (nnets-- > 0) {
					put_quoted(buf, size, &len,
					    PICK(p_nets));
					if (nnets > 0)
						len += (size_t)snprintf(buf +
						    len, size - len, ", ");
				}
				len += (size_t)snprintf(buf + len, size - len,
				    "]");
				break;
			case 1:
				put_quoted(buf, size, &len, PICK(p_name));
				break;
			case 2:
				put_quoted(buf, size, &len, PICK(p_helo));
				break;
			case 3:
				put_quoted(buf, size, &len, PICK(p_sender));
				break;
			case 4:
				put_quoted(buf, size, &len, PICK(p_rcpt));
				break;
			default:
				put_quoted(buf, size, &len, PICK(p_header));
				break;
			}
		}
		len += (size_t)snprintf(buf + len, size - len,
		    " }\n    action: %s\n", PICK(p_actions));
	}
	if (len >= size) {
		fprintf(stderr, "policy buffer too small\n");
		exit(2);
	}
}

/* A random session. */
static void
random_session(struct test_sess *s)
{
	s->client = PICK(s_clients);
	s->name = PICK(s_names);
	s->helo = PICK(s_helos);
	s->from = PICK(s_senders);
	s->rcpt = PICK(s_rcpts);
	s->header = PICK(s_headers);
}

static const enum pol_stage pol_stage_of[] = {
	[FLT_CONNECT] = POL_CONNECT, [FLT_HELO] = POL_HELO,
	[FLT_MAIL] = POL_MAIL, [FLT_RCPT] = POL_RCPT,
	[FLT_HEADER] = POL_HEADER,
};

/* Random policies and sessions: each stage as the reference decides it. */
static void
test_random(void)
{
	static const enum flt_stage stages[] = {
		FLT_CONNECT, FLT_HELO, FLT_MAIL, FLT_RCPT, FLT_HEADER,
	};
	static char		 text[MAX_RULES * 400];
	struct policy		*pol;
	struct outcome		 got, want;
	struct test_sess		 s, at;
	char			 what[512];
	size_t			 round, i, j, bad = 0, decided = 0, warned = 0;

	for (round = 0; round < ROUNDS; round++) {
		random_policy(text, sizeof(text), 1 + rnd() % MAX_RULES);
		pol = load(text);
		for (i = 0; i < SESSIONS; i++) {
			random_session(&s);
			for (j = 0; j < NELEM(stages); j++) {
				/* What the session knows at that stage. */
				at = s;
				if (stages[j] < FLT_HELO)
					at.helo = "";
				if (stages[j] < FLT_MAIL)
					at.from = NULL;
				if (stages[j] != FLT_RCPT)
					at.rcpt = NULL;
				if (stages[j] != FLT_HEADER)
					at.header = NULL;
				run_indexed(pol, stages[j], &at, &got);
				run_reference(pol, pol_stage_of[stages[j]], &at,
				    &want);
				decided += want.verdict != FLT_CONTINUE;
				warned += want.nlogged > 1;
				snprintf(what, sizeof(what), "round %zu, stage "
				    "%s, client %s, name %s, helo %s, from %s, "
				    "rcpt %s, header %s", round,
				    flt_stage_name(stages[j]), at.client,
				    at.name, at.helo, at.from ? at.from : "-",
				    at.rcpt ? at.rcpt : "-",
				    at.header ? at.header : "-");
				if (!same_outcome(&got, &want, what) &&
				    bad++ == 0)
					fprintf(stderr, "%s", text);
			}
		}
		policy_unref(pol);
	}
	CHECKF(bad == 0, "%zu stages decided otherwise", bad);
	/* The pools meet often enough for the comparison to mean something. */
	CHECKF(decided > ROUNDS * SESSIONS, "%zu decided", decided);
	CHECKF(warned > ROUNDS, "%zu with warn matches first", warned);
}

/* ---- By hand --------------------------------------------------------------- */

static const char hand_policy[] =
	"rules:\n"
	"  - name: w-any-subject\n"
	"    match: { header: '/^Subject:/i' }\n"
	"    action: warn\n"
	"  - name: net-accept\n"
	"    match: { client: [10.0.0.0/8], sender: '/@partner\\.test$/' }\n"
	"    action: accept\n"
	"  - name: w-helo\n"
	"    match: { helo: Bad.Example }\n"
	"    action: warn\n"
	"  - name: hdr-lit\n"
	"    match: { header: 'subject: Buy now' }\n"
	"    action: reject\n"
	"  - name: hdr-re\n"
	"    match: { header: '/^Subject:.*buy/i' }\n"
	"    action: tempfail\n"
	"  - name: hdr-alt\n"
	"    match: { header: '/^Subject:x|cheap/' }\n"
	"    action: reject\n"
	"    reply: '550 5.7.1 cheap'\n"
	"  - name: sender-lit\n"
	"    match: { sender: A@Spam.Test }\n"
	"    action: reject\n"
	"  - name: net-reject\n"
	"    match: { client: ['10.1.0.0/16', '2001:db8::/32'] }\n"
	"    action: refuse\n"
	"  - name: helo-late\n"
	"    match: { helo: bad.example }\n"
	"    action: reject\n";

/* One case: a stage of a session, and what it must give. */
static const struct hcase {
	int		 line;		/* __LINE__ */
	enum flt_stage	 st;		/* the stage run */
	struct test_sess	 s;		/* the session */
	enum flt_verdict want;		/* verdict */
	const char	*rule;		/* rule named, or NULL */
	size_t		 nlogged;	/* rules logged */
} hand_cases[] = {
	/* Both header rules are found, the literal's in any case; the warn
	 * rule before them is logged first. */
	{ __LINE__, FLT_HEADER, { .header = "SUBJECT: buy NOW" }, FLT_REJECT,
	  "hdr-lit", 2 },
	{ __LINE__, FLT_HEADER, { .header = "Subject: buy later" },
	  FLT_TEMPFAIL, "hdr-re", 2 },
	/* A line name elsewhere: only the unnamed rule can match. */
	{ __LINE__, FLT_HEADER, { .header = "X-Subject: cheap" }, FLT_REJECT,
	  "hdr-alt", 1 },
	{ __LINE__, FLT_HEADER, { .header = "X-Subject: buy now" },
	  FLT_CONTINUE, NULL, 0 },
	{ __LINE__, FLT_HEADER, { .header = "Subject: hi" }, FLT_CONTINUE,
	  "w-any-subject", 1 },
	/* Networks: the one rule whose networks hold the client (mapped). */
	{ __LINE__, FLT_CONNECT, { .client = "::ffff:10.1.2.3" }, FLT_REFUSE,
	  "net-reject", 1 },
	{ __LINE__, FLT_CONNECT, { .client = "10.2.0.1" }, FLT_CONTINUE, NULL,
	  0 },
	{ __LINE__, FLT_CONNECT, { .client = "2001:db8::5" }, FLT_REFUSE,
	  "net-reject", 1 },
	/* A network and a sender: filed under the network, still all of it
	 * must match; the literal sender after it. */
	{ __LINE__, FLT_MAIL, { .client = "10.1.2.3",
	  .from = "<x@partner.test>" }, FLT_ACCEPT, "net-accept", 1 },
	{ __LINE__, FLT_MAIL, { .client = "10.1.2.3",
	  .from = "<a@spam.test>" }, FLT_REJECT, "sender-lit", 1 },
	{ __LINE__, FLT_MAIL, { .client = "192.0.2.1",
	  .from = "<x@partner.test>" }, FLT_CONTINUE, NULL, 0 },
	/* Two HELO literals, one of them warn, same text in two cases. */
	{ __LINE__, FLT_HELO, { .helo = "BAD.EXAMPLE" }, FLT_REJECT,
	  "helo-late", 2 },
};

static void
test_hand(void)
{
	struct policy		*pol = load(hand_policy);
	const struct hcase	*c;
	struct outcome		 got;
	struct test_sess		 s;
	size_t			 i;

	for (i = 0; i < NELEM(hand_cases); i++) {
		c = &hand_cases[i];
		s = c->s;
		if (s.client == NULL)
			s.client = "192.0.2.1";
		if (s.name == NULL)
			s.name = "unknown";
		if (s.helo == NULL)
			s.helo = "";
		run_indexed(pol, c->st, &s, &got);
		CHECKF(got.verdict == c->want, "line %d: verdict %d, want %d",
		    c->line, got.verdict, c->want);
		CHECKF((got.rule == NULL && c->rule == NULL) ||
		    (got.rule != NULL && c->rule != NULL &&
		    strcmp(got.rule, c->rule) == 0), "line %d: rule %s, want "
		    "%s", c->line, got.rule ? got.rule : "-",
		    c->rule ? c->rule : "-");
		CHECKF(got.nlogged == c->nlogged, "line %d: %zu logged, want "
		    "%zu", c->line, got.nlogged, c->nlogged);
	}
	policy_unref(pol);
}

int
main(void)
{
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(polfile, sizeof(polfile), "%s/policy.yaml", tmpdir);
	snprintf(logfile, sizeof(logfile), "%s/stderr", tmpdir);
	if ((logfd = open(logfile, O_RDWR | O_CREAT | O_TRUNC, 0600)) == -1 ||
	    (errfd = dup(STDERR_FILENO)) == -1 ||
	    (scratch = pattern_scratch_new()) == NULL) {
		perror(logfile);
		return 2;
	}
	log_set_level(LOG_LVL_INFO);
	test_hand();
	test_random();
	pattern_scratch_free(scratch);
	close(logfd);
	unlink(logfile);
	unlink(polfile);
	rmdir(tmpdir);
	TEST_DONE();
}
