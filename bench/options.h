/* raftmq-bench command-line options: defaults, parsing and validation.
 * Kept apart from the load generator so the unit tests can drive it.
 *
 * Threads: any; options_parse() touches nothing but its arguments. */
#ifndef RMQ_BENCH_OPTIONS_H
#define RMQ_BENCH_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BENCH_MAX_WORKERS 256 /* producers, consumers, queues: each */
#define BENCH_MAX_PIDS 16     /* --server-pids */
#define BENCH_MIN_SIZE 16     /* the body starts with two uint64: stamp, id */
#define BENCH_MAX_SIZE (64u << 20)
#define BENCH_MAX_WINDOW 1000000u

enum bench_broker {
	BENCH_RAFTMQ,
	BENCH_RABBITMQ,
	BENCH_NATS,
};

enum bench_mode {
	BENCH_MODE_DURATION, /* publish for --warmup + --duration seconds */
	BENCH_MODE_COUNT,    /* publish --count messages, consume them all */
	BENCH_MODE_PRELOAD,  /* publish --preload messages, then consume them */
};

/* Returned by options_parse() for -h/--help. */
#define OPTIONS_HELP 1

struct bench_options {
	enum bench_broker broker;
	enum bench_mode mode;
	char servers[1024]; /* as given, or the broker's default */
	unsigned producers;
	unsigned consumers; /* 0: publish only (not with --preload) */
	unsigned queues;
	size_t size;       /* message body, bytes */
	unsigned window;   /* unconfirmed publishes per producer; 1 = latency */
	unsigned prefetch; /* unacked deliveries per consumer */
	double duration;   /* seconds measured (duration mode) */
	double warmup;     /* seconds not measured before that */
	uint64_t count;    /* messages in all (count mode) */
	uint64_t preload;  /* messages in all (preload mode) */
	double drain;      /* seconds consumers may go on without progress */
	bool json;         /* only the JSON object on stdout */
	bool progress;     /* progress line on stderr (if it is a tty) */
	char queue_prefix[49];
	int server_pids[BENCH_MAX_PIDS];
	unsigned n_server_pids;
};

void options_init(struct bench_options *o);

/* Parse argv[1..argc-1] into @o (which options_init() prepared). Returns 0,
 * OPTIONS_HELP for -h/--help, or RMQ_EINVAL with a one-line reason in
 * @err (never longer than @errlen, always terminated). */
int options_parse(struct bench_options *o, int argc, char *const argv[],
		  char *err, size_t errlen);

/* The usage text; @built names the backends compiled in, @missing the
 * others (with why). */
void options_usage(FILE *f, const char *built, const char *missing);

const char *options_broker_name(enum bench_broker b);
const char *options_mode_name(enum bench_mode m);
const char *options_default_servers(enum bench_broker b);

#endif /* RMQ_BENCH_OPTIONS_H */
