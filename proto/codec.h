/* Framing for the client protocol and raft commands.
 *
 * A frame is a 4-byte big-endian length followed by that many bytes of one
 * protobuf message. struct frame_reader reassembles frames from a byte
 * stream and checks the length against a maximum *before* allocating, so a
 * peer cannot make us allocate more than max_frame bytes per connection.
 *
 * Pure functions, no I/O; callable from any thread on distinct objects. */
#ifndef RMQ_CODEC_H
#define RMQ_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "raftmq.pb-c.h"
#include "command.pb-c.h"
#include "raftmq_errors.h"

#define RMQ_FRAME_HEADER 4
#define RMQ_DEFAULT_MAX_FRAME (16u * 1024 * 1024)
#define RMQ_DEFAULT_MAX_MESSAGE (8u * 1024 * 1024)

struct frame_reader {
	uint32_t max_frame; /* frames longer than this are an error */
	uint8_t hdr[RMQ_FRAME_HEADER];
	size_t hdr_have;
	uint8_t *buf; /* owned: the frame being filled, NULL between frames */
	uint32_t len; /* length of the frame being filled */
	uint32_t have;
};

/* A complete frame: @data (owned by the callee, release with free()) holds
 * @len bytes. Returning non-zero stops frame_reader_feed(). */
typedef int (*frame_cb)(void *arg, uint8_t *data, uint32_t len);

void frame_reader_init(struct frame_reader *r, uint32_t max_frame);
void frame_reader_close(struct frame_reader *r);

/* Consume @n bytes; call @cb for each complete frame. Returns 0,
 * RMQ_ETOOLARGE when a frame header announces more than max_frame (nothing
 * is allocated for it), RMQ_ENOMEM, or the first non-zero value of @cb. */
int frame_reader_feed(struct frame_reader *r, const uint8_t *data, size_t n,
		      frame_cb cb, void *arg);

void codec_put_u32be(uint8_t *p, uint32_t v);
uint32_t codec_get_u32be(const uint8_t *p);
void codec_put_u64be(uint8_t *p, uint64_t v);
uint64_t codec_get_u64be(const uint8_t *p);

/* Pack a ServerFrame / Request into a freshly malloc'd buffer with its
 * 4-byte length prefix. On 0, *out (owned by the caller) holds *out_len
 * bytes. */
int codec_pack_server_frame(const Rmq__ServerFrame *f, uint8_t **out,
			    size_t *out_len);
int codec_pack_request(const Rmq__Request *req, uint8_t **out, size_t *out_len);

/* Wire code <-> RMQ_E* error code. */
Rmq__Code codec_code_from_err(int err);
int codec_err_from_code(Rmq__Code code);

/* Human-readable text of an RMQ_E* code. */
const char *codec_strerror(int err);

#endif /* RMQ_CODEC_H */
