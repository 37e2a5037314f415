/* raftmq-bench: the load generator. Owns the threads, the publish windows,
 * the measurement phases, the progress line, the server RSS samples and
 * the final report; the backends (bench.h) only talk to their broker.
 *
 * Threads: main (setup, phases, progress, report), one per producer, one
 * per consumer, plus whatever the client libraries run. Worker counters
 * are atomics; a worker's histogram is written by one thread at a time
 * (see bench.h) and read by main only after the worker was closed.
 *
 * A run: setup (fresh queues) → consumers subscribe (unless --preload) →
 * producers publish (warmup unmeasured, then --duration measured; or
 * --count / --preload messages) → producers wait for their last confirms
 * → consumers go on until they have everything that was confirmed (or no
 * progress for --drain seconds; in duration runs at most --drain seconds)
 * → teardown (queues deleted) → report. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "raftmq_errors.h"

#define TICK_MS 100
#define DRAIN_PUBLISH_S 60 /* producers wait this long for their confirms */
#define READY_TIMEOUT_S 60 /* consumers have this long to subscribe */
#define LOG_BUDGET 50      /* error lines printed before going quiet */

/* VmRSS counts the file pages a process maps (LMDB's map, for raftmqd);
 * RssAnon is its own heap and stacks. Both are sampled. */
struct rss {
	int pid;
	long start_kib; /* VmRSS; -1: not readable */
	long max_kib;
	long last_kib;
	long anon_start_kib; /* RssAnon */
	long anon_max_kib;
};

struct bench_run {
	const struct bench_options *o;
	const struct bench_backend *be;

	atomic_bool measuring;    /* confirms/deliveries count now */
	atomic_bool e2e;          /* deliveries record publish→deliver */
	atomic_bool stop_publish; /* producers: stop, wait for confirms */
	atomic_bool stop_consume; /* consumers: close */
	atomic_uint producers_left;
	atomic_uint consumers_ready;

	struct bench_worker *prod; /* owned, o->producers */
	struct bench_worker *cons; /* owned, o->consumers */
	pthread_t *prod_th;        /* owned */
	pthread_t *cons_th;        /* owned */
	bool cons_started;

	uint64_t t_start;       /* producers started */
	uint64_t t_measure;     /* measurement began */
	uint64_t t_measure_end; /* measurement ended (duration mode) */
	uint64_t t_consume;     /* consumers started (preload mode) */
	uint64_t backlog_at_end;
	uint64_t unconfirmed; /* publishes never confirmed nor failed */

	struct rss rss[BENCH_MAX_PIDS];
	unsigned n_rss;

	bool tty;          /* progress line on */
	uint64_t last_pub; /* progress: totals at the previous line */
	uint64_t last_con;
};

static const struct bench_options *g_opts; /* for bench_log() */
static atomic_int g_logged;
static volatile sig_atomic_t g_interrupted;

/* ---- Helpers for the backends ------------------------------------------ */

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bench_body_stamp(const void *body, size_t len)
{
	uint64_t v;

	if (len < sizeof v) {
		return 0;
	}
	memcpy(&v, body, sizeof v);
	return v;
}

void bench_log(const struct bench_worker *w, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n = atomic_fetch_add(&g_logged, 1);

	if (n > LOG_BUDGET) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (w != NULL) {
		fprintf(stderr, "\nraftmq-bench: %s %s %u: %s\n",
			options_broker_name(g_opts->broker),
			w->producer ? "producer" : "consumer", w->idx, msg);
	} else {
		fprintf(stderr, "\nraftmq-bench: %s: %s\n",
			options_broker_name(g_opts->broker), msg);
	}
	if (n == LOG_BUDGET) {
		fprintf(stderr,
			"raftmq-bench: further errors are counted, not printed\n");
	}
}

unsigned bench_list_len(const char *list)
{
	unsigned n = 1;

	for (; *list != '\0'; list++) {
		n += *list == ',';
	}
	return n;
}

void bench_list_item(const char *list, unsigned i, char *out, size_t n)
{
	unsigned k = i % bench_list_len(list);
	const char *end;
	size_t len;

	while (k > 0) {
		list = strchr(list, ',') + 1;
		k--;
	}
	end = strchr(list, ',');
	len = end != NULL ? (size_t)(end - list) : strlen(list);
	if (len >= n) {
		len = n - 1;
	}
	memcpy(out, list, len);
	out[len] = '\0';
}

