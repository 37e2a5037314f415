/* Tests of bench/: the log-linear latency histogram (bucket arithmetic,
 * percentiles, merge) and raftmq-bench's option parsing. A wrong bucket or
 * percentile would misreport every latency in docs/benchmarks.md; a wrong
 * option rule would run another scenario than the one asked for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hist.h"
#include "options.h"
#include "raftmq_errors.h"

/* ---- Histogram ------------------------------------------------------------- */

static struct hist *hist_new(void)
{
	struct hist *h = malloc(sizeof *h);

	assert_non_null(h);
	hist_init(h);
	return h;
}

static void hist_index_small_values_are_exact(void **state)
{
	uint64_t v;

	(void)state;
	for (v = 0; v < 256; v++) {
		assert_int_equal(hist_index(v), v);
		assert_int_equal(hist_lowest(hist_index(v)), v);
		assert_int_equal(hist_highest(hist_index(v)), v);
	}
}

/* Every value lies inside its bucket, buckets are contiguous and in order,
 * and a bucket is never wider than 1/128 of its lowest value. */
static void hist_index_buckets_tile_the_range_within_one_percent(void **state)
{
	unsigned i;

	(void)state;
	for (i = 0; i + 1 < HIST_BUCKETS; i++) {
		uint64_t lo = hist_lowest(i), hi = hist_highest(i);

		assert_true(lo <= hi);
		assert_int_equal(hist_lowest(i + 1), hi + 1);
		assert_int_equal(hist_index(lo), i);
		assert_int_equal(hist_index(hi), i);
		if (lo >= 256) {
			assert_true((hi - lo + 1) * 128 <= lo);
		}
	}
	assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
	assert_true(hist_highest(HIST_BUCKETS - 1) == UINT64_MAX);
}

static void hist_percentile_empty_is_zero(void **state)
{
	struct hist *h = hist_new();

	(void)state;
	assert_int_equal(hist_percentile(h, 50.0), 0);
	assert_int_equal(hist_percentile(h, 100.0), 0);
	assert_true(hist_mean(h) == 0.0);
	free(h);
}

/* 1..100000 µs uniformly: each percentile within 1 % of the exact one. */
static void hist_percentile_uniform_within_one_percent(void **state)
{
	static const double ps[] = {1, 10, 50, 90, 99, 99.9};
	struct hist *h = hist_new();
	uint64_t v;
	unsigned i;

	(void)state;
	for (v = 1; v <= 100000; v++) {
		hist_record(h, v);
	}
	assert_int_equal(h->total, 100000);
	for (i = 0; i < sizeof ps / sizeof ps[0]; i++) {
		double want = ps[i] * 1000.0;
		double got = (double)hist_percentile(h, ps[i]);
		assert_true(got >= want);
		assert_true(got <= want * 1.01);
	}
	assert_int_equal(hist_percentile(h, 100.0), 100000);
	assert_int_equal(hist_percentile(h, 0.0), 1);
	assert_true(hist_mean(h) == 50000.5);
	free(h);
}

/* A tail: 990 fast values and 10 slow ones; p99 is fast, p99.9 slow. */
static void hist_percentile_sees_the_tail(void **state)
{
	struct hist *h = hist_new();
	unsigned i;

	(void)state;
	for (i = 0; i < 990; i++) {
		hist_record(h, 300);
	}
	for (i = 0; i < 10; i++) {
		hist_record(h, 50000);
	}
	assert_true(hist_percentile(h, 50.0) >= 300 &&
		    hist_percentile(h, 50.0) <= 303);
	assert_true(hist_percentile(h, 99.0) <= 303);
	assert_true(hist_percentile(h, 99.1) >= 50000);
	assert_int_equal(hist_percentile(h, 99.9), 50000); /* clamped to max */
	assert_int_equal(hist_percentile(h, 100.0), 50000);
	free(h);
}

