/*
 * fuzz_proxyproto.c: the PROXY protocol header parser, pp_parse()
 * (proxy/proxy_proto.c), versions 1 and 2.
 *
 * The input is the start of a connection to a listener with proxy_protocol
 * on.  Besides the sanitizers' checks (libFuzzer's input is exactly size
 * octets, so AddressSanitizer sees any read past it), this checks the
 * contract in proxy_proto.h: a header never claims more octets than it was
 * given or than PP_MAX_HEADER, the parser only needs more while under the
 * limits, and results agree between an input and the same input less one
 * octet.
 */
#include "fuzz.h"
#include "proxy_proto.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char		*buf = (const char *)data;
	struct pp_result	 r, shorter;
	enum pp_status		 st, prev;
	char			*piece;

	st = pp_parse(buf, size, &r);
	switch (st) {
	case PP_OK:
		REQUIRE(r.len > 0 && r.len <= size && r.len <= PP_MAX_HEADER);
		REQUIRE(r.version == 1 || r.version == 2);
		REQUIRE(r.version == 2 || r.len <= PP_V1_MAX);
		REQUIRE(r.tlv == NULL ? r.tlvlen == 0 : (r.tlvlen > 0 &&
		    r.tlv >= buf && r.tlv + r.tlvlen == buf + r.len));
		REQUIRE(r.local || (r.src.ss_family == r.dst.ss_family &&
		    (r.src.ss_family == AF_INET ||
		    r.src.ss_family == AF_INET6)));
		/* The header alone, in a block of its own, parses the same;
		 * one octet less is short. */
		piece = fuzz_copy(buf, r.len);
		REQUIRE(pp_parse(piece, r.len, &shorter) == PP_OK &&
		    shorter.len == r.len && shorter.local == r.local &&
		    shorter.tlvlen == r.tlvlen);
		REQUIRE(pp_parse(piece, r.len - 1, &shorter) == PP_NEED_MORE);
		free(piece);
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