void bench_confirmed(struct bench_worker *w, uint64_t sent_ns, bool ok)
{
	uint64_t now = bench_now_ns();

	if (ok) {
		atomic_fetch_add(&w->done, 1);
		if (atomic_load(&w->run->measuring)) {
			hist_record(&w->lat,
				    now > sent_ns ? (now - sent_ns) / 1000 : 0);
			atomic_fetch_add(&w->measured, 1);
			w->last_ns = now;
		}
	} else {
		atomic_fetch_add(&w->errors, 1);
	}
	pthread_mutex_lock(&w->mu);
	atomic_fetch_sub(&w->inflight, 1);
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

void bench_delivered(struct bench_worker *w, const void *body, size_t len)
{
	uint64_t now = bench_now_ns(), sent;

	atomic_fetch_add(&w->done, 1);
	if (!atomic_load(&w->run->measuring)) {
		return;
	}
	atomic_fetch_add(&w->measured, 1);
	w->last_ns = now;
	if (atomic_load(&w->run->e2e)) {
		sent = bench_body_stamp(body, len);
		if (sent != 0) {
			hist_record(&w->lat,
				    now > sent ? (now - sent) / 1000 : 0);
		}
	}
}

/* ---- Workers -------------------------------------------------------------- */

static void worker_init(struct bench_worker *w, struct bench_run *r,
			unsigned idx, bool producer)
{
	pthread_condattr_t ca;

	w->run = r;
	w->o = r->o;
	w->idx = idx;
	w->queue_no = idx % r->o->queues;
	snprintf(w->queue, sizeof w->queue, "%s-%u", r->o->queue_prefix,
		 w->queue_no);
	w->producer = producer;
	hist_init(&w->lat);
	atomic_init(&w->done, 0);
	atomic_init(&w->measured, 0);
	atomic_init(&w->errors, 0);
	atomic_init(&w->inflight, 0);
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
}

static void worker_destroy(struct bench_worker *w)
{
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cond);
}

/* Wait until at most @limit publishes of @w are unconfirmed. Gives up with
 * RMQ_ETIMEDOUT at @deadline_ns (0: none), or RMQ_ESHUTDOWN when
 * @stoppable and publishing was stopped. */
static int window_wait(struct bench_worker *w, uint64_t limit,
		       uint64_t deadline_ns, bool stoppable)
{
	const struct bench_backend *be = w->run->be;
	int rv;

	while (atomic_load(&w->inflight) > limit) {
		if (deadline_ns != 0 && bench_now_ns() >= deadline_ns) {
			return RMQ_ETIMEDOUT;
		}
		if (stoppable && atomic_load(&w->run->stop_publish)) {
			return RMQ_ESHUTDOWN;
		}
		if (be->wait != NULL) {
			rv = be->wait(w, TICK_MS);
			if (rv != 0) {
				return rv;
			}
			continue;
		}
		pthread_mutex_lock(&w->mu);
		if (atomic_load(&w->inflight) > limit) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += TICK_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&w->cond, &w->mu, &ts);
		}
		pthread_mutex_unlock(&w->mu);
	}
	return 0;
}

/* This producer's share of @total messages. */
static uint64_t share(uint64_t total, unsigned n, unsigned idx)
{
	return total / n + (idx < total % n ? 1 : 0);
}