static void hist_merge_equals_recording_everything_once(void **state)
{
	struct hist *a = hist_new(), *b = hist_new(), *all = hist_new();
	uint64_t v;

	(void)state;
	for (v = 1; v < 5000000; v = v * 3 / 2 + 1) {
		hist_record((v & 1) ? a : b, v);
		hist_record(all, v);
	}
	hist_merge(a, b);
	assert_int_equal(a->total, all->total);
	assert_int_equal(a->min, all->min);
	assert_int_equal(a->max, all->max);
	assert_memory_equal(a->counts, all->counts, sizeof a->counts);
	assert_int_equal(hist_percentile(a, 99.0), hist_percentile(all, 99.0));
	hist_init(b);
	hist_merge(a, b); /* merging an empty one changes nothing */
	assert_int_equal(a->min, all->min);
	free(a);
	free(b);
	free(all);
}

/* ---- Options ---------------------------------------------------------------- */

struct parsed {
	struct bench_options o;
	char err[256];
	int rv;
};

/* Parse a NULL-terminated list of arguments (argv[0] added). */
static void parse(struct parsed *p, ...)
{
	char *argv[64];
	int argc = 0;
	va_list ap;
	char *a;

	argv[argc++] = "raftmq-bench";
	va_start(ap, p);
	while ((a = va_arg(ap, char *)) != NULL) {
		argv[argc++] = a;
	}
	va_end(ap);
	options_init(&p->o);
	p->rv = options_parse(&p->o, argc, argv, p->err, sizeof p->err);
}

static void options_parse_no_arguments_gives_defaults(void **state)
{
	struct parsed p;

	(void)state;
	parse(&p, NULL);
	assert_int_equal(p.rv, 0);
	assert_int_equal(p.o.broker, BENCH_RAFTMQ);
	assert_int_equal(p.o.mode, BENCH_MODE_DURATION);
	assert_int_equal(p.o.producers, 1);
	assert_int_equal(p.o.consumers, 1);
	assert_int_equal(p.o.queues, 1);
	assert_int_equal(p.o.size, 1024);
	assert_int_equal(p.o.window, 1000);
	assert_true(p.o.duration == 10.0);
	assert_true(p.o.progress);
	assert_false(p.o.json);
	assert_string_equal(p.o.servers, options_default_servers(BENCH_RAFTMQ));
	assert_string_equal(p.o.queue_prefix, "bench");
}

static void options_parse_every_option_is_taken(void **state)
{
	struct parsed p;

	(void)state;
	parse(&p, "--broker", "rabbitmq",
	      "--servers=127.0.0.1:25671,127.0.0.1:25672", "--producers", "4",
	      "--consumers=4", "--queues", "4", "--size", "64k", "--window",
	      "1", "--prefetch", "50", "--duration", "2.5", "--warmup", "0",
	      "--drain", "3", "--json", "--no-progress", "--server-pids",
	      "12,34,56", "--queue-prefix", "cmp_a-1", NULL);
	assert_int_equal(p.rv, 0);
	assert_int_equal(p.o.broker, BENCH_RABBITMQ);
	assert_string_equal(p.o.servers, "127.0.0.1:25671,127.0.0.1:25672");
	assert_int_equal(p.o.producers, 4);
	assert_int_equal(p.o.consumers, 4);
	assert_int_equal(p.o.queues, 4);
	assert_int_equal(p.o.size, 65536);
	assert_int_equal(p.o.window, 1);
	assert_int_equal(p.o.prefetch, 50);
	assert_true(p.o.duration == 2.5);
	assert_true(p.o.warmup == 0.0);
	assert_true(p.o.drain == 3.0);
	assert_true(p.o.json);
	assert_false(p.o.progress);
	assert_int_equal(p.o.n_server_pids, 3);
	assert_int_equal(p.o.server_pids[0], 12);
	assert_int_equal(p.o.server_pids[2], 56);
	assert_string_equal(p.o.queue_prefix, "cmp_a-1");
}

static void options_parse_count_and_preload_set_the_mode(void **state)
{
	struct parsed p;

	(void)state;
	parse(&p, "--count", "1000", NULL);
	assert_int_equal(p.rv, 0);
	assert_int_equal(p.o.mode, BENCH_MODE_COUNT);
	assert_int_equal(p.o.count, 1000);
	assert_true(p.o.warmup == 0.0);

	parse(&p, "--preload", "1000000", "--broker", "nats", NULL);
	assert_int_equal(p.rv, 0);
	assert_int_equal(p.o.mode, BENCH_MODE_PRELOAD);
	assert_int_equal(p.o.preload, 1000000);
	assert_string_equal(p.o.servers, options_default_servers(BENCH_NATS));
}

