/* raftmq-chaos-workload: the client side of the chaos suite.
 *
 * P producer threads, each with its own rmq_client and producer id "pN",
 * publish with confirms (rmq_publish_async, at most --window in flight) to
 * Q queues "chaos-q0".."chaos-q<Q-1>", producer N to queue N mod Q (as
 * applications mostly do: a producer per stream, so a queue whose leader
 * is being replaced does not hold up the others through a shared window),
 * at --rate messages per second each, for --duration seconds. C consumer threads, each with its
 * own rmq_client, subscribe to every queue and ack every delivery. After
 * the publish phase comes the drain: consumers go on until every queue is
 * empty (ready = unacked = 0 on the cluster) and no delivery came for
 * --drain-idle seconds, or --drain-max seconds passed.
 *
 * Every operation is one JSON line of the history (--history FILE):
 *   {"t": <unix secs>, "client": "p1", "op": "publish", "queue": "chaos-q0",
 *    "id": "p1-42", "n": 42, "outcome": "ok", "seq": 17, "t0": <invoke>,
 *    "node": <id of the node that answered, 0 if none>}
 *   {"t": ..., "client": "c0", "op": "deliver", "queue": ..., "id": ...,
 *    "seq": 17, "redelivered": false, "count": 1}
 *   {"t": ..., "client": "c0", "op": "ack", ..., "outcome": "ok"}
 * plus "phase" lines (start, drain, done) and one "final" line per queue
 * with the cluster's counters at the end. The message body is the id,
 * padded with '.' to --size bytes.
 *
 * Publish outcomes: "ok" (confirmed: stored on a majority), "fail" (a
 * definite refusal: nothing stored), "unknown" (timed out, or the client
 * was closed with it in flight: it may or may not be stored).
 *
 * Threads: producers and consumers run on their own threads; confirm and
 * delivery callbacks run on each client's I/O thread. The history file is
 * shared under one mutex. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "raftmq.h"

#define MAX_QUEUES 64
#define QUEUE_PREFIX "chaos-q"

struct opts {
	const char *servers;
	unsigned producers;
	unsigned consumers;
	unsigned queues;
	double duration;
	double drain_idle;
	double drain_max;
	size_t size;
	unsigned window;
	double rate; /* per producer, messages per second; 0: unlimited */
	unsigned prefetch;
	unsigned publish_timeout_ms;
	const char *history;
	unsigned long seed;
};

static struct opts g_opt = {
	.servers = "127.0.0.1:7101,127.0.0.2:7102,127.0.0.3:7103",
	.producers = 4,
	.consumers = 2,
	.queues = 3,
	.duration = 30,
	.drain_idle = 5,
	.drain_max = 120,
	.size = 64,
	.window = 64,
	.rate = 100,
	.prefetch = 32,
	.publish_timeout_ms = 30000,
	.history = "history.jsonl",
	.seed = 1,
};

static pthread_mutex_t g_hist_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *g_hist;
static atomic_bool g_stop_publish;
static atomic_llong g_last_delivery_ms;
static atomic_ullong g_n_ok, g_n_fail, g_n_unknown, g_n_deliver;

static double now_wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long long now_ms(void)
{
	return (long long)(now_mono() * 1000.0);
}