static void *producer_main(void *arg)
{
	struct bench_worker *w = arg;
	struct bench_run *r = w->run;
	const struct bench_options *o = r->o;
	uint64_t quota = UINT64_MAX, sent = 0, id, left;
	unsigned char *body;
	int rv;

	if (o->mode == BENCH_MODE_COUNT) {
		quota = share(o->count, o->producers, w->idx);
	} else if (o->mode == BENCH_MODE_PRELOAD) {
		quota = share(o->preload, o->producers, w->idx);
	}
	body = malloc(o->size);
	if (body == NULL) {
		bench_log(w, "out of memory");
		atomic_fetch_add(&w->errors, 1);
		goto out;
	}
	memset(body, 'x', o->size);
	rv = r->be->producer_open(w);
	if (rv != 0) {
		atomic_fetch_add(&w->errors, 1);
		goto out_after_body;
	}
	while (sent < quota && !atomic_load(&r->stop_publish)) {
		uint64_t now;

		if (window_wait(w, o->window - 1, 0, true) != 0) {
			break;
		}
		now = bench_now_ns();
		id = ((uint64_t)w->idx << 48) | sent;
		memcpy(body, &now, sizeof now);
		memcpy(body + 8, &id, sizeof id);
		atomic_fetch_add(&w->inflight, 1);
		rv = r->be->publish(w, body, o->size);
		if (rv != 0) {
			atomic_fetch_sub(&w->inflight, 1);
			atomic_fetch_add(&w->errors, 1);
			break;
		}
		sent++;
	}
	rv = window_wait(w, 0, bench_now_ns() + DRAIN_PUBLISH_S * 1000000000ull,
			 false);
	left = atomic_load(&w->inflight);
	if (rv != 0 && left > 0) {
		bench_log(w, "%llu publishes still unconfirmed after %d s",
			  (unsigned long long)left, DRAIN_PUBLISH_S);
	}
	r->be->producer_close(w);
	/* Confirms that never came are neither ok nor failed: count them. */
	atomic_fetch_add(&w->errors, atomic_load(&w->inflight));
	atomic_store(&w->inflight, 0);
out_after_body:
	free(body);
out:
	atomic_fetch_sub(&r->producers_left, 1);
	return NULL;
}

static void *consumer_main(void *arg)
{
	struct bench_worker *w = arg;
	struct bench_run *r = w->run;
	int rv;

	rv = r->be->consumer_open(w);
	if (rv != 0) {
		atomic_fetch_add(&w->errors, 1);
		atomic_fetch_add(&r->consumers_ready, 1);
		return NULL;
	}
	atomic_fetch_add(&r->consumers_ready, 1);
	while (!atomic_load(&r->stop_consume)) {
		rv = r->be->consume(w, TICK_MS);
		if (rv != 0) {
			atomic_fetch_add(&w->errors, 1);
			break;
		}
	}
	r->be->consumer_close(w);
	return NULL;
}

/* ---- Sums, RSS, progress ------------------------------------------------ */

static uint64_t sum_done(const struct bench_worker *ws, unsigned n)
{
	uint64_t s = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		s += atomic_load(&ws[i].done);
	}
	return s;
}

static uint64_t sum_errors(const struct bench_run *r)
{
	uint64_t s = 0;
	unsigned i;

	for (i = 0; i < r->o->producers; i++) {
		s += atomic_load(&r->prod[i].errors);
	}
	for (i = 0; i < r->o->consumers; i++) {
		s += atomic_load(&r->cons[i].errors);
	}
	return s;
}

/* VmRSS and RssAnon of @pid in KiB; -1 if unreadable. */
static long read_rss_kib(int pid, long *anon_kib)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	*anon_kib = -1;
	snprintf(path, sizeof path, "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (f == NULL) {
		return -1;
	}
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
		} else if (strncmp(line, "RssAnon:", 8) == 0) {
			*anon_kib = strtol(line + 8, NULL, 10);
		}
	}
	fclose(f);
	return kib;
}

static void rss_sample(struct bench_run *r)
{
	unsigned i;

	for (i = 0; i < r->n_rss; i++) {
		struct rss *s = &r->rss[i];
		long anon, kib = read_rss_kib(s->pid, &anon);

		if (kib < 0) {
			continue;
		}
		if (s->start_kib < 0) {
			s->start_kib = kib;
			s->anon_start_kib = anon;
		}
		if (kib > s->max_kib) {
			s->max_kib = kib;
		}
		if (anon > s->anon_max_kib) {
			s->anon_max_kib = anon;
		}
		s->last_kib = kib;
	}
}

static const char *phase_name(const struct bench_run *r)
{
	if (r->o->mode == BENCH_MODE_PRELOAD) {
		return r->cons_started ? "consume" : "preload";
	}
	if (atomic_load(&r->stop_publish) ||
	    atomic_load(&r->producers_left) == 0) {
		return "drain";
	}
	return atomic_load(&r->measuring) ? "measure" : "warmup";
}