static void options_parse_help_is_not_an_error(void **state)
{
	struct parsed p;

	(void)state;
	parse(&p, "--producers", "2", "--help", NULL);
	assert_int_equal(p.rv, OPTIONS_HELP);
	parse(&p, "-h", NULL);
	assert_int_equal(p.rv, OPTIONS_HELP);
}

/* Each bad command line is refused with a reason naming the option. */
static void options_parse_bad_input_is_refused_with_a_reason(void **state)
{
	static const struct {
		const char *args[4];
		const char *reason;
	} cases[] = {
		{{"--frobnicate", "1"}, "unknown option"},
		{{"--broker", "kafka"}, "--broker"},
		{{"--producers", "0"}, "--producers"},
		{{"--producers", "3x"}, "--producers"},
		{{"--producers", "-1"}, "--producers"},
		{{"--producers", "257"}, "--producers"},
		{{"--window", "0"}, "--window"},
		{{"--size", "8"}, "--size"},
		{{"--size", "65g"}, "--size"},
		{{"--duration", "0"}, "--duration"},
		{{"--duration", "abc"}, "--duration"},
		{{"--count", "10", "--preload", "10"}, "exclude"},
		{{"--count", "10", "--duration", "5"}, "--duration"},
		{{"--count", "10", "--warmup", "1"}, "--warmup"},
		{{"--queues", "2"}, "--queues"},
		{{"--producers", "4", "--queues", "4"}, "--consumers"},
		{{"--preload", "100", "--consumers", "0"}, "--preload"},
		{{"--server-pids", "1,,2"}, "--server-pids"},
		{{"--server-pids", "abc"}, "--server-pids"},
		{{"--queue-prefix", "a.b"}, "--queue-prefix"},
		{{"--json=yes"}, "--json"},
		{{"--window"}, "needs a value"},
		{{"stray"}, "unexpected argument"},
	};
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct parsed p;
		char *argv[5] = {"raftmq-bench"};
		int argc = 1, j;

		for (j = 0; j < 4 && cases[i].args[j] != NULL; j++) {
			argv[argc++] = (char *)cases[i].args[j];
		}
		options_init(&p.o);
		p.rv = options_parse(&p.o, argc, argv, p.err, sizeof p.err);
		if (p.rv != RMQ_EINVAL ||
		    strstr(p.err, cases[i].reason) == NULL) {
			fail_msg("case %u (%s %s): rv %d, err '%s', want '%s'",
				 i, cases[i].args[0],
				 cases[i].args[1] != NULL ? cases[i].args[1]
							  : "",
				 p.rv, p.err, cases[i].reason);
		}
	}
}

static void options_parse_consumers_zero_publishes_only(void **state)
{
	struct parsed p;

	(void)state;
	parse(&p, "--producers", "4", "--queues", "4", "--consumers", "0",
	      NULL);
	assert_int_equal(p.rv, 0);
	assert_int_equal(p.o.consumers, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hist_index_small_values_are_exact),
		cmocka_unit_test(
			hist_index_buckets_tile_the_range_within_one_percent),
		cmocka_unit_test(hist_percentile_empty_is_zero),
		cmocka_unit_test(hist_percentile_uniform_within_one_percent),
		cmocka_unit_test(hist_percentile_sees_the_tail),
		cmocka_unit_test(hist_merge_equals_recording_everything_once),
		cmocka_unit_test(options_parse_no_arguments_gives_defaults),
		cmocka_unit_test(options_parse_every_option_is_taken),
		cmocka_unit_test(options_parse_count_and_preload_set_the_mode),
		cmocka_unit_test(options_parse_help_is_not_an_error),
		cmocka_unit_test(
			options_parse_bad_input_is_refused_with_a_reason),
		cmocka_unit_test(options_parse_consumers_zero_publishes_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
