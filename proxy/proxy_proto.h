/*
 * proxy_proto.h: a pure parser for the PROXY protocol header that a load
 * balancer (HAProxy, an AWS NLB, nginx, ...) puts in front of the SMTP
 * stream: version 1 (one text line) and version 2 (binary).
 *
 * Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
 *
 * Like the parsers in smtp_parse.h, pp_parse() works on the caller's
 * buffer: (buf, len) in, a status and a result struct out.  It allocates
 * nothing, keeps no state between calls and never reads past buf[len - 1];
 * the only pointer it returns points into buf.  A caller feeds it all the
 * octets received so far, from the first one, after every read.
 *
 * Choices the spec leaves to the receiver:
 *
 * - Version 1 is strict: single spaces, "TCP4" / "TCP6" / "UNKNOWN" in
 *   upper case, addresses that inet_pton() takes for the family (it refuses
 *   heading zeroes in IPv4 numbers), ports 0-65535 in decimal without sign
 *   or heading zero, CRLF and nothing else after the destination port.
 *   After "UNKNOWN" comes CRLF, or SP and anything but CR or LF up to CRLF.
 * - Version 2 with the LOCAL command is accepted whatever its family
 *   octet, as the spec requires; its block is skipped unread.
 * - Version 2 PROXY: TCP over IPv4 (0x11) and IPv6 (0x21) carry the
 *   addresses.  UNSPEC (0x00) and UNIX stream (0x31) are accepted as local
 *   (the spec's fallback for families a receiver does not implement is
 *   UNSPEC, which it may accept with the real endpoints).  Datagram
 *   families (UDP 0x12 and 0x22, UNIX datagram 0x32) are refused: they
 *   cannot describe the stream this header arrived on, so the sender is
 *   misconfigured.  Every other family octet is refused, as the spec says.
 * - Version 2 TLVs after an address block must be framed exactly: each
 *   one's length fits, and no octets are left over.  Their values (SSL
 *   sub-TLVs, CRC32C) are not looked into.
 */
#ifndef SMTPGATE_PROXY_PROTO_H
#define SMTPGATE_PROXY_PROTO_H

#include <sys/types.h>
#include <sys/socket.h>

#include <stddef.h>

/*
 * Longest version 1 header, CRLF included: "PROXY UNKNOWN" with two IPv6
 * addresses of 39 characters and two ports of 5 digits (spec 2.1).
 */
#define PP_V1_MAX	107

/*
 * Longest header of either version.  The spec sizes both formats to fit
 * the smallest TCP segment every host must accept (576 - 40 = 536 octets)
 * so that a header arrives in one piece, and Postfix (postscreen, smtpd)
 * caps headers at the same figure, so a sender set up for Postfix works
 * with us too.  That leaves 508 octets of TLVs after IPv4 addresses and 484
 * after IPv6 ones: room for HAProxy's SSL, ALPN, authority and unique-id
 * TLVs or a cloud load balancer's endpoint id.  Longer headers are
 * refused.
 */
#define PP_MAX_HEADER	536

enum pp_status {
	PP_OK = 0,	/* a complete, valid header: see struct pp_result */
	PP_NEED_MORE,	/* a valid start of a header: read more */
	PP_BAD		/* malformed, longer than the limits above, or not a
			 * PROXY header at all: close the connection */
};

struct pp_result {
	int		 version;	/* 1 or 2 */
	int		 local;		/* 1: no client address was relayed
					 * (v1 "UNKNOWN", v2 LOCAL, v2 PROXY
					 * with UNSPEC or a UNIX stream): use
					 * the connection's real endpoints,
					 * which are the proxy's */
	struct sockaddr_storage src;	/* when !local: the client, as a
					 * sockaddr_in or sockaddr_in6, port
					 * in network byte order */
	struct sockaddr_storage dst;	/* when !local: the address the client
					 * connected to, same family */
	const char	*tlv;		/* v2: the TLVs after the address
					 * block, framing checked, inside the
					 * caller's buf; NULL when there are
					 * none or the block was not read */
	size_t		 tlvlen;	/* octets at tlv */
	size_t		 len;		/* octets of header: the SMTP stream
					 * starts at buf[len] */
};

/*
 * Parses the PROXY header at the start of buf[0..len).  The first octet
 * tells the version: 'P' for 1, CR for 2; anything else is PP_BAD at once
 * (a client saying "EHLO" to a PROXY listener).
 *
 * PP_OK: *r is filled; r->len octets of buf are the header, the rest is
 * the client's.  PP_NEED_MORE: what is there can still become a valid
 * header; read more and call again with all of it.  This only happens
 * while len < PP_MAX_HEADER (len < PP_V1_MAX for version 1), so a buffer
 * of PP_MAX_HEADER octets always suffices.  PP_BAD: as soon as the octets
 * seen cannot start a valid header.  On anything but PP_OK, *r is zeroed.
 *
 * r->tlv points into buf and lives as long as the caller's buffer.  The
 * receiver must not speak (the SMTP greeting) before PP_OK (spec 2), and
 * a local result gives the proxy's own address, which the caller should
 * not trust more than a relayed client's.
 */
enum pp_status pp_parse(const char *buf, size_t len, struct pp_result *r);

#endif /* SMTPGATE_PROXY_PROTO_H */