static void sleep_s(double s)
{
	struct timespec ts;
	if (s <= 0) {
		return;
	}
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* Append one line to the history (@line without newline). */
static void hist_write(const char *line)
{
	pthread_mutex_lock(&g_hist_mu);
	fputs(line, g_hist);
	fputc('\n', g_hist);
	pthread_mutex_unlock(&g_hist_mu);
}

static void hist_flush(void)
{
	pthread_mutex_lock(&g_hist_mu);
	fflush(g_hist);
	pthread_mutex_unlock(&g_hist_mu);
}

static void hist_phase(const char *phase)
{
	char line[256];
	snprintf(line, sizeof line,
		 "{\"t\": %.3f, \"client\": \"workload\", \"op\": \"phase\", "
		 "\"phase\": \"%s\"}",
		 now_wall(), phase);
	hist_write(line);
	hist_flush();
}

static void queue_name(unsigned i, char *buf, size_t n)
{
	snprintf(buf, n, QUEUE_PREFIX "%u", i);
}

/* ---- Producers ---------------------------------------------------------- */

struct producer {
	unsigned index;
	char name[16];
	pthread_t thread;
	struct rmq_client *client;
};

/* One publish in flight; freed by its confirm callback. */
struct pub_ctx {
	struct producer *p;
	unsigned queue;
	uint64_t n;
	double t0;
};

static const char *outcome_of(int status)
{
	switch (status) {
	case 0:
		return "ok";
	case RMQ_ETOOLARGE:
	case RMQ_ENOTFOUND:
	case RMQ_EFULL:
	case RMQ_EINVAL:
	case RMQ_EEXISTS:
		return "fail";
	default:
		/* Timed out, client closed, I/O or internal trouble: the
		 * message may or may not be stored. */
		return "unknown";
	}
}

static void json_escape(const char *in, char *out, size_t n)
{
	size_t j = 0;
	for (size_t i = 0; in[i] != '\0' && j + 7 < n; i++) {
		unsigned char ch = (unsigned char)in[i];
		if (ch == '"' || ch == '\\') {
			out[j++] = '\\';
			out[j++] = (char)ch;
		} else if (ch < 0x20) {
			j += (size_t)snprintf(out + j, n - j, "\\u%04x", ch);
		} else {
			out[j++] = (char)ch;
		}
	}
	out[j] = '\0';
}

static void confirm_cb(void *arg, int status, uint64_t seq)
{
	struct pub_ctx *x = arg;
	const char *outcome = outcome_of(status);
	char qn[32], line[768], err[256];

	if (status == 0) {
		atomic_fetch_add(&g_n_ok, 1);
	} else if (outcome[0] == 'f') {
		atomic_fetch_add(&g_n_fail, 1);
	} else {
		atomic_fetch_add(&g_n_unknown, 1);
	}
	err[0] = '\0';
	if (status != 0) {
		const char *m = rmq_last_error();
		if (m == NULL || m[0] == '\0') {
			m = rmq_strerror(status);
		}
		json_escape(m, err, sizeof err);
	}
	queue_name(x->queue, qn, sizeof qn);
	snprintf(line, sizeof line,
		 "{\"t\": %.3f, \"t0\": %.3f, \"client\": \"%s\", "
		 "\"op\": \"publish\", \"queue\": \"%s\", \"id\": \"%s-%" PRIu64
		 "\", \"n\": %" PRIu64 ", \"outcome\": \"%s\", "
		 "\"seq\": %" PRIu64 ", \"node\": %" PRIu64 "%s%s%s}",
		 now_wall(), x->t0, x->p->name, qn, x->p->name, x->n, x->n,
		 outcome, status == 0 ? seq : 0, rmq_confirm_node(),
		 status != 0 ? ", \"error\": \"" : "", err,
		 status != 0 ? "\"" : "");
	hist_write(line);
	free(x);
}

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	char *body = malloc(g_opt.size + 64);
	double interval = g_opt.rate > 0 ? 1.0 / g_opt.rate : 0;
	double next = now_mono();
	uint64_t n = 0;

	if (body == NULL) {
		fprintf(stderr, "workload: out of memory\n");
		exit(1);
	}
	while (!atomic_load(&g_stop_publish)) {
		struct pub_ctx *x = malloc(sizeof *x);
		char qn[32];
		size_t len;
		int rv;

		if (x == NULL) {
			fprintf(stderr, "workload: out of memory\n");
			exit(1);
		}
		n++;
		x->p = p;
		x->n = n;
		x->queue = (unsigned)(p->index % g_opt.queues);
		x->t0 = now_wall();
		queue_name(x->queue, qn, sizeof qn);
		len = (size_t)snprintf(body, g_opt.size + 64, "%s-%" PRIu64,
				       p->name, n);
		if (len < g_opt.size) {
			memset(body + len, '.', g_opt.size - len);
			len = g_opt.size;
		}
		rv = rmq_publish_async(p->client, qn, body, len, NULL, 0,
				       confirm_cb, x);
		if (rv != 0) {
			/* Refused before sending: the callback never fires
			 * and nothing was stored. */
			char line[512];
			snprintf(line, sizeof line,
				 "{\"t\": %.3f, \"t0\": %.3f, \"client\": "
				 "\"%s\", \"op\": \"publish\", \"queue\": "
				 "\"%s\", \"id\": \"%s-%" PRIu64 "\", \"n\": "
				 "%" PRIu64 ", \"outcome\": \"fail\", \"seq\": "
				 "0, \"error\": \"%s\"}",
				 now_wall(), x->t0, p->name, qn, p->name, n, n,
				 rmq_strerror(rv));
			hist_write(line);
			atomic_fetch_add(&g_n_fail, 1);
			free(x);
			sleep_s(0.05);
		}
		if (interval > 0) {
			double t = now_mono();
			next += interval;
			if (next < t - 1.0) {
				next = t; /* fell behind (blocked): no burst */
			}
			sleep_s(next - t);
		}
	}
	/* Wait for every confirm; what is left fires RMQ_ESHUTDOWN in
	 * rmq_close() and is recorded as unknown. */
	rmq_flush(p->client, g_opt.publish_timeout_ms + 5000);
	rmq_close(p->client, 1000);
	p->client = NULL;
	free(body);
	return NULL;
}

