/*
 * fuzz_proxyproto.c: libFuzzer target for pp_parse() (proxy/proxy_proto.c).
 *
 * Build and run by hand until the fuzz build exists:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iproxy \
 *       tests/fuzz/fuzz_proxyproto.c proxy/proxy_proto.c -o /tmp/fz_pp
 *   cp -r tests/fuzz/corpus/proxyproto /tmp/pp_corpus
 *   /tmp/fz_pp -max_total_time=60 /tmp/pp_corpus
 *
 * Besides the sanitizers' checks (libFuzzer's input is exactly size
 * octets, so ASan sees any read past it), this checks the contract in
 * proxy_proto.h: a header never claims more octets than it was given or
 * than PP_MAX_HEADER, the parser only needs more while under the limits,
 * and results agree between an input and the same input less one octet.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

/* Aborts when cond is false, also in builds with NDEBUG. */
#define REQUIRE(cond) do {						\
	if (!(cond))							\
		abort();						\
} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char		*buf = (const char *)data;
	struct pp_result	 r, shorter;
	enum pp_status		 st, prev;

	st = pp_parse(buf, size, &r);
	switch (st) {
	case PP_OK:
		REQUIRE(r.len > 0 && r.len <= size && r.len <= PP_MAX_HEADER);
		REQUIRE(r.version == 1 || r.version == 2);
		REQUIRE(r.version == 2 || r.len <= PP_V1_MAX);
		REQUIRE(r.tlv == NULL ? r.tlvlen == 0 : (r.tlvlen > 0 &&
		    r.tlv >= buf && r.tlv + r.tlvlen == buf + r.len));
		REQUIRE(r.local || r.src.ss_family == r.dst.ss_family);
		/* The header alone parses the same; one octet less is short. */
		REQUIRE(pp_parse(buf, r.len, &shorter) == PP_OK &&
		    shorter.len == r.len);
		REQUIRE(pp_parse(buf, r.len - 1, &shorter) == PP_NEED_MORE);
		break;
	case PP_NEED_MORE:
		REQUIRE(size < PP_MAX_HEADER);
		REQUIRE(size == 0 || buf[0] != 'P' || size < PP_V1_MAX);
		break;
	case PP_BAD:
		break;
	default:
		abort();
	}
	if (st != PP_OK) {
		/* Nothing is left over from a failed parse. */
		memset(&shorter, 0, sizeof(shorter));
		REQUIRE(memcmp(&r, &shorter, sizeof(r)) == 0);
	}

	/* A bad start stays bad; what needs more had a valid start. */
	if (size > 0) {
		prev = pp_parse(buf, size - 1, &shorter);
		REQUIRE(prev != PP_BAD || st == PP_BAD);
		REQUIRE(st != PP_NEED_MORE || prev == PP_NEED_MORE);
		REQUIRE(prev != PP_OK || (st == PP_OK &&
		    r.len == shorter.len));
	}
	return 0;
}