static void progress(struct bench_run *r, uint64_t now)
{
	uint64_t pub = sum_done(r->prod, r->o->producers);
	uint64_t con = sum_done(r->cons, r->o->consumers);
	double t = (double)(now - r->t_start) / 1e9;

	if (!r->tty) {
		return;
	}
	fprintf(stderr,
		"\r[%6.1fs] %-7s pub %8.0f/s confirmed %10llu | con %8.0f/s "
		"consumed %10llu | errors %llu   ",
		t, phase_name(r), (double)(pub - r->last_pub),
		(unsigned long long)pub, (double)(con - r->last_con),
		(unsigned long long)con, (unsigned long long)sum_errors(r));
	fflush(stderr);
	r->last_pub = pub;
	r->last_con = con;
}

/* One main-loop tick: sleep, then RSS + progress once a second. */
static void tick(struct bench_run *r, uint64_t *next_second)
{
	struct timespec ts = {0, TICK_MS * 1000000L};
	uint64_t now;

	nanosleep(&ts, NULL);
	now = bench_now_ns();
	if (now >= *next_second) {
		rss_sample(r);
		progress(r, now);
		*next_second += 1000000000ull;
		if (*next_second < now) {
			*next_second = now + 1000000000ull;
		}
	}
}

static void on_sigint(int sig)
{
	(void)sig;
	g_interrupted = 1;
}

/* ---- Phases ---------------------------------------------------------------- */

static int start_consumers(struct bench_run *r, uint64_t *next_second)
{
	const struct bench_options *o = r->o;
	uint64_t deadline;
	unsigned i;

	for (i = 0; i < o->consumers; i++) {
		if (pthread_create(&r->cons_th[i], NULL, consumer_main,
				   &r->cons[i]) != 0) {
			fprintf(stderr,
				"raftmq-bench: cannot start a thread\n");
			abort();
		}
	}
	r->cons_started = true;
	deadline = bench_now_ns() + READY_TIMEOUT_S * 1000000000ull;
	while (atomic_load(&r->consumers_ready) < o->consumers) {
		if (bench_now_ns() > deadline || g_interrupted) {
			fprintf(stderr,
				"raftmq-bench: consumers not subscribed after %d s\n",
				READY_TIMEOUT_S);
			return RMQ_ETIMEDOUT;
		}
		tick(r, next_second);
	}
	return 0;
}

/* Publishing, until the producers are done. */
static void run_producers(struct bench_run *r, uint64_t *next_second)
{
	const struct bench_options *o = r->o;
	unsigned i;

	r->t_start = bench_now_ns();
	*next_second = r->t_start + 1000000000ull;
	if (o->mode != BENCH_MODE_DURATION || o->warmup <= 0.0) {
		r->t_measure = r->t_start;
		atomic_store(&r->measuring, true);
	}
	for (i = 0; i < o->producers; i++) {
		if (pthread_create(&r->prod_th[i], NULL, producer_main,
				   &r->prod[i]) != 0) {
			fprintf(stderr,
				"raftmq-bench: cannot start a thread\n");
			abort();
		}
	}
	while (atomic_load(&r->producers_left) > 0) {
		uint64_t now;

		tick(r, next_second);
		now = bench_now_ns();
		if (g_interrupted && !atomic_load(&r->stop_publish)) {
			atomic_store(&r->stop_publish, true);
		}
		if (o->mode != BENCH_MODE_DURATION) {
			continue;
		}
		if (!atomic_load(&r->measuring) && r->t_measure_end == 0 &&
		    now >= r->t_start + (uint64_t)(o->warmup * 1e9)) {
			r->t_measure = now;
			atomic_store(&r->measuring, true);
		}
		if (atomic_load(&r->measuring) &&
		    (now >= r->t_measure + (uint64_t)(o->duration * 1e9) ||
		     atomic_load(&r->stop_publish))) {
			atomic_store(&r->measuring, false);
			r->t_measure_end = now;
			atomic_store(&r->stop_publish, true);
			uint64_t pub = sum_done(r->prod, o->producers);
			uint64_t con = sum_done(r->cons, o->consumers);
			r->backlog_at_end = pub > con ? pub - con : 0;
		}
	}
	for (i = 0; i < o->producers; i++) {
		pthread_join(r->prod_th[i], NULL);
	}
	if (o->mode == BENCH_MODE_DURATION && r->t_measure_end == 0) {
		/* Every producer failed before the end. */
		r->t_measure_end = bench_now_ns();
		atomic_store(&r->measuring, false);
	}
}