/* ---- Consumers ---------------------------------------------------------- */

struct consumer {
	unsigned index;
	char name[16];
	struct rmq_client *client;
	struct rmq_consumer *subs[MAX_QUEUES];
};

static void delivery_cb(void *arg, const struct rmq_delivery *d)
{
	struct consumer *k = arg;
	char raw[64], id[400], qn[300], line[1200];
	size_t i, len = d->len < sizeof raw - 1 ? d->len : sizeof raw - 1;
	const char *body = d->body;
	int rv;

	/* The id is the body up to the padding. */
	for (i = 0; i < len && body[i] != '.'; i++) {
		raw[i] = body[i];
	}
	raw[i] = '\0';
	json_escape(raw, id, sizeof id);
	json_escape(d->queue, qn, sizeof qn);
	snprintf(line, sizeof line,
		 "{\"t\": %.3f, \"client\": \"%s\", \"op\": \"deliver\", "
		 "\"queue\": \"%s\", \"id\": \"%s\", \"seq\": %" PRIu64 ", "
		 "\"redelivered\": %s, \"count\": %u, \"len\": %zu}",
		 now_wall(), k->name, qn, id, d->seq,
		 d->redelivered ? "true" : "false", d->delivery_count, d->len);
	hist_write(line);
	atomic_fetch_add(&g_n_deliver, 1);
	atomic_store(&g_last_delivery_ms, now_ms());

	rv = rmq_ack(d->consumer, d->seq);
	snprintf(line, sizeof line,
		 "{\"t\": %.3f, \"client\": \"%s\", \"op\": \"ack\", "
		 "\"queue\": \"%s\", \"id\": \"%s\", \"seq\": %" PRIu64 ", "
		 "\"outcome\": \"%s\"}",
		 now_wall(), k->name, qn, id, d->seq, rv == 0 ? "ok" : "fail");
	hist_write(line);
}

/* ---- Setup and drain ---------------------------------------------------- */

static int connect_client(const char *name, struct rmq_client **out)
{
	struct rmq_options o;
	double deadline = now_mono() + 60;
	int rv;

	rmq_options_init(&o);
	o.servers = g_opt.servers;
	o.producer_id = name;
	o.publish_window = g_opt.window;
	o.publish_timeout_ms = g_opt.publish_timeout_ms;
	o.max_backoff_ms = 500;
	o.connect_timeout_ms = 2000;
	o.request_timeout_ms = 5000;
	for (;;) {
		rv = rmq_connect(&o, out);
		if (rv == 0 || now_mono() > deadline) {
			return rv;
		}
		sleep_s(0.5);
	}
}

