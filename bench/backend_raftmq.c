/* raftmq-bench backend for raftmq, through libraftmq (raftmq.h).
 *
 * The happy path is: one rmq_client per worker. A producer publishes with
 * rmq_publish_async(); each publish borrows a slot (its send stamp) from a
 * pool of --window slots, which the confirm callback returns before it
 * reports. The library's own window is a little larger than the driver's,
 * so rmq_publish_async() never blocks and the stamp is taken only once
 * the driver's window has room. A consumer subscribes with a delivery
 * callback that reports and acks each message (libraftmq batches acks).
 *
 * Failure modes are: connect / declare / subscribe errors (the worker
 * ends, logged); a failed publish (its confirm callback gets the error:
 * counted, logged); a failed ack (logged; the message will come again).
 *
 * Threads: publish() runs on the producer thread; the callbacks run on
 * the client's I/O thread (one per worker), so each worker's statistics
 * are written by one thread at a time. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "raftmq.h"

struct slot {
	struct rmq_prod *p;
	uint64_t sent_ns;
	struct slot *next;
};

struct rmq_prod {
	struct bench_worker *w;
	struct rmq_client *c; /* owned */
	pthread_mutex_t mu;   /* the free list */
	struct slot *free;
	struct slot *slots; /* owned, o->window of them */
};

struct rmq_cons {
	struct rmq_client *c; /* owned */
	struct rmq_consumer *k;
};

static int connect_client(const struct bench_options *o, unsigned window,
			  struct rmq_client **out)
{
	struct rmq_options ro;

	rmq_options_init(&ro);
	ro.servers = o->servers;
	ro.publish_window = window;
	ro.connect_timeout_ms = 5000;
	return rmq_connect(&ro, out);
}

static const char *err_text(int rv)
{
	const char *m = rmq_last_error();

	return m != NULL && m[0] != '\0' ? m : rmq_strerror(rv);
}

static int raftmq_setup(const struct bench_options *o)
{
	struct rmq_client *c;
	char name[64];
	unsigned i, tries;
	int rv;

	rv = connect_client(o, 1, &c);
	if (rv != 0) {
		bench_log(NULL, "connect to %s: %s", o->servers, err_text(rv));
		return rv;
	}
	for (i = 0; i < o->queues; i++) {
		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		rv = rmq_queue_delete(c, name);
		if (rv != 0 && rv != RMQ_ENOTFOUND) {
			bench_log(NULL, "delete queue %s: %s", name,
				  err_text(rv));
			goto out;
		}
		for (tries = 0; tries < 50; tries++) {
			rv = rmq_queue_declare(c, name, NULL, NULL);
			if (rv != RMQ_EUNAVAIL && rv != RMQ_ETIMEDOUT) {
				break;
			}
			struct timespec ts = {0, 200000000L};
			nanosleep(&ts, NULL);
		}
		if (rv != 0) {
			bench_log(NULL, "declare queue %s: %s", name,
				  err_text(rv));
			goto out;
		}
	}
out:
	rmq_close(c, 2000);
	return rv;
}

static void raftmq_teardown(const struct bench_options *o)
{
	struct rmq_client *c;
	char name[64];
	unsigned i;
	int rv;

	if (connect_client(o, 1, &c) != 0) {
		return;
	}
	for (i = 0; i < o->queues; i++) {
		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		rv = rmq_queue_delete(c, name);
		if (rv != 0 && rv != RMQ_ENOTFOUND) {
			bench_log(NULL, "delete queue %s: %s", name,
				  err_text(rv));
		}
	}
	rmq_close(c, 2000);
}

static int raftmq_producer_open(struct bench_worker *w)
{
	unsigned n = w->o->window, i;
	struct rmq_prod *p;
	int rv;

	p = calloc(1, sizeof *p);
	if (p == NULL) {
		rv = RMQ_ENOMEM;
		goto err;
	}
	p->slots = calloc(n, sizeof *p->slots);
	if (p->slots == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_alloc;
	}
	for (i = 0; i < n; i++) {
		p->slots[i].p = p;
		p->slots[i].next = i + 1 < n ? &p->slots[i + 1] : NULL;
	}
	p->free = &p->slots[0];
	p->w = w;
	pthread_mutex_init(&p->mu, NULL);
	/* Room for the confirm being reported while the driver refills. */
	rv = connect_client(w->o, n + 8, &p->c);
	if (rv != 0) {
		bench_log(w, "connect to %s: %s", w->o->servers, err_text(rv));
		goto err_after_slots;
	}
	w->impl = p;
	return 0;

err_after_slots:
	pthread_mutex_destroy(&p->mu);
	free(p->slots);
err_after_alloc:
	free(p);
err:
	return rv;
}

