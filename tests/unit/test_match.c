/*
 * test_match.c: unit tests for policy/match.c, the policy's matchers.
 *
 * Table driven: CIDR sets (IPv4 and IPv6 boundaries, /0, /32, /128, mapped
 * addresses, overlapping and adjacent networks, bare addresses), the CIDR
 * parser, domain sets (exact names, ".suffix", case, trailing dots, names
 * that merely end in the same letters) and patterns (regexes with each
 * flag, literals, UTF-8, invalid input).  CIDR maps are checked against
 * their sets, one by one, on random maps of a fixed seed; regexes' line
 * names on a table of the cases the scan must see through or refuse;
 * joins of regexes on a table of which may be joined, and by matching
 * subjects against subsets of regexes with every flag, joined and one by
 * one.
 */

#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "test.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define MAXNETS		8		/* networks in one test set */

/* ---- CIDR sets ---------------------------------------------------------- */

static const struct cidr_case {
	const char	*nets[MAXNETS];	/* the set */
	const char	*addr;		/* the address looked up */
	int		 want;		/* in the set */
} cidr_cases[] = {
	/* IPv4 boundaries. */
	{ { "10.0.0.0/8" }, "10.0.0.0", 1 },
	{ { "10.0.0.0/8" }, "10.255.255.255", 1 },
	{ { "10.0.0.0/8" }, "9.255.255.255", 0 },
	{ { "10.0.0.0/8" }, "11.0.0.0", 0 },
	{ { "192.0.2.128/25" }, "192.0.2.127", 0 },
	{ { "192.0.2.128/25" }, "192.0.2.128", 1 },
	{ { "192.0.2.128/25" }, "192.0.2.255", 1 },
	{ { "192.0.2.128/25" }, "192.0.3.0", 0 },
	{ { "0.0.0.0/0" }, "0.0.0.0", 1 },
	{ { "0.0.0.0/0" }, "255.255.255.255", 1 },
	{ { "0.0.0.0/0" }, "::1", 0 },
	{ { "0.0.0.0/0" }, "::ffff:203.0.113.9", 1 },
	{ { "255.255.255.255/32" }, "255.255.255.255", 1 },
	{ { "255.255.255.255/32" }, "255.255.255.254", 0 },
	{ { "128.0.0.0/1" }, "127.255.255.255", 0 },
	{ { "128.0.0.0/1" }, "128.0.0.0", 1 },
	/* Bare addresses: /32 and /128. */
	{ { "192.0.2.7" }, "192.0.2.7", 1 },
	{ { "192.0.2.7" }, "192.0.2.6", 0 },
	{ { "192.0.2.7" }, "192.0.2.8", 0 },
	{ { "::1" }, "::1", 1 },
	{ { "::1" }, "::2", 0 },
	{ { "::1" }, "::", 0 },
	/* IPv6 boundaries, inside and across the 64-bit halves. */
	{ { "2001:db8::/32" }, "2001:db8::", 1 },
	{ { "2001:db8::/32" }, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1 },
	{ { "2001:db8::/32" }, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 0 },
	{ { "2001:db8::/32" }, "2001:db9::", 0 },
	{ { "2001:db8:0:1::/64" }, "2001:db8:0:1:ffff:ffff:ffff:ffff", 1 },
	{ { "2001:db8:0:1::/64" }, "2001:db8:0:0:ffff:ffff:ffff:ffff", 0 },
	{ { "2001:db8:0:1::/64" }, "2001:db8:0:2::", 0 },
	{ { "2001:db8::8000:0:0:0/65" }, "2001:db8::8000:0:0:0", 1 },
	{ { "2001:db8::8000:0:0:0/65" }, "2001:db8::ffff:ffff:ffff:ffff", 1 },
	{ { "2001:db8::8000:0:0:0/65" }, "2001:db8::7fff:ffff:ffff:ffff", 0 },
	{ { "2001:db8::8000:0:0:0/65" }, "2001:db8:0:1::", 0 },
	{ { "::/0" }, "::", 1 },
	{ { "::/0" }, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 },
	{ { "::/0" }, "192.0.2.1", 0 },
	/* A mapped client matches as IPv4, so not ::/0. */
	{ { "::/0" }, "::ffff:192.0.2.1", 0 },
	{ { "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128" },
	  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 },
	{ { "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128" },
	  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 0 },
	{ { "::/1" }, "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 },
	{ { "::/1" }, "8000::", 0 },
	/* IPv4-mapped addresses and networks. */
	{ { "10.0.0.0/8" }, "::ffff:10.1.2.3", 1 },
	{ { "10.0.0.0/8" }, "::ffff:11.1.2.3", 0 },
	{ { "::ffff:192.0.2.0/120" }, "192.0.2.5", 1 },
	{ { "::ffff:192.0.2.0/120" }, "::ffff:192.0.2.5", 1 },
	{ { "::ffff:192.0.2.0/120" }, "192.0.3.5", 0 },
	{ { "::ffff:0:0/96" }, "203.0.113.1", 1 },
	{ { "::ffff:192.0.2.7" }, "192.0.2.7", 1 },
	/* ::10.0.0.1 (IPv4-compatible) is not a mapped address. */
	{ { "10.0.0.0/8" }, "::10.0.0.1", 0 },
	/* Overlapping, nested and adjacent networks. */
	{ { "10.0.0.0/16", "10.0.0.0/8", "10.1.0.0/16", "10.0.5.0/24",
	    "12.0.0.0/8", "11.0.0.0/8" }, "11.200.0.1", 1 },
	{ { "10.0.0.0/16", "10.0.0.0/8", "10.1.0.0/16", "10.0.5.0/24",
	    "12.0.0.0/8", "11.0.0.0/8" }, "12.255.255.255", 1 },
	{ { "10.0.0.0/16", "10.0.0.0/8", "10.1.0.0/16", "10.0.5.0/24",
	    "12.0.0.0/8", "11.0.0.0/8" }, "13.0.0.0", 0 },
	{ { "10.0.0.0/16", "10.0.0.0/8", "10.1.0.0/16", "10.0.5.0/24",
	    "12.0.0.0/8", "11.0.0.0/8" }, "9.255.255.255", 0 },
	{ { "10.0.5.0/24", "10.0.0.0/16" }, "10.0.200.1", 1 },
	{ { "192.0.2.1", "192.0.2.3", "192.0.2.5" }, "192.0.2.3", 1 },
	{ { "192.0.2.1", "192.0.2.3", "192.0.2.5" }, "192.0.2.4", 0 },
	{ { "192.0.2.1", "192.0.2.3", "192.0.2.5" }, "192.0.2.6", 0 },
	{ { "192.0.2.1", "192.0.2.3", "192.0.2.5" }, "192.0.2.0", 0 },
	{ { "0.0.0.0/0", "10.0.0.0/8" }, "1.1.1.1", 1 },
	{ { "::/0", "0.0.0.0/1" }, "200.0.0.1", 0 },
	{ { "::/0", "0.0.0.0/1" }, "::ffff:100.0.0.1", 1 },
	{ { "8000::/1", "::/1" }, "8000::", 1 },
	{ { "8000::/1", "::/1" }, "::", 1 },
	/* The empty set. */
	{ { NULL }, "127.0.0.1", 0 },
	{ { NULL }, "::1", 0 },
};

/* Each case of cidr_cases[], and addresses of no IP family. */
static void
test_cidr_sets(void)
{
	struct sockaddr_storage	 ss;
	struct sockaddr_un	 sun;
	struct cidr		 nets[MAXNETS];
	struct cidr_set		*set;
	const struct cidr_case	*t;
	const char		*why;
	size_t			 i, n;

	for (i = 0; i < NELEM(cidr_cases); i++) {
		t = &cidr_cases[i];
		for (n = 0; n < MAXNETS && t->nets[n] != NULL; n++) {
			why = cidr_parse(t->nets[n], &nets[n]);
			CHECKF(why == NULL, "%s: %s", t->nets[n], why);
		}
		set = cidr_set_new(nets, n);
		CHECK(set != NULL);
		CHECKF(cidr_set_match(set, test_addr(t->addr, &ss)) == t->want,
		    "case %zu: %s in {%s, ...}: want %d", i, t->addr,
		    t->nets[0] ? t->nets[0] : "", t->want);
		cidr_set_free(set);
	}

	/* Not an IP address, or no address at all. */
	n = 0;
	CHECK(cidr_parse("0.0.0.0/0", &nets[n++]) == NULL);
	CHECK(cidr_parse("::/0", &nets[n++]) == NULL);
	set = cidr_set_new(nets, n);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	CHECK(cidr_set_match(set, (struct sockaddr *)&sun) == 0);
	CHECK(cidr_set_match(set, NULL) == 0);
	CHECK(cidr_set_match(NULL, test_addr("::1", &ss)) == 0);
	cidr_set_free(set);
	cidr_set_free(NULL);
}

/* A large set: every other /24 of 10.0.0.0/8, looked up on each side. */
static void
test_cidr_large(void)
{
	struct sockaddr_storage	 ss;
	struct cidr		*nets;
	struct cidr_set		*set;
	char			 text[64];
	size_t			 i, n = 0, bad = 0;

	if ((nets = calloc(32768, sizeof(*nets))) == NULL)
		exit(2);
	/* Backwards, so that the set has to sort them. */
	for (i = 65536; i-- > 0; ) {
		if (i % 2)
			continue;
		snprintf(text, sizeof(text), "10.%zu.%zu.0/24", i / 256,
		    i % 256);
		bad += cidr_parse(text, &nets[n++]) != NULL;
	}
	CHECK(bad == 0 && n == 32768);
	set = cidr_set_new(nets, n);
	for (i = 0; i < 65536; i += 97) {
		snprintf(text, sizeof(text), "10.%zu.%zu.%zu", i / 256,
		    i % 256, i % 251);
		bad += cidr_set_match(set, test_addr(text, &ss)) != (i % 2 == 0);
	}
	CHECKF(bad == 0, "%zu lookups wrong", bad);
	cidr_set_free(set);
	free(nets);
}

/* ---- CIDR maps ---------------------------------------------------------- */

/* A fixed-seed generator, so that a failure can be run again (splitmix64). */
static uint64_t rnd_state = 0x5eed;

static uint64_t
rnd(void)
{
	uint64_t	 z = (rnd_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Networks that nest, touch, overlap and reach both families' ends. */
static const char *const map_nets[] = {
	"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24",
	"10.1.2.128/25", "10.1.2.255", "10.1.3.0/24", "10.2.0.0/15",
	"11.0.0.0/8", "192.0.2.0/24", "192.0.2.0/25", "192.0.2.7",
	"255.255.255.0/24", "255.255.255.255", "0.0.0.0/8", "0.0.0.0",
	"128.0.0.0/1", "127.0.0.1", "::/0", "::1", "2001:db8::/32",
	"2001:db8:1::/48", "2001:db8:1::/64", "2001:db8:1:0:1::/80",
	"2001:db9::/32", "ffff::/16", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	"fe80::/10", "::ffff:198.51.100.0/120", "198.51.100.0/23",
};

/* Addresses at and beside those networks' edges, mapped ones too. */
static const char *const map_addrs[] = {
	"0.0.0.0", "0.0.0.1", "0.255.255.255", "1.0.0.0", "9.255.255.255",
	"10.0.0.0", "10.0.255.255", "10.1.0.0", "10.1.1.255", "10.1.2.0",
	"10.1.2.127", "10.1.2.128", "10.1.2.254", "10.1.2.255", "10.1.3.0",
	"10.1.3.255", "10.1.4.0", "10.1.255.255", "10.2.0.0", "10.3.255.255",
	"10.4.0.0", "10.255.255.255", "11.0.0.0", "12.0.0.0", "127.0.0.0",
	"127.0.0.1", "127.0.0.2", "127.255.255.255", "128.0.0.0",
	"192.0.2.0", "192.0.2.6", "192.0.2.7", "192.0.2.8", "192.0.2.127",
	"192.0.2.128", "192.0.2.255", "192.0.3.0", "198.51.99.255",
	"198.51.100.0", "198.51.101.255", "198.51.102.0", "255.255.254.255",
	"255.255.255.0", "255.255.255.254", "255.255.255.255", "::",
	"::1", "::2", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
	"2001:db8::", "2001:db8:0:ffff::", "2001:db8:1::", "2001:db8:1::1",
	"2001:db8:1:0:1::", "2001:db8:1:0:1:ffff:ffff:ffff",
	"2001:db8:1:0:2::", "2001:db8:1:1::", "2001:db8:ffff:ffff::",
	"2001:db9::", "2001:dba::", "fe80::1", "febf:ffff::", "fec0::",
	"fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff::",
	"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
	"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:10.1.2.255",
	"::ffff:192.0.2.7", "::ffff:198.51.100.9", "::ffff:0.0.0.0",
	"::ffff:255.255.255.255",
};

#define MAP_SETS	40		/* sets in one random map */
#define MAP_ROUNDS	200		/* random maps */

/*
 * Random maps of sets of map_nets[]: every lookup of map_addrs[] must give
 * the ids of exactly the sets holding the address (cidr_set_match()), in
 * ascending order.
 */
static void
test_cidr_map(void)
{
	struct sockaddr_storage	 ss;
	struct sockaddr_un	 sun;
	struct cidr		 nets[4];
	struct cidr_set		*sets[MAP_SETS];
	struct cidr_map		*map;
	const uint32_t		*ids;
	uint32_t		 setids[MAP_SETS], want[MAP_SETS];
	size_t			 round, i, j, k, n, nwant, got, bad = 0;
	uint32_t		 id;

	for (round = 0; round < MAP_ROUNDS; round++) {
		n = 1 + rnd() % MAP_SETS;
		for (i = 0, id = 0; i < n; i++) {
			k = 1 + rnd() % 4;
			for (j = 0; j < k; j++)
				if (cidr_parse(map_nets[rnd() % NELEM(map_nets)],
				    &nets[j]) != NULL)
					exit(2);
			sets[i] = cidr_set_new(nets, k);
			id += 1 + (uint32_t)(rnd() % 3);
			setids[i] = id;
		}
		map = cidr_map_new((const struct cidr_set *const *)sets, setids,
		    n);
		CHECK(map != NULL);
		for (j = 0; map != NULL && j < NELEM(map_addrs); j++) {
			test_addr(map_addrs[j], &ss);
			for (i = nwant = 0; i < n; i++)
				if (cidr_set_match(sets[i],
				    (struct sockaddr *)&ss))
					want[nwant++] = setids[i];
			got = cidr_map_lookup(map, (struct sockaddr *)&ss, &ids);
			if (got != nwant || (got > 0 &&
			    memcmp(ids, want, got * sizeof(*ids)) != 0)) {
				if (bad++ < 5)
					fprintf(stderr, "map round %zu: %s: %zu "
					    "sets, want %zu\n", round,
					    map_addrs[j], got, nwant);
			}
		}
		cidr_map_free(map);
		for (i = 0; i < n; i++)
			cidr_set_free(sets[i]);
	}
	CHECKF(bad == 0, "%zu lookups wrong", bad);

	/* No sets; no address; not an IP address. */
	map = cidr_map_new(NULL, NULL, 0);
	CHECK(map != NULL &&
	    cidr_map_lookup(map, test_addr("10.0.0.1", &ss), &ids) == 0);
	cidr_map_free(map);
	CHECK(cidr_parse("0.0.0.0/0", &nets[0]) == NULL);
	CHECK(cidr_parse("::/0", &nets[1]) == NULL);
	sets[0] = cidr_set_new(nets, 2);
	setids[0] = 7;
	map = cidr_map_new((const struct cidr_set *const *)sets, setids, 1);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	CHECK(cidr_map_lookup(map, (struct sockaddr *)&sun, &ids) == 0);
	CHECK(cidr_map_lookup(map, NULL, &ids) == 0);
	CHECK(cidr_map_lookup(NULL, test_addr("::1", &ss), &ids) == 0);
	CHECK(cidr_map_lookup(map, test_addr("::1", &ss), &ids) == 1 &&
	    ids[0] == 7);
	CHECK(cidr_map_lookup(map, test_addr("0.0.0.0", &ss), &ids) == 1 &&
	    ids[0] == 7);
	cidr_map_free(map);
	cidr_map_free(NULL);
	cidr_set_free(sets[0]);
}

static const struct parse_case {
	const char	*text;		/* input */
	const char	*why;		/* start of the error, or NULL */
	int		 family;	/* when valid */
	unsigned	 prefix;	/* when valid */
} parse_cases[] = {
	{ "192.0.2.0/24", NULL, AF_INET, 24 },
	{ "192.0.2.7", NULL, AF_INET, 32 },
	{ "0.0.0.0/0", NULL, AF_INET, 0 },
	{ "::1", NULL, AF_INET6, 128 },
	{ "::/0", NULL, AF_INET6, 0 },
	{ "2001:db8::/32", NULL, AF_INET6, 32 },
	{ "::ffff:192.0.2.7", NULL, AF_INET, 32 },
	{ "::ffff:192.0.2.0/120", NULL, AF_INET, 24 },
	{ "::ffff:0:0/96", NULL, AF_INET, 0 },
	{ "::ffff:0:0/95", "address bits are set", 0, 0 },
	{ "::fffe:0:0/95", NULL, AF_INET6, 95 },
	{ "10.0.0.0/33", "the prefix length must be a number from 0 to 32",
	  0, 0 },
	{ "::/129", "the prefix length must be a number from 0 to 128", 0, 0 },
	{ "10.0.0.1/8", "address bits are set past the prefix length", 0, 0 },
	{ "2001:db8::1/64", "address bits are set", 0, 0 },
	{ "10.0.0.0/", "the prefix length", 0, 0 },
	{ "10.0.0.0/8x", "the prefix length", 0, 0 },
	{ "10.0.0.0/-8", "the prefix length", 0, 0 },
	{ "10.0.0.0/+8", "the prefix length", 0, 0 },
	{ "10.0.0.0/0008", "the prefix length", 0, 0 },
	{ "10.0.0.0/8/8", "the prefix length", 0, 0 },
	{ "/8", "not an IPv4 or IPv6 address", 0, 0 },
	{ "", "not an IPv4 or IPv6 address", 0, 0 },
	{ "300.0.0.0/8", "not an IPv4 or IPv6 address", 0, 0 },
	{ "10.0.0/24", "not an IPv4 or IPv6 address", 0, 0 },
	{ " 10.0.0.0/8", "not an IPv4 or IPv6 address", 0, 0 },
	{ "localhost", "not an IPv4 or IPv6 address", 0, 0 },
	{ "fe80::1%eth0", "not an IPv4 or IPv6 address", 0, 0 },
	{ "1:2:3:4:5:6:7:8:9", "not an IPv4 or IPv6 address", 0, 0 },
	{ "0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000/1",
	  "not an IPv4 or IPv6 address", 0, 0 },
};

/* Each case of parse_cases[]. */
static void
test_cidr_parse(void)
{
	const struct parse_case	*t;
	struct cidr		 c;
	const char		*why;
	size_t			 i;

	for (i = 0; i < NELEM(parse_cases); i++) {
		t = &parse_cases[i];
		why = cidr_parse(t->text, &c);
		if (t->why == NULL)
			CHECKF(why == NULL && c.family == t->family &&
			    c.prefix == t->prefix, "\"%s\": %s, family %d, "
			    "prefix %u", t->text, why, c.family, c.prefix);
		else
			CHECKF(why != NULL && strncmp(why, t->why,
			    strlen(t->why)) == 0, "\"%s\": %s, want %s",
			    t->text, why, t->why);
	}
}

/* ---- Domain sets -------------------------------------------------------- */

static const struct domain_case {
	const char	*names[4];	/* the set */
	const char	*name;		/* looked up */
	int		 want;		/* in the set */
} domain_cases[] = {
	/* Exact names. */
	{ { "example.test" }, "example.test", 1 },
	{ { "example.test" }, "EXAMPLE.Test", 1 },
	{ { "example.test" }, "example.test.", 1 },
	{ { "example.test" }, "a.example.test", 0 },
	{ { "example.test" }, "badexample.test", 0 },
	{ { "example.test" }, "example.testx", 0 },
	{ { "example.test" }, "example", 0 },
	{ { "example.test" }, "test", 0 },
	{ { "example.test" }, "example.test..", 0 },
	/* ".example.test": the names below it, not itself. */
	{ { ".example.test" }, "example.test", 0 },
	{ { ".example.test" }, "a.example.test", 1 },
	{ { ".example.test" }, "A.B.Example.TEST.", 1 },
	{ { ".example.test" }, "badexample.test", 0 },
	{ { ".example.test" }, "a.badexample.test", 0 },
	{ { ".example.test" }, "example.test.other", 0 },
	{ { ".example.test" }, "test", 0 },
	/* Both. */
	{ { "example.test", ".example.test" }, "example.test", 1 },
	{ { "example.test", ".example.test" }, "mx.example.test", 1 },
	{ { "example.test", ".example.test" }, "xexample.test", 0 },
	/* Entries as written: case and trailing dots do not matter. */
	{ { "Example.TEST.", ".Sub.Example.test", "other.test" },
	  "example.test", 1 },
	{ { "Example.TEST.", ".Sub.Example.test", "other.test" },
	  "x.sub.example.test", 1 },
	{ { "Example.TEST.", ".Sub.Example.test", "other.test" },
	  "sub.example.test", 0 },
	{ { "Example.TEST.", ".Sub.Example.test", "other.test" },
	  "x.other.test", 0 },
	{ { "Example.TEST.", ".Sub.Example.test", "other.test" },
	  "OTHER.TEST", 1 },
	/* A suffix of one label. */
	{ { ".test" }, "anything.test", 1 },
	{ { ".test" }, "test", 0 },
	{ { ".test" }, "anything.testing", 0 },
	/* Nothing to look up. */
	{ { "example.test" }, "", 0 },
	{ { "example.test" }, ".", 0 },
	{ { NULL }, "example.test", 0 },
};

/* Each case of domain_cases[], and lengths that are not strlen(). */
static void
test_domain_sets(void)
{
	const struct domain_case	*t;
	struct domain_set		*set;
	char				 name[400];
	size_t				 i, n;

	for (i = 0; i < NELEM(domain_cases); i++) {
		t = &domain_cases[i];
		for (n = 0; n < NELEM(t->names) && t->names[n] != NULL; n++)
			;
		set = domain_set_new(t->names, n);
		CHECK(set != NULL);
		CHECKF(domain_set_match(set, t->name, strlen(t->name)) ==
		    t->want, "case %zu: \"%s\" in {%s, ...}: want %d", i,
		    t->name, t->names[0] ? t->names[0] : "", t->want);
		domain_set_free(set);
	}

	/* The length counts, not a NUL. */
	set = domain_set_new((const char *[]){ "example.test" }, 1);
	CHECK(domain_set_match(set, "example.testXYZ", 12) == 1);
	CHECK(domain_set_match(set, "example.test", 11) == 0);
	CHECK(domain_set_match(set, NULL, 0) == 0);
	/* Longer than any domain name. */
	memset(name, 'a', sizeof(name));
	memcpy(name + sizeof(name) - 13, ".example.test", 13);
	CHECK(domain_set_match(set, name, sizeof(name)) == 0);
	domain_set_free(set);
	set = domain_set_new((const char *[]){ ".example.test" }, 1);
	CHECK(domain_set_match(set, name + sizeof(name) - 250, 250) == 1);
	CHECK(domain_set_match(set, name, sizeof(name)) == 0);
	domain_set_free(set);
	CHECK(domain_set_match(NULL, "example.test", 12) == 0);
	domain_set_free(NULL);
}

/* A large set: 20,000 names, each looked up, and 20,000 that are not. */
static void
test_domain_large(void)
{
	struct domain_set	*set;
	char			**names, buf[64];
	size_t			 i, bad = 0, n = 20000;

	if ((names = calloc(n, sizeof(*names))) == NULL)
		exit(2);
	for (i = 0; i < n; i++)
		if (asprintf(&names[i], "%sd%zu.example.test", i % 2 ? "." :
		    "", i) < 0)
			exit(2);
	set = domain_set_new((const char *const *)names, n);
	for (i = 0; i < n; i++) {
		/* Odd entries are suffixes: a name below one matches. */
		snprintf(buf, sizeof(buf), "%sD%zu.example.test",
		    i % 2 ? "mx." : "", i);
		bad += !domain_set_match(set, buf, strlen(buf));
		snprintf(buf, sizeof(buf), "%sd%zu.example.test",
		    i % 2 ? "" : "mx.", i);
		bad += domain_set_match(set, buf, strlen(buf));
		snprintf(buf, sizeof(buf), "e%zu.example.test", i);
		bad += domain_set_match(set, buf, strlen(buf));
	}
	CHECKF(bad == 0, "%zu lookups wrong", bad);
	domain_set_free(set);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* ---- Patterns ----------------------------------------------------------- */

/* A string and its length, for subjects with NULs. */
#define S(s)	s, sizeof(s) - 1

static const struct pattern_case {
	const char	*pattern;	/* as in the policy */
	const char	*subject;	/* matched against */
	size_t		 len;		/* octets of subject */
	int		 want;		/* matches */
} pattern_cases[] = {
	/* Regexes: searched for anywhere unless anchored. */
	{ "/^localhost$/i", S("LOCALHOST"), 1 },
	{ "/^localhost$/i", S("localhost.example"), 0 },
	{ "/^localhost$/", S("LocalHost"), 0 },
	{ "/@spam\\.example$/", S("bob@spam.example"), 1 },
	{ "/@spam\\.example$/", S("bob@spamXexample"), 0 },
	{ "/@spam\\.example$/", S("bob@SPAM.example"), 0 },
	{ "/spam/", S("nospamhere"), 1 },
	{ "/a.b/s", S("a\nb"), 1 },
	{ "/a.b/", S("a\nb"), 0 },
	{ "/^b$/m", S("a\nb\nc"), 1 },
	{ "/^b$/", S("a\nb\nc"), 0 },
	{ "/a b c # spaces ignored/x", S("abc"), 1 },
	{ "/a b c/", S("abc"), 0 },
	{ "/^A.B$/imsx", S("a\nb"), 1 },
	{ "//", S(""), 1 },
	{ "//", S("anything"), 1 },
	{ "/^$/", S(""), 1 },
	{ "/a\\/b/", S("xa/by"), 1 },
	{ "/^Subject:.*viagra/i", S("Subject: Buy VIAGRA now"), 1 },
	{ "/^Subject:.*viagra/i", S("X-Subject: viagra"), 0 },
	/* The subject's length counts, not a NUL. */
	{ "/^ab$/", "abc", 2, 1 },
	{ "/c$/", S("ab\0c"), 1 },
	/* UTF-8. */
	{ "/^ärger$/i", S("ÄRGER"), 1 },
	{ "/^.$/", S("é"), 1 },
	{ "/^..$/", S("é"), 0 },
	{ "/^[α-ω]+$/", S("λόγος"), 0 },
	{ "/^[α-ω]+$/", S("λογοσ"), 1 },
	/* Invalid UTF-8 in the subject never breaks a UTF-8 regex. */
	{ "/^a/", S("a\xff\xfe"), 1 },
	{ "/b$/", S("\xc3(b"), 1 },
	{ "/^é$/", S("\xc3"), 0 },
	/* A regex that is not UTF-8 matches octets. */
	{ "/^\xff$/", S("\xff"), 1 },
	{ "/^\xff$/", S("\xfe"), 0 },
	/* Literals: the whole subject, ignoring case. */
	{ "Example.Test", S("example.test"), 1 },
	{ "Example.Test", S("EXAMPLE.TEST"), 1 },
	{ "Example.Test", S("example.test2"), 0 },
	{ "Example.Test", S("xexample.test"), 0 },
	{ "Example.Test", S("exampleXtest"), 0 },
	{ "Example.Test", S(""), 0 },
	{ "a/b", S("A/B"), 1 },
	{ "a+b", S("aab"), 0 },
	{ "a+b", S("A+B"), 1 },
	{ "", S(""), 1 },
	{ "", S("a"), 0 },
	{ "ab", S("ab\0"), 0 },
	{ "Ärger", S("äRGER"), 1 },
	{ "Ärger", S("ärger!"), 0 },
	{ "Ärger", S("x\xff"), 0 },
	{ "a.b", S("axb"), 0 },
};

static const struct pattern_err {
	const char	*pattern;	/* does not compile */
	const char	*err;		/* the message, start */
} pattern_errs[] = {
	{ "/(foo/", "missing closing parenthesis at offset 4 of the regex" },
	{ "/a[b/", "missing terminating ] for character class at offset 3" },
	{ "/a{2,1}/", "numbers out of order in {} quantifier at offset 5" },
	{ "/*a/", "quantifier does not follow a repeatable item at offset 0" },
	{ "/foo", "a regex needs a closing '/' (write /regex/flags)" },
	{ "/", "a regex needs a closing '/'" },
	{ "/foo/q", "unknown regex flag 'q' (the flags are i, m, s and x)" },
	{ "/foo/I", "unknown regex flag 'I'" },
	{ "/foo/g", "unknown regex flag 'g'" },
};

/* Each case of pattern_cases[] and pattern_errs[], and odd subjects. */
static void
test_patterns(void)
{
	const struct pattern_case	*t;
	struct pattern_scratch		*sc;
	struct pattern			*p;
	char				 err[256];
	size_t				 i, bad;

	if ((sc = pattern_scratch_new()) == NULL)
		exit(2);
	for (i = 0; i < NELEM(pattern_cases); i++) {
		t = &pattern_cases[i];
		p = pattern_new(t->pattern, strlen(t->pattern), err,
		    sizeof(err));
		CHECKF(p != NULL, "%s: %s", t->pattern, err);
		if (p == NULL)
			continue;
		CHECKF(pattern_match(p, t->subject, t->len, sc) == t->want,
		    "case %zu: %s on \"%.*s\": want %d", i, t->pattern,
		    (int)t->len, t->subject, t->want);
		pattern_free(p);
	}
	for (i = 0; i < NELEM(pattern_errs); i++) {
		err[0] = '\0';
		p = pattern_new(pattern_errs[i].pattern,
		    strlen(pattern_errs[i].pattern), err, sizeof(err));
		CHECKF(p == NULL && strncmp(err, pattern_errs[i].err,
		    strlen(pattern_errs[i].err)) == 0, "%s: \"%s\", want "
		    "\"%s\"", pattern_errs[i].pattern, err,
		    pattern_errs[i].err);
		pattern_free(p);
	}

	/* A NUL in the pattern is part of it; an empty subject may be NULL. */
	p = pattern_new("/^a\0b$/", 7, err, sizeof(err));
	CHECK(p != NULL && pattern_match(p, "a\0b", 3, sc) == 1);
	CHECK(p != NULL && pattern_match(p, "ab", 2, sc) == 0);
	pattern_free(p);
	p = pattern_new("/^$/", 4, err, sizeof(err));
	CHECK(p != NULL && pattern_match(p, NULL, 0, sc) == 1);
	pattern_free(p);

	/* One scratch serves many patterns, in any order. */
	p = pattern_new("/x+y/", 5, err, sizeof(err));
	for (i = 0, bad = 0; p != NULL && i < 1000; i++)
		bad += pattern_match(p, i % 2 ? "axxy" : "axxz", 4, sc) !=
		    (int)(i % 2);
	CHECK(p != NULL && bad == 0);
	pattern_free(p);
	pattern_free(NULL);
	pattern_scratch_free(sc);
	pattern_scratch_free(NULL);
}

/* ---- Line names and literals -------------------------------------------- */

static const struct name_case {
	const char	*text;		/* the pattern */
	const char	*name;		/* its line name, or NULL */
} name_cases[] = {
	{ "/^Subject:.*viagra/i", "subject" },
	{ "/^X-Mailer:\\s*Bulk/", "x-mailer" },
	{ "/^Message-Id:/", "message-id" },
	{ "/^Subject:(a|b)/", "subject" },
	{ "/^Subject:(?:a|(b|c))d/", "subject" },
	{ "/^Subject:[]|]x/", "subject" },
	{ "/^Subject:[^]|(]x/", "subject" },
	{ "/^Subject:\\|x/", "subject" },
	{ "/^Subject:\\(|x/", NULL },		/* "\(" then a top-level | */
	{ "/^Subject:x\\)|y/", NULL },
	{ "/^Subject:.*\\bwinner\\b$/s", "subject" },
	{ "/^Subject:.*é/", "subject" },
	/* An alternative of its own at the top level. */
	{ "/^Subject:a|b/", NULL },
	{ "/^Subject:[|(]x|y/", NULL },
	{ "/^Subject:(a)|b/", NULL },
	/* Where the scan could be fooled, it gives up. */
	{ "/^Subject:\\Q|\\E/", NULL },
	{ "/^Subject:x(?#(|)/", NULL },
	{ "/^Subject:[[:alpha:](]|x/", NULL },
	{ "/^Subject:\\c(|x/", NULL },
	{ "/^Subject:x#y/", NULL },
	/* The colon optional or repeated; no colon; no name. */
	{ "/^Subject:?x/", NULL },
	{ "/^Subject:*x/", NULL },
	{ "/^Subject:+x/", NULL },
	{ "/^Subject:{0}x/", NULL },
	{ "/^Subject/", NULL },
	{ "/^:x/", NULL },
	{ "/^Sub ject:x/", NULL },
	{ "/^Sub.ject:x/", NULL },
	{ "/^Subject\\:x/", NULL },
	/* Not anchored at the start, or ^ after any newline. */
	{ "/Subject:x/", NULL },
	{ "/(?m)^Subject:x/", NULL },
	{ "/^Subject:x/m", NULL },
	{ "/^Subject:x/x", NULL },
	/* Literals have none. */
	{ "^Subject: x", NULL },
	{ "Subject: x", NULL },
	{ "^Subject: é", NULL },
};

/* pattern_line_name() of each case of name_cases[], with what it claims
 * checked by matching; pattern_literal(). */
static void
test_line_names(void)
{
	struct pattern_scratch	*sc = pattern_scratch_new();
	const struct name_case	*t;
	struct pattern		*p;
	const char		*name;
	char			 err[256];
	size_t			 i, len;

	for (i = 0; i < NELEM(name_cases); i++) {
		t = &name_cases[i];
		p = pattern_new(t->text, strlen(t->text), err, sizeof(err));
		CHECKF(p != NULL, "%s: %s", t->text, err);
		if (p == NULL)
			continue;
		name = pattern_line_name(p, &len);
		if (t->name == NULL)
			CHECKF(name == NULL, "%s: name %.*s, want none",
			    t->text, (int)len, name);
		else
			CHECKF(name != NULL && len == strlen(t->name) &&
			    memcmp(name, t->name, len) == 0, "%s: name %.*s, "
			    "want %s", t->text, name ? (int)len : 4,
			    name ? name : "none", t->name);
		pattern_free(p);
	}
	/* A line name is what the lines it matches start with. */
	p = pattern_new("/^subJECT:.*x/i", 15, err, sizeof(err));
	CHECK(p != NULL && pattern_match(p, "SUBJECT: x", 10, sc) == 1);
	CHECK(p != NULL && pattern_match(p, "X-Subject: x", 12, sc) == 0);
	pattern_free(p);

	p = pattern_new("Foo@Example.test", 16, err, sizeof(err));
	CHECK(p != NULL && (name = pattern_literal(p, &len)) != NULL &&
	    len == 16 && memcmp(name, "Foo@Example.test", 16) == 0);
	CHECK(p != NULL && pattern_line_name(p, &len) == NULL);
	pattern_free(p);
	p = pattern_new("/foo/", 5, err, sizeof(err));
	CHECK(p != NULL && pattern_literal(p, &len) == NULL);
	pattern_free(p);
	p = pattern_new("föo", strlen("föo"), err, sizeof(err));
	CHECK(p != NULL && pattern_literal(p, &len) == NULL);
	pattern_free(p);
	CHECK(pattern_literal(NULL, &len) == NULL);
	CHECK(pattern_line_name(NULL, &len) == NULL);
	pattern_scratch_free(sc);
}

/* ---- Joins --------------------------------------------------------------- */

static const struct join_case {
	const char	*text;		/* the pattern */
	int		 joinable;	/* pattern_joinable() */
} join_cases[] = {
	{ "/a/", 1 },
	{ "/a/ims", 1 },
	{ "/(?<=a)b(?<!c)/", 1 },
	{ "/(?-i)a(?i:b)/", 1 },
	{ "/(?|(a)|(b))c/", 1 },
	{ "/a\\\\1/", 1 },		/* an escaped backslash, then "1" */
	{ "/\\x{e9}\\d/", 1 },
	{ "/a/x", 0 },			/* comments to the end of the line */
	{ "/a#b/", 0 },
	{ "/(?#c)a/", 0 },
	{ "/\\Qa|b\\E/", 0 },
	{ "/(a)\\1/", 0 },		/* groups by number or name */
	{ "/(a)\\g1/", 0 },
	{ "/(?<n>a)\\k<n>/", 0 },
	{ "/(?<n>a)/", 0 },
	{ "/(?'n'a)/", 0 },
	{ "/(?P<n>a)/", 0 },
	{ "/(a)(?-1)/", 0 },
	{ "/(?1)(a)/", 0 },
	{ "/(?+1)(a)/", 0 },
	{ "/a(?R)?b/", 0 },
	{ "/(?(1)a|b)(c)/", 0 },
	{ "/(?&n)(?<n>a)/", 0 },
	{ "/(*COMMIT)a/", 0 },		/* verbs, start options, callouts */
	{ "/(*UTF)a/", 0 },
	{ "/(?C1)a/", 0 },
	{ "/[(*]/", 0 },		/* refused though harmless */
	{ "literal", 0 },
	{ "non-ASCII é", 0 },
	{ "/\xff/", 0 },		/* not UTF-8: not in UTF-8 mode */
};

/* Regexes with each flag, and subjects: a join of any of them matches a
 * subject when one of them does. */
static const char *const join_res[] = {
	"/^abc$/", "/B+C/i", "/x.y/s", "/^q$/m", "/(?i)z/", "/é/",
	"/(a|b)c/", "/^$/", "/a(?i)B/", "/^(?:dyn|pool)\\d+\\./",
};
static const char *const join_subjects[] = {
	"abc", "ABC", "xbbcx", "x\ny", "xy", "a\nq\n", "q", "Z", "é", "\xc3",
	"bc", "", "nothing", "aB", "Ab", "pool12.example", "POOL12.x",
	"\xff\xfe" "abc",
};

/* pattern_joinable() of each case of join_cases[]; what joins match. */
static void
test_joins(void)
{
	struct pattern_scratch	*sc = pattern_scratch_new();
	struct pattern		*v[NELEM(join_res)], *j, *p;
	const struct join_case	*t;
	char			 err[256];
	size_t			 i, k, n, mask, bad = 0;
	int			 any;

	for (i = 0; i < NELEM(join_cases); i++) {
		t = &join_cases[i];
		p = pattern_new(t->text, strlen(t->text), err, sizeof(err));
		CHECKF(p != NULL, "%s: %s", t->text, err);
		CHECKF(pattern_joinable(p) == t->joinable, "%s: joinable %d",
		    t->text, pattern_joinable(p));
		j = pattern_join((const struct pattern *const *)&p, 1);
		CHECKF((j != NULL) == t->joinable, "%s: joined", t->text);
		pattern_free(j);
		pattern_free(p);
	}
	for (i = 0; i < NELEM(join_res); i++) {
		v[i] = pattern_new(join_res[i], strlen(join_res[i]), err,
		    sizeof(err));
		CHECKF(v[i] != NULL && pattern_joinable(v[i]), "%s: %s",
		    join_res[i], err);
	}
	/* Joins of every other subset, on every subject. */
	for (mask = 1; mask < (1u << NELEM(join_res)); mask += 3) {
		const struct pattern	*sub[NELEM(join_res)];

		for (i = n = 0; i < NELEM(join_res); i++)
			if (mask & (1u << i))
				sub[n++] = v[i];
		if ((j = pattern_join(sub, n)) == NULL) {
			bad++;
			continue;
		}
		for (k = 0; k < NELEM(join_subjects); k++) {
			const char *s = join_subjects[k];

			for (i = 0, any = 0; i < n && !any; i++)
				any = pattern_match(sub[i], s, strlen(s), sc);
			bad += pattern_match(j, s, strlen(s), sc) != any;
		}
		pattern_free(j);
	}
	CHECKF(bad == 0, "%zu joins matched otherwise", bad);
	CHECK(pattern_join(NULL, 0) == NULL);
	CHECK(!pattern_joinable(NULL));
	for (i = 0; i < NELEM(join_res); i++)
		pattern_free(v[i]);
	pattern_scratch_free(sc);
}

int
main(void)
{
	test_cidr_parse();
	test_cidr_sets();
	test_cidr_large();
	test_domain_sets();
	test_domain_large();
	test_patterns();
	test_cidr_map();
	test_line_names();
	test_joins();
	TEST_DONE();
}