static void declare_queues(struct rmq_client *admin)
{
	for (unsigned i = 0; i < g_opt.queues; i++) {
		char qn[32];
		double deadline = now_mono() + 60;
		int rv;

		queue_name(i, qn, sizeof qn);
		while ((rv = rmq_queue_declare(admin, qn, NULL, NULL)) != 0) {
			if (now_mono() > deadline) {
				fprintf(stderr,
					"workload: declare %s: %s (%s)\n", qn,
					rmq_strerror(rv), rmq_last_error());
				exit(1);
			}
			sleep_s(0.5);
		}
	}
}

/* Sum of ready + unacked over our queues, or -1 if the cluster could not
 * tell. With @record, writes one "final" line per queue. */
static long long backlog(struct rmq_client *admin, bool record)
{
	struct rmq_queue_info *qs = NULL;
	size_t n = 0;
	long long sum = 0;
	unsigned seen = 0;

	if (rmq_queue_list(admin, &qs, &n) != 0) {
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (strncmp(qs[i].name, QUEUE_PREFIX, strlen(QUEUE_PREFIX)) !=
		    0) {
			continue;
		}
		seen++;
		sum += (long long)(qs[i].ready + qs[i].unacked);
		if (record) {
			char line[512];
			snprintf(line, sizeof line,
				 "{\"t\": %.3f, \"client\": \"workload\", "
				 "\"op\": \"final\", \"queue\": \"%s\", "
				 "\"ready\": %" PRIu64 ", \"unacked\": %" PRIu64
				 ", \"total\": %" PRIu64
				 ", \"leader\": %" PRIu64 "}",
				 now_wall(), qs[i].name, qs[i].ready,
				 qs[i].unacked, qs[i].total, qs[i].leader);
			hist_write(line);
		}
	}
	free(qs);
	return seen == g_opt.queues ? sum : -1;
}

/* backlog() through the first client that can tell: the consumers'
 * clients, then the admin client. The consumers' clients have followed the
 * cluster all along (deliveries, acks, leader changes); the admin client
 * sat idle since the declares. libraftmq learns nodes only from topology
 * answers and redirects, which an idle client does not get, so once the
 * membership nemesis has replaced every node the admin client knew, it
 * cannot reach the cluster any more (seen in a 600 s run: "drain gave up
 * (backlog -1)", no final counters). */
static long long backlog_any(struct consumer *cons, struct rmq_client *admin,
			     bool record)
{
	for (unsigned i = 0; i <= g_opt.consumers; i++) {
		struct rmq_client *c = i < g_opt.consumers ? cons[i].client
							   : admin;
		long long left = backlog(c, false);
		if (left >= 0) {
			return record ? backlog(c, true) : left;
		}
	}
	return -1;
}

static void usage(FILE *f)
{
	fputs("usage: raftmq-chaos-workload [--servers H:P,...] "
	      "[--producers P] [--consumers C]\n"
	      "         [--queues Q] [--duration S] [--drain-idle S] "
	      "[--drain-max S] [--size B]\n"
	      "         [--window W] [--rate R] [--prefetch K] "
	      "[--publish-timeout S]\n"
	      "         [--history FILE] [--seed N]\n"
	      "Publishes with confirms and consumes with acks; writes a "
	      "JSON-lines history.\n",
	      f);
}

