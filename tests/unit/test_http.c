/* Tests of server/http.c and server/metrics.c: the admin HTTP server on a
 * real loop (a client thread talks HTTP/1.0 to it on 127.0.0.1, port 0),
 * its answers when the loop is slow or the server stops, and the
 * Prometheus writers (histogram buckets, label escaping). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "metrics.h"
#include "raftmq_errors.h"

/* ---- metrics ------------------------------------------------------------ */

static void lat_record_boundaries_fall_in_their_bucket(void **state)
{
	struct lat_hist h = {0};
	(void)state;

	lat_record(&h, 0);              /* <= 100 us */
	lat_record(&h, 100000);         /* == 100 us: le is inclusive */
	lat_record(&h, 100001);         /* 250 us bucket */
	lat_record(&h, 10000000000ULL); /* == 10 s */
	lat_record(&h, 10000000001ULL); /* above every bound */
	assert_int_equal(h.counts[0], 2);
	assert_int_equal(h.counts[1], 1);
	assert_int_equal(h.counts[LAT_BUCKETS - 1], 1);
	assert_int_equal(h.counts[LAT_BUCKETS], 1);
	assert_int_equal(h.total, 5);
	assert_int_equal(lat_bound_ns(LAT_BUCKETS - 1), 10000000000ULL);
}

static void prom_hist_buckets_are_cumulative_with_inf_equal_count(void **state)
{
	struct lat_hist h = {0};
	struct sbuf b;
	size_t len;
	(void)state;

	lat_record(&h, 50000);       /* 0.0001 */
	lat_record(&h, 2000000);     /* 0.0025 */
	lat_record(&h, 20000000000); /* +Inf only */
	sbuf_init(&b);
	prom_hist(&b, "x_seconds", "shard=\"1\"", &h);
	char *text = sbuf_take(&b, &len);
	assert_non_null(text);
	assert_non_null(strstr(
		text, "x_seconds_bucket{shard=\"1\",le=\"0.0001\"} 1\n"));
	assert_non_null(
		strstr(text, "x_seconds_bucket{shard=\"1\",le=\"0.001\"} 1\n"));
	assert_non_null(strstr(
		text, "x_seconds_bucket{shard=\"1\",le=\"0.0025\"} 2\n"));
	assert_non_null(
		strstr(text, "x_seconds_bucket{shard=\"1\",le=\"10\"} 2\n"));
	assert_non_null(
		strstr(text, "x_seconds_bucket{shard=\"1\",le=\"+Inf\"} 3\n"));
	assert_non_null(strstr(text, "x_seconds_count{shard=\"1\"} 3\n"));
	assert_non_null(
		strstr(text, "x_seconds_sum{shard=\"1\"} 20.002050000\n"));
	assert_int_equal(len, strlen(text));
	free(text);
}

static void sbuf_label_value_escapes_quote_backslash_newline(void **state)
{
	struct sbuf b;
	size_t len;
	(void)state;

	sbuf_init(&b);
	sbuf_printf(&b, "q{queue=\"");
	sbuf_label_value(&b, "a\"b\\c\nd é");
	sbuf_printf(&b, "\"} %d\n", 1);
	char *text = sbuf_take(&b, &len);
	assert_string_equal(text, "q{queue=\"a\\\"b\\\\c\\nd é\"} 1\n");
	free(text);
}

static void sbuf_grows_past_its_first_chunk(void **state)
{
	struct sbuf b;
	size_t len;
	(void)state;

	sbuf_init(&b);
	for (int i = 0; i < 5000; i++) {
		sbuf_printf(&b, "%04d\n", i);
	}
	char *text = sbuf_take(&b, &len);
	assert_int_equal(len, 5 * 5000);
	assert_memory_equal(text + 5 * 4999, "4999\n", 5);
	free(text);
}

/* ---- http --------------------------------------------------------------- */

struct fixture {
	uv_loop_t loop;
	struct http *http;
	unsigned renders;
	enum http_doc last;
};