/* Consumers go on until they have everything confirmed, or no progress
 * for --drain seconds (duration runs: at most --drain seconds). */
static void drain_consumers(struct bench_run *r, uint64_t *next_second)
{
	const struct bench_options *o = r->o;
	uint64_t target = sum_done(r->prod, o->producers);
	uint64_t drain_ns = (uint64_t)(o->drain * 1e9);
	uint64_t start = bench_now_ns(), last_change = start;
	uint64_t seen = sum_done(r->cons, o->consumers);

	while (!g_interrupted) {
		uint64_t now, got = sum_done(r->cons, o->consumers);

		if (got >= target) {
			break;
		}
		now = bench_now_ns();
		if (got != seen) {
			seen = got;
			last_change = now;
		}
		if (o->mode == BENCH_MODE_DURATION
			    ? now - start >= drain_ns
			    : now - last_change >= drain_ns) {
			if (o->mode != BENCH_MODE_DURATION) {
				bench_log(
					NULL,
					"consumers stalled at %llu of %llu messages",
					(unsigned long long)got,
					(unsigned long long)target);
			}
			break;
		}
		tick(r, next_second);
	}
}

/* ---- Report ---------------------------------------------------------------- */

static void add_latency(cJSON *obj, const char *key, const struct hist *h)
{
	cJSON *l;

	if (h->total == 0) {
		cJSON_AddNullToObject(obj, key);
		return;
	}
	l = cJSON_AddObjectToObject(obj, key);
	cJSON_AddNumberToObject(l, "count", (double)h->total);
	cJSON_AddNumberToObject(l, "mean", hist_mean(h));
	cJSON_AddNumberToObject(l, "p50", (double)hist_percentile(h, 50.0));
	cJSON_AddNumberToObject(l, "p90", (double)hist_percentile(h, 90.0));
	cJSON_AddNumberToObject(l, "p99", (double)hist_percentile(h, 99.0));
	cJSON_AddNumberToObject(l, "p999", (double)hist_percentile(h, 99.9));
	cJSON_AddNumberToObject(l, "max", (double)hist_percentile(h, 100.0));
}

struct side {
	uint64_t total;    /* confirms / deliveries, all phases */
	uint64_t measured; /* inside the measurement */
	uint64_t errors;
	double seconds;
	double rate;
	double mbps;
	struct hist lat;
};

static void sum_side(const struct bench_run *r, struct bench_worker *ws,
		     unsigned n, uint64_t from, uint64_t to_duration,
		     struct side *s)
{
	uint64_t last = 0;
	unsigned i;

	memset(s, 0, sizeof *s);
	hist_init(&s->lat);
	for (i = 0; i < n; i++) {
		s->total += atomic_load(&ws[i].done);
		s->measured += atomic_load(&ws[i].measured);
		s->errors += atomic_load(&ws[i].errors);
		hist_merge(&s->lat, &ws[i].lat);
		if (ws[i].last_ns > last) {
			last = ws[i].last_ns;
		}
	}
	/* Duration runs: the measurement window. Others: from the start of
	 * the phase to the last confirm / delivery. */
	if (r->o->mode == BENCH_MODE_DURATION) {
		s->seconds = (double)(to_duration - from) / 1e9;
	} else {
		s->seconds = last > from ? (double)(last - from) / 1e9 : 0.0;
	}
	if (s->seconds > 0) {
		s->rate = (double)s->measured / s->seconds;
		s->mbps = s->rate * (double)r->o->size / 1e6;
	}
}