static bool parse_num(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
		return false;
	}
	*out = v;
	return true;
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		double x = 0;
		bool ok = true;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (v == NULL) {
			usage(stderr);
			exit(2);
		}
		i++;
		if (strcmp(a, "--servers") == 0) {
			g_opt.servers = v;
		} else if (strcmp(a, "--history") == 0) {
			g_opt.history = v;
		} else if (strcmp(a, "--producers") == 0 &&
			   (ok = parse_num(v, 0, 256, &x))) {
			g_opt.producers = (unsigned)x;
		} else if (strcmp(a, "--consumers") == 0 &&
			   (ok = parse_num(v, 0, 256, &x))) {
			g_opt.consumers = (unsigned)x;
		} else if (strcmp(a, "--queues") == 0 &&
			   (ok = parse_num(v, 1, MAX_QUEUES, &x))) {
			g_opt.queues = (unsigned)x;
		} else if (strcmp(a, "--duration") == 0 &&
			   (ok = parse_num(v, 0, 1e6, &x))) {
			g_opt.duration = x;
		} else if (strcmp(a, "--drain-idle") == 0 &&
			   (ok = parse_num(v, 0, 1e6, &x))) {
			g_opt.drain_idle = x;
		} else if (strcmp(a, "--drain-max") == 0 &&
			   (ok = parse_num(v, 0, 1e6, &x))) {
			g_opt.drain_max = x;
		} else if (strcmp(a, "--size") == 0 &&
			   (ok = parse_num(v, 0, 1 << 20, &x))) {
			g_opt.size = (size_t)x;
		} else if (strcmp(a, "--window") == 0 &&
			   (ok = parse_num(v, 1, 100000, &x))) {
			g_opt.window = (unsigned)x;
		} else if (strcmp(a, "--rate") == 0 &&
			   (ok = parse_num(v, 0, 1e7, &x))) {
			g_opt.rate = x;
		} else if (strcmp(a, "--prefetch") == 0 &&
			   (ok = parse_num(v, 1, 100000, &x))) {
			g_opt.prefetch = (unsigned)x;
		} else if (strcmp(a, "--publish-timeout") == 0 &&
			   (ok = parse_num(v, 1, 3600, &x))) {
			g_opt.publish_timeout_ms = (unsigned)(x * 1000);
		} else if (strcmp(a, "--seed") == 0 &&
			   (ok = parse_num(v, 0, 1e18, &x))) {
			g_opt.seed = (unsigned long)x;
		} else {
			ok = false;
		}
		if (!ok) {
			fprintf(stderr, "workload: bad option %s %s\n", a, v);
			usage(stderr);
			exit(2);
		}
	}
}

