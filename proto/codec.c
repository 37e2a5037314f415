/* Frame reassembly and error-code mapping. See codec.h. */
#include "codec.h"

#include <stdlib.h>
#include <string.h>

void frame_reader_init(struct frame_reader *r, uint32_t max_frame)
{
	memset(r, 0, sizeof *r);
	r->max_frame = max_frame;
}

void frame_reader_close(struct frame_reader *r)
{
	free(r->buf);
	r->buf = NULL;
	r->hdr_have = 0;
	r->have = 0;
}

int frame_reader_feed(struct frame_reader *r, const uint8_t *data, size_t n,
		      frame_cb cb, void *arg)
{
	while (n > 0) {
		if (r->hdr_have < RMQ_FRAME_HEADER) {
			size_t want = RMQ_FRAME_HEADER - r->hdr_have;
			size_t take = n < want ? n : want;
			memcpy(r->hdr + r->hdr_have, data, take);
			r->hdr_have += take;
			data += take;
			n -= take;
			if (r->hdr_have < RMQ_FRAME_HEADER) {
				return 0;
			}
			r->len = codec_get_u32be(r->hdr);
			if (r->len > r->max_frame) {
				return RMQ_ETOOLARGE;
			}
			/* One spare byte so an empty frame still has a buffer. */
			r->buf = malloc((size_t)r->len + 1);
			if (r->buf == NULL) {
				return RMQ_ENOMEM;
			}
			r->have = 0;
		}
		size_t want = r->len - r->have;
		size_t take = n < want ? n : want;
		memcpy(r->buf + r->have, data, take);
		r->have += (uint32_t)take;
		data += take;
		n -= take;
		if (r->have == r->len) {
			uint8_t *frame = r->buf;
			uint32_t len = r->len;
			r->buf = NULL;
			r->hdr_have = 0;
			r->have = 0;
			int rv = cb(arg, frame, len);
			if (rv != 0) {
				return rv;
			}
		}
	}
	return 0;
}

void codec_put_u32be(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

uint32_t codec_get_u32be(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

void codec_put_u64be(uint8_t *p, uint64_t v)
{
	codec_put_u32be(p, (uint32_t)(v >> 32));
	codec_put_u32be(p + 4, (uint32_t)v);
}

uint64_t codec_get_u64be(const uint8_t *p)
{
	return (uint64_t)codec_get_u32be(p) << 32 | codec_get_u32be(p + 4);
}

static int pack_framed(const ProtobufCMessage *m, uint8_t **out,
		       size_t *out_len)
{
	size_t len = protobuf_c_message_get_packed_size(m);
	if (len > UINT32_MAX) {
		return RMQ_ETOOLARGE;
	}
	uint8_t *buf = malloc(len + RMQ_FRAME_HEADER);
	if (buf == NULL) {
		return RMQ_ENOMEM;
	}
	codec_put_u32be(buf, (uint32_t)len);
	protobuf_c_message_pack(m, buf + RMQ_FRAME_HEADER);
	*out = buf;
	*out_len = len + RMQ_FRAME_HEADER;
	return 0;
}

int codec_pack_server_frame(const Rmq__ServerFrame *f, uint8_t **out,
			    size_t *out_len)
{
	return pack_framed(&f->base, out, out_len);
}

int codec_pack_request(const Rmq__Request *req, uint8_t **out, size_t *out_len)
{
	return pack_framed(&req->base, out, out_len);
}

Rmq__Code codec_code_from_err(int err)
{
	switch (err) {
	case 0:
		return RMQ__CODE__OK;
	case RMQ_ENOTLEADER:
		return RMQ__CODE__NOT_LEADER;
	case RMQ_ENOTFOUND:
		return RMQ__CODE__NOT_FOUND;
	case RMQ_EEXISTS:
		return RMQ__CODE__EXISTS;
	case RMQ_ETOOLARGE:
		return RMQ__CODE__TOO_LARGE;
	case RMQ_EINVAL:
	case RMQ_EPROTO:
		return RMQ__CODE__BAD_REQUEST;
	case RMQ_EUNAVAIL:
	case RMQ_ESHUTDOWN:
		return RMQ__CODE__UNAVAILABLE;
	case RMQ_EFULL:
		return RMQ__CODE__FULL;
	case RMQ_ETIMEDOUT:
		return RMQ__CODE__TIMEOUT;
	case RMQ_ELEADERLOST:
		return RMQ__CODE__UNKNOWN_OUTCOME;
	default:
		return RMQ__CODE__INTERNAL;
	}
}

int codec_err_from_code(Rmq__Code code)
{
	switch (code) {
	case RMQ__CODE__OK:
		return 0;
	case RMQ__CODE__NOT_LEADER:
		return RMQ_ENOTLEADER;
	case RMQ__CODE__NOT_FOUND:
		return RMQ_ENOTFOUND;
	case RMQ__CODE__EXISTS:
		return RMQ_EEXISTS;
	case RMQ__CODE__TOO_LARGE:
		return RMQ_ETOOLARGE;
	case RMQ__CODE__BAD_REQUEST:
		return RMQ_EINVAL;
	case RMQ__CODE__UNAVAILABLE:
		return RMQ_EUNAVAIL;
	case RMQ__CODE__FULL:
		return RMQ_EFULL;
	case RMQ__CODE__TIMEOUT:
		return RMQ_ETIMEDOUT;
	case RMQ__CODE__UNKNOWN_OUTCOME:
		return RMQ_ELEADERLOST;
	default:
		return RMQ_EINTERNAL;
	}
}

const char *codec_strerror(int err)
{
	switch (err) {
	case RMQ_OK:
		return "ok";
	case RMQ_ENOMEM:
		return "out of memory";
	case RMQ_EINVAL:
		return "invalid argument";
	case RMQ_ENOTFOUND:
		return "not found";
	case RMQ_EEXISTS:
		return "already exists with other settings";
	case RMQ_ETOOLARGE:
		return "too large";
	case RMQ_EFULL:
		return "full";
	case RMQ_EIO:
		return "I/O error";
	case RMQ_ENOTLEADER:
		return "not the leader";
	case RMQ_ELEADERLOST:
		return "leadership lost, outcome unknown";
	case RMQ_ESHUTDOWN:
		return "shutting down";
	case RMQ_ETIMEDOUT:
		return "timed out";
	case RMQ_EPROTO:
		return "protocol error";
	case RMQ_ECONNECT:
		return "cannot connect";
	case RMQ_EUNAVAIL:
		return "unavailable, retry later";
	case RMQ_ECORRUPT:
		return "corrupt data";
	default:
		return "internal error";
	}
}