static cJSON *report_json(const struct bench_run *r, const struct side *pub,
			  const struct side *con, uint64_t errors)
{
	const struct bench_options *o = r->o;
	cJSON *root = cJSON_CreateObject(), *p, *x, *arr;
	unsigned i;
	long rss_max = -1, anon_max = -1;

	cJSON_AddStringToObject(root, "broker", options_broker_name(o->broker));
	p = cJSON_AddObjectToObject(root, "params");
	cJSON_AddStringToObject(p, "servers", o->servers);
	cJSON_AddStringToObject(p, "mode", options_mode_name(o->mode));
	cJSON_AddNumberToObject(p, "producers", o->producers);
	cJSON_AddNumberToObject(p, "consumers", o->consumers);
	cJSON_AddNumberToObject(p, "queues", o->queues);
	cJSON_AddNumberToObject(p, "size", (double)o->size);
	cJSON_AddNumberToObject(p, "window", o->window);
	cJSON_AddNumberToObject(p, "prefetch", o->prefetch);
	cJSON_AddNumberToObject(p, "duration_s", o->duration);
	cJSON_AddNumberToObject(p, "warmup_s", o->warmup);
	cJSON_AddNumberToObject(p, "count", (double)o->count);
	cJSON_AddNumberToObject(p, "preload", (double)o->preload);

	x = cJSON_AddObjectToObject(root, "publish");
	cJSON_AddNumberToObject(x, "msgs_per_s", pub->rate);
	cJSON_AddNumberToObject(x, "mb_per_s", pub->mbps);
	cJSON_AddNumberToObject(x, "confirmed", (double)pub->total);
	cJSON_AddNumberToObject(x, "measured", (double)pub->measured);
	cJSON_AddNumberToObject(x, "seconds", pub->seconds);
	cJSON_AddNumberToObject(x, "errors", (double)pub->errors);
	add_latency(x, "confirm_latency_us", &pub->lat);

	x = cJSON_AddObjectToObject(root, "consume");
	cJSON_AddNumberToObject(x, "msgs_per_s", con->rate);
	cJSON_AddNumberToObject(x, "mb_per_s", con->mbps);
	cJSON_AddNumberToObject(x, "consumed", (double)con->total);
	cJSON_AddNumberToObject(x, "measured", (double)con->measured);
	cJSON_AddNumberToObject(x, "seconds", con->seconds);
	cJSON_AddNumberToObject(x, "errors", (double)con->errors);
	if (o->mode == BENCH_MODE_DURATION) {
		cJSON_AddNumberToObject(x, "backlog_at_end",
					(double)r->backlog_at_end);
	}
	add_latency(x, "e2e_latency_us", &con->lat);

	cJSON_AddNumberToObject(root, "errors", (double)errors);

	arr = cJSON_AddArrayToObject(root, "server_rss");
	for (i = 0; i < r->n_rss; i++) {
		const struct rss *s = &r->rss[i];
		cJSON *e = cJSON_CreateObject();

		cJSON_AddNumberToObject(e, "pid", s->pid);
		if (s->start_kib < 0) {
			cJSON_AddNullToObject(e, "start_kib");
			cJSON_AddNullToObject(e, "max_kib");
			cJSON_AddNullToObject(e, "last_kib");
			cJSON_AddNullToObject(e, "anon_start_kib");
			cJSON_AddNullToObject(e, "anon_max_kib");
		} else {
			cJSON_AddNumberToObject(e, "start_kib",
						(double)s->start_kib);
			cJSON_AddNumberToObject(e, "max_kib",
						(double)s->max_kib);
			cJSON_AddNumberToObject(e, "last_kib",
						(double)s->last_kib);
			cJSON_AddNumberToObject(e, "anon_start_kib",
						(double)s->anon_start_kib);
			cJSON_AddNumberToObject(e, "anon_max_kib",
						(double)s->anon_max_kib);
		}
		cJSON_AddItemToArray(arr, e);
		if (s->max_kib > rss_max) {
			rss_max = s->max_kib;
		}
		if (s->anon_max_kib > anon_max) {
			anon_max = s->anon_max_kib;
		}
	}
	if (rss_max >= 0) {
		cJSON_AddNumberToObject(root, "server_rss_max_kib",
					(double)rss_max);
		cJSON_AddNumberToObject(root, "server_rss_anon_max_kib",
					(double)anon_max);
	} else {
		cJSON_AddNullToObject(root, "server_rss_max_kib");
		cJSON_AddNullToObject(root, "server_rss_anon_max_kib");
	}
	return root;
}