int main(int argc, char **argv)
{
	struct producer *prods;
	struct consumer *cons;
	struct rmq_client *admin;
	double start, drain_start, last_report;
	long long left = -1;
	int rv;

	parse_args(argc, argv);
	g_hist = fopen(g_opt.history, "w");
	if (g_hist == NULL) {
		perror(g_opt.history);
		return 1;
	}
	srand((unsigned)g_opt.seed);
	rv = connect_client("workload-admin", &admin);
	if (rv != 0) {
		fprintf(stderr, "workload: connect %s: %s\n", g_opt.servers,
			rmq_strerror(rv));
		return 1;
	}
	declare_queues(admin);

	prods = calloc(g_opt.producers + 1, sizeof *prods);
	cons = calloc(g_opt.consumers + 1, sizeof *cons);
	if (prods == NULL || cons == NULL) {
		return 1;
	}
	atomic_store(&g_last_delivery_ms, now_ms());
	for (unsigned i = 0; i < g_opt.consumers; i++) {
		struct consumer *k = &cons[i];
		k->index = i;
		snprintf(k->name, sizeof k->name, "c%u", i);
		if ((rv = connect_client(k->name, &k->client)) != 0) {
			fprintf(stderr, "workload: connect %s: %s\n", k->name,
				rmq_strerror(rv));
			return 1;
		}
		for (unsigned q = 0; q < g_opt.queues; q++) {
			char qn[32];
			double deadline = now_mono() + 60;
			queue_name(q, qn, sizeof qn);
			while ((rv = rmq_subscribe(k->client, qn,
						   g_opt.prefetch, delivery_cb,
						   k, &k->subs[q])) != 0) {
				if (now_mono() > deadline) {
					fprintf(stderr,
						"workload: subscribe %s: %s\n",
						qn, rmq_strerror(rv));
					return 1;
				}
				sleep_s(0.5);
			}
		}
	}
	for (unsigned i = 0; i < g_opt.producers; i++) {
		struct producer *p = &prods[i];
		p->index = i;
		snprintf(p->name, sizeof p->name, "p%u", i);
		if ((rv = connect_client(p->name, &p->client)) != 0) {
			fprintf(stderr, "workload: connect %s: %s\n", p->name,
				rmq_strerror(rv));
			return 1;
		}
	}
	hist_phase("start");
	fprintf(stderr, "workload: publishing for %.0f s\n", g_opt.duration);
	for (unsigned i = 0; i < g_opt.producers; i++) {
		pthread_create(&prods[i].thread, NULL, producer_main,
			       &prods[i]);
	}

	start = now_mono();
	last_report = start;
	while (now_mono() - start < g_opt.duration) {
		sleep_s(0.2);
		hist_flush();
		if (now_mono() - last_report >= 10) {
			last_report = now_mono();
			fprintf(stderr,
				"workload: t=%.0f ok=%llu fail=%llu "
				"unknown=%llu delivered=%llu\n",
				last_report - start,
				(unsigned long long)atomic_load(&g_n_ok),
				(unsigned long long)atomic_load(&g_n_fail),
				(unsigned long long)atomic_load(&g_n_unknown),
				(unsigned long long)atomic_load(&g_n_deliver));
		}
	}
	atomic_store(&g_stop_publish, true);
	for (unsigned i = 0; i < g_opt.producers; i++) {
		pthread_join(prods[i].thread, NULL);
	}
	hist_phase("drain");
	fprintf(stderr,
		"workload: publish phase over: ok=%llu fail=%llu "
		"unknown=%llu; draining\n",
		(unsigned long long)atomic_load(&g_n_ok),
		(unsigned long long)atomic_load(&g_n_fail),
		(unsigned long long)atomic_load(&g_n_unknown));

	/* Drain: empty on the cluster, and idle for drain_idle seconds. */
	drain_start = now_mono();
	for (;;) {
		double idle =
			(double)(now_ms() - atomic_load(&g_last_delivery_ms)) /
			1000.0;
		sleep_s(0.5);
		hist_flush();
		if (now_mono() - drain_start > g_opt.drain_max) {
			fprintf(stderr,
				"workload: drain gave up after %.0f s "
				"(backlog %lld)\n",
				g_opt.drain_max, left);
			break;
		}
		if (idle < g_opt.drain_idle) {
			continue;
		}
		left = backlog_any(cons, admin, false);
		if (left == 0) {
			break;
		}
	}
	rmq_settle_flush(admin, 1000);
	for (unsigned i = 0; i < g_opt.consumers; i++) {
		rmq_settle_flush(cons[i].client, 10000);
	}
	/* Acks are applied: record the cluster's final counters. */
	for (int i = 0; i < 20 && backlog_any(cons, admin, false) < 0; i++) {
		sleep_s(0.5);
	}
	backlog_any(cons, admin, true);
	hist_phase("done");
	for (unsigned i = 0; i < g_opt.consumers; i++) {
		rmq_close(cons[i].client, 5000);
	}
	rmq_close(admin, 1000);
	fprintf(stderr,
		"workload: done: ok=%llu fail=%llu unknown=%llu "
		"delivered=%llu\n",
		(unsigned long long)atomic_load(&g_n_ok),
		(unsigned long long)atomic_load(&g_n_fail),
		(unsigned long long)atomic_load(&g_n_unknown),
		(unsigned long long)atomic_load(&g_n_deliver));
	pthread_mutex_lock(&g_hist_mu);
	fclose(g_hist);
	g_hist = NULL;
	pthread_mutex_unlock(&g_hist_mu);
	free(prods);
	free(cons);
	return 0;
}