static void render_cb(void *data, enum http_doc doc, struct http_reply *out)
{
	struct fixture *f = data;
	char body[64];
	f->renders++;
	f->last = doc;
	snprintf(body, sizeof body, "doc %d\n", (int)doc);
	out->status = doc == HTTP_DOC_READYZ ? 503 : 200;
	out->content_type = "text/plain";
	out->body = strdup(body);
	out->len = strlen(body);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(
		http_start(&f->loop, "127.0.0.1:0", render_cb, f, &f->http), 0);
	assert_true(http_port(f->http) > 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	if (f->http != NULL) {
		http_stop(f->http);
	}
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
	return 0;
}

/* A request made from another thread: the raw answer lands in @answer. */
struct client {
	unsigned port;
	char request[256];
	char answer[4096];
	bool finished;
	pthread_t thread;
};

static void *client_main(void *arg)
{
	struct client *c = arg;
	struct sockaddr_in sa = {.sin_family = AF_INET};
	size_t got = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_port = htons((uint16_t)c->port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
	    write(fd, c->request, strlen(c->request)) ==
		    (ssize_t)strlen(c->request)) {
		ssize_t n;
		while (got < sizeof c->answer - 1 &&
		       (n = read(fd, c->answer + got,
				 sizeof c->answer - 1 - got)) > 0) {
			got += (size_t)n;
		}
	}
	c->answer[got] = '\0';
	if (fd >= 0) {
		close(fd);
	}
	__atomic_store_n(&c->finished, true, __ATOMIC_RELEASE);
	return NULL;
}

static void client_start(struct client *c, unsigned port, const char *method,
			 const char *path)
{
	memset(c, 0, sizeof *c);
	c->port = port;
	snprintf(c->request, sizeof c->request,
		 "%s %s HTTP/1.0\r\nHost: x\r\n\r\n", method, path);
	assert_int_equal(pthread_create(&c->thread, NULL, client_main, c), 0);
}

/* Run the loop until the client thread is done. */
static void client_wait(struct fixture *f, struct client *c)
{
	while (!__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
		uv_run(&f->loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
	pthread_join(c->thread, NULL);
}

static void http_get_is_rendered_on_the_loop(void **state)
{
	struct fixture *f = *state;
	struct client c;

	client_start(&c, http_port(f->http), "GET", "/metrics");
	client_wait(f, &c);
	assert_int_equal(f->renders, 1);
	assert_int_equal(f->last, HTTP_DOC_METRICS);
	assert_non_null(strstr(c.answer, " 200 OK\r\n"));
	assert_non_null(strstr(c.answer, "\r\n\r\ndoc 2\n"));

	client_start(&c, http_port(f->http), "GET", "/readyz");
	client_wait(f, &c);
	assert_int_equal(f->last, HTTP_DOC_READYZ);
	assert_non_null(strstr(c.answer, " 503 "));
	assert_non_null(strstr(c.answer, "\r\n\r\ndoc 1\n"));
}

static void http_unknown_path_is_404_without_the_loop(void **state)
{
	struct fixture *f = *state;
	struct client c;

	client_start(&c, http_port(f->http), "GET", "/nope");
	client_wait(f, &c);
	assert_non_null(strstr(c.answer, " 404 "));
	client_start(&c, http_port(f->http), "POST", "/metrics");
	client_wait(f, &c);
	assert_non_null(strstr(c.answer, " 405 "));
	assert_non_null(strstr(c.answer, "Allow: GET, HEAD\r\n"));
	assert_int_equal(f->renders, 0);
}

static void http_loop_not_running_answers_503_after_timeout(void **state)
{
	struct fixture *f = *state;
	struct client c;

	client_start(&c, http_port(f->http), "GET", "/healthz");
	/* Do not run the loop: the request must give up by itself. */
	pthread_join(c.thread, NULL);
	assert_non_null(strstr(c.answer, " 503 "));
	assert_non_null(strstr(c.answer, "did not answer"));
	assert_int_equal(f->renders, 0);
	/* The abandoned job is gone: a late loop run renders nothing. */
	uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(f->renders, 0);
}

static void http_stop_answers_waiting_requests_503(void **state)
{
	struct fixture *f = *state;
	struct client c;

	client_start(&c, http_port(f->http), "GET", "/api/queues");
	usleep(200 * 1000); /* the request is waiting for the loop */
	http_stop(f->http);
	f->http = NULL;
	pthread_join(c.thread, NULL);
	assert_non_null(strstr(c.answer, " 503 "));
	assert_int_equal(f->renders, 0);
}

static void http_start_bad_address_is_einval(void **state)
{
	uv_loop_t loop;
	struct http *h = NULL;
	(void)state;

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(http_start(&loop, "localhost:80", render_cb, NULL, &h),
			 RMQ_EINVAL);
	assert_int_equal(http_start(&loop, "127.0.0.1", render_cb, NULL, &h),
			 RMQ_EINVAL);
	assert_int_equal(http_start(&loop, "127.0.0.1:99999", render_cb, NULL,
				    &h),
			 RMQ_EINVAL);
	assert_null(h);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void http_start_port_taken_is_eio(void **state)
{
	struct fixture *f = *state;
	struct http *h = NULL;
	char addr[64];
	uv_loop_t loop;

	snprintf(addr, sizeof addr, "127.0.0.1:%u", http_port(f->http));
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(http_start(&loop, addr, render_cb, NULL, &h), RMQ_EIO);
	assert_null(h);
	uv_run(&loop, UV_RUN_DEFAULT); /* closes its async handle */
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(lat_record_boundaries_fall_in_their_bucket),
		cmocka_unit_test(
			prom_hist_buckets_are_cumulative_with_inf_equal_count),
		cmocka_unit_test(
			sbuf_label_value_escapes_quote_backslash_newline),
		cmocka_unit_test(sbuf_grows_past_its_first_chunk),
		cmocka_unit_test_setup_teardown(
			http_get_is_rendered_on_the_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(
			http_unknown_path_is_404_without_the_loop, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			http_loop_not_running_answers_503_after_timeout, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			http_stop_answers_waiting_requests_503, setup,
			teardown),
		cmocka_unit_test(http_start_bad_address_is_einval),
		cmocka_unit_test_setup_teardown(http_start_port_taken_is_eio,
						setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
