/* Tests of proto/codec: frame reassembly, the size limit checked before
 * allocation, packing, and the error-code mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

struct got {
	unsigned n;
	uint32_t lens[16];
	uint8_t first[16];
	int stop_after;
};

static int collect_cb(void *arg, uint8_t *data, uint32_t len)
{
	struct got *g = arg;
	g->lens[g->n] = len;
	g->first[g->n] = len > 0 ? data[0] : 0;
	g->n++;
	free(data);
	return g->stop_after != 0 && (int)g->n == g->stop_after ? 42 : 0;
}

static size_t put_frame(uint8_t *p, uint8_t fill, uint32_t len)
{
	codec_put_u32be(p, len);
	memset(p + 4, fill, len);
	return len + 4;
}

static void feed_byte_by_byte_reassembles_frames(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = put_frame(buf, 'a', 5);
	n += put_frame(buf + n, 'b', 0);
	n += put_frame(buf + n, 'c', 7);
	struct frame_reader r;
	struct got g = {0};
	frame_reader_init(&r, 1024);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(
			frame_reader_feed(&r, buf + i, 1, collect_cb, &g), 0);
	}
	assert_int_equal(g.n, 3);
	assert_int_equal(g.lens[0], 5);
	assert_int_equal(g.first[0], 'a');
	assert_int_equal(g.lens[1], 0);
	assert_int_equal(g.lens[2], 7);
	assert_int_equal(g.first[2], 'c');
	frame_reader_close(&r);
}

static void feed_oversized_header_fails_before_allocation(void **state)
{
	(void)state;
	uint8_t hdr[4];
	struct frame_reader r;
	struct got g = {0};
	codec_put_u32be(hdr, 0x80000000u);
	frame_reader_init(&r, 1024);
	assert_int_equal(frame_reader_feed(&r, hdr, 4, collect_cb, &g),
			 RMQ_ETOOLARGE);
	assert_null(r.buf); /* nothing was allocated for it */
	assert_int_equal(r.len, 0x80000000u);
	assert_int_equal(g.n, 0);
	frame_reader_close(&r);
}

static void feed_at_limit_is_accepted(void **state)
{
	(void)state;
	uint8_t *buf = malloc(1024 + 4);
	struct frame_reader r;
	struct got g = {0};
	size_t n = put_frame(buf, 'z', 1024);
	frame_reader_init(&r, 1024);
	assert_int_equal(frame_reader_feed(&r, buf, n, collect_cb, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.lens[0], 1024);
	frame_reader_close(&r);
	free(buf);
}

static void feed_callback_error_stops_feeding(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = put_frame(buf, 'a', 1);
	n += put_frame(buf + n, 'b', 1);
	struct frame_reader r;
	struct got g = {.stop_after = 1};
	frame_reader_init(&r, 1024);
	assert_int_equal(frame_reader_feed(&r, buf, n, collect_cb, &g), 42);
	assert_int_equal(g.n, 1);
	frame_reader_close(&r);
}

static void close_mid_frame_releases_buffer(void **state)
{
	(void)state;
	uint8_t buf[16];
	size_t n = put_frame(buf, 'a', 10);
	struct frame_reader r;
	struct got g = {0};
	frame_reader_init(&r, 1024);
	assert_int_equal(frame_reader_feed(&r, buf, n - 3, collect_cb, &g), 0);
	assert_int_equal(g.n, 0);
	frame_reader_close(&r); /* ASan would flag the partial buffer */
}

static void pack_request_round_trips(void **state)
{
	(void)state;
	Rmq__Request req = RMQ__REQUEST__INIT;
	Rmq__PublishReq p = RMQ__PUBLISH_REQ__INIT;
	uint8_t *out;
	size_t len;
	p.queue = "orders";
	p.body.data = (uint8_t *)"hello";
	p.body.len = 5;
	p.producer_id = "prod-1";
	p.producer_seq = 77;
	req.id = 9;
	req.body_case = RMQ__REQUEST__BODY_PUBLISH;
	req.publish = &p;
	assert_int_equal(codec_pack_request(&req, &out, &len), 0);
	assert_int_equal(codec_get_u32be(out), len - 4);
	Rmq__Request *back = rmq__request__unpack(NULL, len - 4, out + 4);
	assert_non_null(back);
	assert_int_equal(back->id, 9);
	assert_int_equal(back->body_case, RMQ__REQUEST__BODY_PUBLISH);
	assert_string_equal(back->publish->queue, "orders");
	assert_int_equal(back->publish->producer_seq, 77);
	assert_memory_equal(back->publish->body.data, "hello", 5);
	rmq__request__free_unpacked(back, NULL);
	free(out);
}

static void unpack_garbage_returns_null(void **state)
{
	(void)state;
	uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x02, 0x99};
	assert_null(rmq__request__unpack(NULL, sizeof junk, junk));
}

static void error_codes_round_trip_through_wire(void **state)
{
	(void)state;
	const int errs[] = {0,
			    RMQ_ENOTLEADER,
			    RMQ_ENOTFOUND,
			    RMQ_EEXISTS,
			    RMQ_ETOOLARGE,
			    RMQ_EFULL,
			    RMQ_EUNAVAIL,
			    RMQ_ETIMEDOUT,
			    RMQ_ELEADERLOST};
	for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
		assert_int_equal(
			codec_err_from_code(codec_code_from_err(errs[i])),
			errs[i]);
		assert_non_null(codec_strerror(errs[i]));
	}
	assert_int_equal(codec_code_from_err(RMQ_EPROTO),
			 RMQ__CODE__BAD_REQUEST);
	assert_int_equal(codec_code_from_err(RMQ_EIO), RMQ__CODE__INTERNAL);
}

static void u64_big_endian_round_trips(void **state)
{
	(void)state;
	uint8_t b[8];
	codec_put_u64be(b, 0x0102030405060708ULL);
	assert_int_equal(b[0], 1);
	assert_int_equal(b[7], 8);
	assert_int_equal(codec_get_u64be(b), 0x0102030405060708ULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(feed_byte_by_byte_reassembles_frames),
		cmocka_unit_test(feed_oversized_header_fails_before_allocation),
		cmocka_unit_test(feed_at_limit_is_accepted),
		cmocka_unit_test(feed_callback_error_stops_feeding),
		cmocka_unit_test(close_mid_frame_releases_buffer),
		cmocka_unit_test(pack_request_round_trips),
		cmocka_unit_test(unpack_garbage_returns_null),
		cmocka_unit_test(error_codes_round_trip_through_wire),
		cmocka_unit_test(u64_big_endian_round_trips),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