static void print_latency(const char *what, const struct hist *h)
{
	if (h->total == 0) {
		return;
	}
	printf("  %s µs: p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu\n",
	       what, (unsigned long long)hist_percentile(h, 50.0),
	       (unsigned long long)hist_percentile(h, 90.0),
	       (unsigned long long)hist_percentile(h, 99.0),
	       (unsigned long long)hist_percentile(h, 99.9),
	       (unsigned long long)hist_percentile(h, 100.0));
}

static void report_text(const struct bench_run *r, const struct side *pub,
			const struct side *con, uint64_t errors)
{
	const struct bench_options *o = r->o;
	unsigned i;

	printf("%s: %u producer(s), %u consumer(s), %u queue(s), %zu B, "
	       "window %u, %s\n",
	       options_broker_name(o->broker), o->producers, o->consumers,
	       o->queues, o->size, o->window, options_mode_name(o->mode));
	printf("publish: %.0f msgs/s (%.1f MB/s), %llu confirmed, %.1f s measured\n",
	       pub->rate, pub->mbps, (unsigned long long)pub->total,
	       pub->seconds);
	print_latency("publish->confirm", &pub->lat);
	if (o->consumers > 0) {
		printf("consume: %.0f msgs/s (%.1f MB/s), %llu consumed, %.1f s measured\n",
		       con->rate, con->mbps, (unsigned long long)con->total,
		       con->seconds);
		print_latency("publish->deliver", &con->lat);
		if (o->mode == BENCH_MODE_DURATION) {
			printf("  backlog when publishing stopped: %llu\n",
			       (unsigned long long)r->backlog_at_end);
		}
	}
	for (i = 0; i < r->n_rss; i++) {
		if (r->rss[i].start_kib >= 0) {
			printf("server pid %d VmRSS: start %.1f MiB, max %.1f MiB, "
			       "last %.1f MiB; RssAnon: start %.1f MiB, max %.1f MiB\n",
			       r->rss[i].pid,
			       (double)r->rss[i].start_kib / 1024,
			       (double)r->rss[i].max_kib / 1024,
			       (double)r->rss[i].last_kib / 1024,
			       (double)r->rss[i].anon_start_kib / 1024,
			       (double)r->rss[i].anon_max_kib / 1024);
		}
	}
	printf("errors: %llu\n", (unsigned long long)errors);
}

/* ---- main ------------------------------------------------------------------ */

static const struct bench_backend *backend_for(enum bench_broker b)
{
	switch (b) {
	case BENCH_RAFTMQ:
		return &bench_backend_raftmq;
	case BENCH_RABBITMQ:
#ifdef RMQ_BENCH_HAVE_RABBITMQ
		return &bench_backend_rabbitmq;
#else
		return NULL;
#endif
	case BENCH_NATS:
#ifdef RMQ_BENCH_HAVE_NATS
		return &bench_backend_nats;
#else
		return NULL;
#endif
	}
	return NULL;
}

#ifdef RMQ_BENCH_HAVE_RABBITMQ
#define BUILT_RABBITMQ ", rabbitmq"
#define MISSING_RABBITMQ ""
#else
#define BUILT_RABBITMQ ""
#define MISSING_RABBITMQ \
	"rabbitmq (librabbitmq-dev was missing at configure time) "
#endif
#ifdef RMQ_BENCH_HAVE_NATS
#define BUILT_NATS ", nats"
#define MISSING_NATS ""
#else
#define BUILT_NATS ""
#define MISSING_NATS "nats (libnats-dev was missing at configure time)"
#endif

