/* raftmq-bench: the interface between the load generator (main.c) and the
 * broker backends (backend_*.c, one per broker).
 *
 * The driver owns the threads, the publish window, the clock and the
 * statistics; a backend only moves bytes. Each producer and each consumer
 * is a struct bench_worker run by its own driver thread, with its own
 * connection (w->impl, owned by the backend between *_open and *_close).
 *
 * Producer, per message: the driver waits until fewer than --window
 * publishes of this worker are unconfirmed (calling wait(), or its own
 * condition variable when wait is NULL), stamps the body (bench_stamp) and
 * calls publish(). The backend reports every accepted publish exactly once
 * through bench_confirmed(), from any one thread at a time per worker
 * (a library thread or the producer's own).
 *
 * Consumer: the driver calls consume() in a loop until the run ends; the
 * backend passes each delivery to bench_delivered() and acknowledges it
 * (acks may be batched), from any one thread at a time per worker.
 *
 * Errors: functions return 0 or a negative value; a failing *_open or
 * publish() ends that worker (the driver counts an error and reports it
 * with the text the backend wrote with bench_log()). */
#ifndef RMQ_BENCH_H
#define RMQ_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "options.h"

struct bench_run;

struct bench_worker {
	struct bench_run *run;
	const struct bench_options *o;
	unsigned idx;      /* among the producers, or among the consumers */
	unsigned queue_no; /* idx % queues */
	char queue[64];    /* "<prefix>-<queue_no>" */
	bool producer;
	void *impl; /* the backend's connection state */

	/* Written only by the thread that reports (see above). */
	struct hist lat;  /* µs: publish→confirm, or publish→deliver */
	uint64_t last_ns; /* when the last confirm / delivery was counted */

	/* Read by the driver's progress loop at any time. */
	atomic_uint_fast64_t done;     /* confirms (ok) or deliveries */
	atomic_uint_fast64_t measured; /* of those, inside the measurement */
	atomic_uint_fast64_t errors;   /* failed publishes, broken consumers */
	atomic_uint_fast64_t inflight; /* producers: unconfirmed publishes */

	pthread_mutex_t mu; /* with cond: the default window wait */
	pthread_cond_t cond;
};

struct bench_backend {
	const char *name;
	/* Delete and declare the run's queues (o->queues of them, names
	 * "<prefix>-<i>"), so each run starts empty. Main thread. */
	int (*setup)(const struct bench_options *o);
	/* Delete the run's queues. Main thread, after every worker closed. */
	void (*teardown)(const struct bench_options *o);

	int (*producer_open)(struct bench_worker *w);
	/* Send @body (@len bytes, already stamped) to w->queue. */
	int (*publish)(struct bench_worker *w, const void *body, size_t len);
	/* Optional: block until some confirm may have come or @timeout_ms
	 * passed, reporting the confirms that came. NULL: the driver waits on
	 * w->cond, which bench_confirmed() signals. */
	int (*wait)(struct bench_worker *w, unsigned timeout_ms);
	void (*producer_close)(struct bench_worker *w);

	/* Subscribe w to w->queue with o->prefetch unacked deliveries. */
	int (*consumer_open)(struct bench_worker *w);
	/* Take deliveries for up to about @timeout_ms. */
	int (*consume)(struct bench_worker *w, unsigned timeout_ms);
	void (*consumer_close)(struct bench_worker *w);
};

extern const struct bench_backend bench_backend_raftmq;
#ifdef RMQ_BENCH_HAVE_RABBITMQ
extern const struct bench_backend bench_backend_rabbitmq;
#endif
#ifdef RMQ_BENCH_HAVE_NATS
extern const struct bench_backend bench_backend_nats;
#endif

/* CLOCK_MONOTONIC in nanoseconds: the same clock in every thread. */
uint64_t bench_now_ns(void);
/* The send time stamped in a body, 0 if the body is too short. */
uint64_t bench_body_stamp(const void *body, size_t len);

/* A publish of worker @w stamped @sent_ns was confirmed (@ok) or failed. */
void bench_confirmed(struct bench_worker *w, uint64_t sent_ns, bool ok);
/* Consumer @w got @body (@len bytes). */
void bench_delivered(struct bench_worker *w, const void *body, size_t len);
/* One error line on stderr ("raftmq-bench: <broker> <worker>: ..."),
 * at most a few per second in all. */
void bench_log(const struct bench_worker *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The i-th (0-based, wrapping) entry of a comma-separated list, copied
 * into @out. */
void bench_list_item(const char *list, unsigned i, char *out, size_t n);
unsigned bench_list_len(const char *list);

#endif /* RMQ_BENCH_H */