static void confirm_cb(void *arg, int status, uint64_t seq)
{
	struct slot *s = arg;
	struct rmq_prod *p = s->p;
	uint64_t sent = s->sent_ns;

	(void)seq;
	if (status != 0) {
		bench_log(p->w, "publish failed: %s", err_text(status));
	}
	pthread_mutex_lock(&p->mu);
	s->next = p->free;
	p->free = s;
	pthread_mutex_unlock(&p->mu);
	bench_confirmed(p->w, sent, status == 0);
}

static int raftmq_publish(struct bench_worker *w, const void *body, size_t len)
{
	struct rmq_prod *p = w->impl;
	struct slot *s;
	int rv;

	pthread_mutex_lock(&p->mu);
	s = p->free;
	if (s != NULL) {
		p->free = s->next;
	}
	pthread_mutex_unlock(&p->mu);
	if (s == NULL) {
		/* The driver keeps at most --window publishes unconfirmed and a
		 * slot is back before its confirm is counted. */
		bench_log(w, "no free publish slot (a bug)");
		return RMQ_EINTERNAL;
	}
	s->sent_ns = bench_body_stamp(body, len);
	rv = rmq_publish_async(p->c, w->queue, body, len, NULL, 0, confirm_cb,
			       s);
	if (rv != 0) {
		bench_log(w, "publish: %s", err_text(rv));
		pthread_mutex_lock(&p->mu);
		s->next = p->free;
		p->free = s;
		pthread_mutex_unlock(&p->mu);
	}
	return rv;
}

static void raftmq_producer_close(struct bench_worker *w)
{
	struct rmq_prod *p = w->impl;

	if (p == NULL) {
		return;
	}
	/* Pending confirms fire (with RMQ_ESHUTDOWN) inside rmq_close. */
	rmq_close(p->c, 5000);
	pthread_mutex_destroy(&p->mu);
	free(p->slots);
	free(p);
	w->impl = NULL;
}

static void delivery_cb(void *arg, const struct rmq_delivery *d)
{
	struct bench_worker *w = arg;
	int rv;

	bench_delivered(w, d->body, d->len);
	rv = rmq_ack(d->consumer, d->seq);
	if (rv != 0) {
		bench_log(w, "ack: %s", rmq_strerror(rv));
	}
}

static int raftmq_consumer_open(struct bench_worker *w)
{
	struct rmq_cons *k;
	int rv;

	k = calloc(1, sizeof *k);
	if (k == NULL) {
		return RMQ_ENOMEM;
	}
	rv = connect_client(w->o, 1, &k->c);
	if (rv != 0) {
		bench_log(w, "connect to %s: %s", w->o->servers, err_text(rv));
		goto err_after_alloc;
	}
	rv = rmq_subscribe(k->c, w->queue, w->o->prefetch, delivery_cb, w,
			   &k->k);
	if (rv != 0) {
		bench_log(w, "subscribe to %s: %s", w->queue, err_text(rv));
		goto err_after_connect;
	}
	w->impl = k;
	return 0;

err_after_connect:
	rmq_close(k->c, 1000);
err_after_alloc:
	free(k);
	return rv;
}

/* Deliveries arrive on the I/O thread: nothing to do here but wait. */
static int raftmq_consume(struct bench_worker *w, unsigned timeout_ms)
{
	struct timespec ts = {0, (long)timeout_ms * 1000000L};

	(void)w;
	nanosleep(&ts, NULL);
	return 0;
}

static void raftmq_consumer_close(struct bench_worker *w)
{
	struct rmq_cons *k = w->impl;

	if (k == NULL) {
		return;
	}
	rmq_settle_flush(k->c, 2000);
	rmq_unsubscribe(k->k);
	rmq_close(k->c, 2000);
	free(k);
	w->impl = NULL;
}

const struct bench_backend bench_backend_raftmq = {
	.name = "raftmq",
	.setup = raftmq_setup,
	.teardown = raftmq_teardown,
	.producer_open = raftmq_producer_open,
	.publish = raftmq_publish,
	.wait = NULL,
	.producer_close = raftmq_producer_close,
	.consumer_open = raftmq_consumer_open,
	.consume = raftmq_consume,
	.consumer_close = raftmq_consumer_close,
};