int main(int argc, char **argv)
{
	struct bench_options o;
	struct bench_run r;
	struct side pub, con;
	uint64_t next_second, errors;
	char err[256];
	unsigned i;
	int rv, status = 0;

	options_init(&o);
	rv = options_parse(&o, argc, argv, err, sizeof err);
	if (rv == OPTIONS_HELP) {
		options_usage(stdout, "raftmq" BUILT_RABBITMQ BUILT_NATS,
			      MISSING_RABBITMQ MISSING_NATS);
		return 0;
	}
	if (rv != 0) {
		fprintf(stderr, "raftmq-bench: %s (see --help)\n", err);
		return 2;
	}
	g_opts = &o;
	memset(&r, 0, sizeof r);
	r.o = &o;
	r.be = backend_for(o.broker);
	if (r.be == NULL) {
		fprintf(stderr,
			"raftmq-bench: the %s backend is not built in "
			"(its library was missing when cmake ran)\n",
			options_broker_name(o.broker));
		return 2;
	}
	r.tty = o.progress && isatty(STDERR_FILENO);
	atomic_init(&r.producers_left, o.producers);
	r.n_rss = o.n_server_pids;
	for (i = 0; i < r.n_rss; i++) {
		r.rss[i].pid = o.server_pids[i];
		r.rss[i].start_kib = r.rss[i].max_kib = r.rss[i].last_kib = -1;
		r.rss[i].anon_start_kib = r.rss[i].anon_max_kib = -1;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_sigint);
	signal(SIGTERM, on_sigint);

	r.prod = calloc(o.producers, sizeof *r.prod);
	r.cons = calloc(o.consumers + 1, sizeof *r.cons);
	r.prod_th = calloc(o.producers, sizeof *r.prod_th);
	r.cons_th = calloc(o.consumers + 1, sizeof *r.cons_th);
	if (r.prod == NULL || r.cons == NULL || r.prod_th == NULL ||
	    r.cons_th == NULL) {
		fprintf(stderr, "raftmq-bench: out of memory\n");
		return 1;
	}
	for (i = 0; i < o.producers; i++) {
		worker_init(&r.prod[i], &r, i, true);
	}
	for (i = 0; i < o.consumers; i++) {
		worker_init(&r.cons[i], &r, i, false);
	}

	rv = r.be->setup(&o);
	if (rv != 0) {
		fprintf(stderr,
			"raftmq-bench: could not declare the %s queues on %s\n",
			options_broker_name(o.broker), o.servers);
		return 1;
	}
	rss_sample(&r);
	atomic_store(&r.e2e, o.mode != BENCH_MODE_PRELOAD);
	next_second = bench_now_ns() + 1000000000ull;
	if (o.mode != BENCH_MODE_PRELOAD && o.consumers > 0) {
		if (start_consumers(&r, &next_second) != 0) {
			status = 1;
			atomic_store(&r.stop_publish, true);
		}
	}
	if (status == 0) {
		run_producers(&r, &next_second);
	}
	if (status == 0 && o.mode == BENCH_MODE_PRELOAD && !g_interrupted) {
		r.t_consume = bench_now_ns();
		if (start_consumers(&r, &next_second) != 0) {
			status = 1;
		}
	}
	if (status == 0 && o.consumers > 0) {
		drain_consumers(&r, &next_second);
	}
	if (o.mode != BENCH_MODE_DURATION) {
		atomic_store(&r.measuring, false);
	}
	atomic_store(&r.stop_consume, true);
	if (r.cons_started) {
		for (i = 0; i < o.consumers; i++) {
			pthread_join(r.cons_th[i], NULL);
		}
	}
	rss_sample(&r);
	progress(&r, bench_now_ns());
	if (r.tty) {
		fputc('\n', stderr);
	}
	r.be->teardown(&o);

	sum_side(&r, r.prod, o.producers,
		 o.mode == BENCH_MODE_DURATION ? r.t_measure : r.t_start,
		 r.t_measure_end, &pub);
	sum_side(&r, r.cons, o.consumers,
		 o.mode == BENCH_MODE_DURATION  ? r.t_measure
		 : o.mode == BENCH_MODE_PRELOAD ? r.t_consume
						: r.t_start,
		 r.t_measure_end, &con);
	errors = pub.errors + con.errors;
	if (o.json) {
		cJSON *root = report_json(&r, &pub, &con, errors);
		char *text = cJSON_Print(root);

		if (text != NULL) {
			printf("%s\n", text);
			free(text);
		}
		cJSON_Delete(root);
	} else {
		report_text(&r, &pub, &con, errors);
	}
	for (i = 0; i < o.producers; i++) {
		worker_destroy(&r.prod[i]);
	}
	for (i = 0; i < o.consumers; i++) {
		worker_destroy(&r.cons[i]);
	}
	free(r.prod);
	free(r.cons);
	free(r.prod_th);
	free(r.cons_th);
	if (g_interrupted) {
		return 130;
	}
	return status;
}
