/* raftmq-bench backend for NATS JetStream, through cnats.
 *
 * The happy path is: each queue is a file-backed stream "<prefix>-<i>"
 * with replicas = 3 on subject "<prefix>.<i>". Each worker has its own
 * connection (the whole --servers list; cnats picks one). Producers call
 * js_PublishAsync(); the library's ack handler reads the send stamp back
 * from the message it returns and reports it. Consumers are push
 * subscriptions (js_SubscribeSync) with explicit acks and MaxAckPending =
 * --prefetch; each message is acked (natsMsg_Ack) after it is reported.
 *
 * Failure modes are: connect / stream / subscription errors (the worker
 * ends, logged); a negative or timed-out publish ack (jsPubOptions.MaxWait,
 * 30 s: counted as failed); NextMsg errors other than a timeout (the
 * consumer ends). Stream creation is retried for up to 30 s, since a fresh
 * cluster elects its JetStream meta leader after the servers answer.
 *
 * Threads: publish() and consume() run on their worker's thread; the ack
 * handler runs on a cnats thread of that worker's connection. */
#include <nats/nats.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "raftmq_errors.h"

#define NATS_REPLICAS 3
#define ACK_WAIT_MS 30000
#define SETUP_TRIES 150 /* x 200 ms */

struct nats_conn {
	natsConnection *nc;    /* owned */
	jsCtx *js;             /* owned */
	natsSubscription *sub; /* owned, consumers only */
	jsPubOptions po;
	char subject[80];
};

static void subject_of(const struct bench_options *o, unsigned i, char *out,
		       size_t n)
{
	snprintf(out, n, "%s.%u", o->queue_prefix, i);
}

static const char *status_text(natsStatus s)
{
	const char *last = nats_GetLastError(NULL);

	return last != NULL && last[0] != '\0' ? last : natsStatus_GetText(s);
}

/* Connect with jsOptions prepared by the caller (NULL: defaults). */
static int nats_open(const struct bench_worker *w,
		     const struct bench_options *o, jsOptions *jo,
		     struct nats_conn *c)
{
	const char *urls[BENCH_MAX_WORKERS];
	char copy[sizeof o->servers], *save = NULL, *tok;
	natsOptions *opts = NULL;
	natsStatus s;
	int n = 0;

	snprintf(copy, sizeof copy, "%s", o->servers);
	for (tok = strtok_r(copy, ",", &save);
	     tok != NULL && n < BENCH_MAX_WORKERS;
	     tok = strtok_r(NULL, ",", &save)) {
		urls[n++] = tok;
	}
	s = natsOptions_Create(&opts);
	if (s == NATS_OK) {
		s = natsOptions_SetServers(opts, urls, n);
	}
	if (s == NATS_OK) {
		s = natsOptions_SetTimeout(opts, 5000);
	}
	if (s == NATS_OK) {
		s = natsConnection_Connect(&c->nc, opts);
	}
	natsOptions_Destroy(opts);
	if (s != NATS_OK) {
		bench_log(w, "connect to %s: %s", o->servers, status_text(s));
		return RMQ_ECONNECT;
	}
	s = natsConnection_JetStream(&c->js, c->nc, jo);
	if (s != NATS_OK) {
		bench_log(w, "JetStream context: %s", status_text(s));
		natsConnection_Destroy(c->nc);
		return RMQ_EIO;
	}
	return 0;
}

static void nats_close(struct nats_conn *c)
{
	if (c->sub != NULL) {
		natsSubscription_Unsubscribe(c->sub);
		natsSubscription_Destroy(c->sub);
	}
	jsCtx_Destroy(c->js);
	natsConnection_Close(c->nc);
	natsConnection_Destroy(c->nc);
}

static int nats_setup(const struct bench_options *o)
{
	struct nats_conn c;
	unsigned i, tries;
	int rv = 0;

	memset(&c, 0, sizeof c);
	for (tries = 0;; tries++) {
		rv = nats_open(NULL, o, NULL, &c);
		if (rv == 0 || tries >= SETUP_TRIES / 10) {
			break;
		}
		struct timespec ts = {1, 0};
		nanosleep(&ts, NULL);
	}
	if (rv != 0) {
		return rv;
	}
	for (i = 0; i < o->queues && rv == 0; i++) {
		char name[64], subj[80];
		const char *subjects[1] = {subj};
		jsStreamConfig cfg;
		jsStreamInfo *si = NULL;
		jsErrCode jerr = 0;
		natsStatus s;

		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		subject_of(o, i, subj, sizeof subj);
		jsStreamConfig_Init(&cfg);
		cfg.Name = name;
		cfg.Subjects = subjects;
		cfg.SubjectsLen = 1;
		cfg.Storage = js_FileStorage;
		cfg.Replicas = NATS_REPLICAS;
		for (tries = 0; tries < SETUP_TRIES; tries++) {
			s = js_DeleteStream(c.js, name, NULL, &jerr);
			if (s != NATS_OK && s != NATS_NOT_FOUND &&
			    jerr != JSStreamNotFoundErr) {
				goto retry;
			}
			s = js_AddStream(&si, c.js, &cfg, NULL, &jerr);
			if (s == NATS_OK) {
				jsStreamInfo_Destroy(si);
				break;
			}
retry:;
			struct timespec ts = {0, 200000000L};
			nanosleep(&ts, NULL);
		}
		if (s != NATS_OK) {
			bench_log(
				NULL,
				"create stream %s (replicas %d): %s (JetStream error %d)",
				name, NATS_REPLICAS, status_text(s), (int)jerr);
			rv = RMQ_EIO;
		}
	}
	nats_close(&c);
	return rv;
}

static void nats_teardown(const struct bench_options *o)
{
	struct nats_conn c;
	unsigned i;

	memset(&c, 0, sizeof c);
	if (nats_open(NULL, o, NULL, &c) != 0) {
		return;
	}
	for (i = 0; i < o->queues; i++) {
		char name[64];
		jsErrCode jerr = 0;

		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		js_DeleteStream(c.js, name, NULL, &jerr);
	}
	nats_close(&c);
}

static void ack_cb(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
		   void *closure)
{
	struct bench_worker *w = closure;
	uint64_t sent = bench_body_stamp(natsMsg_GetData(msg),
					 (size_t)natsMsg_GetDataLength(msg));
	bool ok = pa != NULL && pae == NULL;

	(void)js;
	if (!ok) {
		bench_log(w, "publish failed: %s (JetStream error %d)",
			  pae != NULL ? (pae->ErrText != NULL
						 ? pae->ErrText
						 : natsStatus_GetText(pae->Err))
				      : "no ack",
			  pae != NULL ? (int)pae->ErrCode : 0);
	}
	natsMsg_Destroy(msg);
	bench_confirmed(w, sent, ok);
}

static int nats_producer_open(struct bench_worker *w)
{
	struct nats_conn *c;
	jsOptions jo;
	int rv;

	c = calloc(1, sizeof *c);
	if (c == NULL) {
		return RMQ_ENOMEM;
	}
	jsOptions_Init(&jo);
	/* Above the driver's window: js_PublishAsync never stalls. */
	jo.PublishAsync.MaxPending = (int64_t)w->o->window + 16;
	jo.PublishAsync.AckHandler = ack_cb;
	jo.PublishAsync.AckHandlerClosure = w;
	rv = nats_open(w, w->o, &jo, c);
	if (rv != 0) {
		free(c);
		return rv;
	}
	jsPubOptions_Init(&c->po);
	c->po.MaxWait = ACK_WAIT_MS;
	subject_of(w->o, w->queue_no, c->subject, sizeof c->subject);
	w->impl = c;
	return 0;
}

static int nats_publish(struct bench_worker *w, const void *body, size_t len)
{
	struct nats_conn *c = w->impl;
	natsStatus s;

	s = js_PublishAsync(c->js, c->subject, body, (int)len, &c->po);
	if (s != NATS_OK) {
		bench_log(w, "js_PublishAsync: %s", status_text(s));
		return RMQ_EIO;
	}
	return 0;
}

static void nats_producer_close(struct bench_worker *w)
{
	struct nats_conn *c = w->impl;

	if (c == NULL) {
		return;
	}
	nats_close(c);
	free(c);
	w->impl = NULL;
}

static int nats_consumer_open(struct bench_worker *w)
{
	struct nats_conn *c;
	jsSubOptions so;
	jsErrCode jerr = 0;
	natsStatus s;
	int rv;

	c = calloc(1, sizeof *c);
	if (c == NULL) {
		return RMQ_ENOMEM;
	}
	rv = nats_open(w, w->o, NULL, c);
	if (rv != 0) {
		free(c);
		return rv;
	}
	subject_of(w->o, w->queue_no, c->subject, sizeof c->subject);
	jsSubOptions_Init(&so);
	so.Stream = w->queue;
	so.ManualAck = true;
	so.Config.AckPolicy = js_AckExplicit;
	so.Config.DeliverPolicy = js_DeliverAll;
	so.Config.MaxAckPending = w->o->prefetch;
	s = js_SubscribeSync(&c->sub, c->js, c->subject, NULL, &so, &jerr);
	if (s == NATS_OK) {
		/* The default (64 MiB) would drop 64 KiB messages at prefetch
		 * 1000 as a "slow consumer". */
		s = natsSubscription_SetPendingLimits(c->sub, 1 << 20, 1 << 30);
	}
	if (s != NATS_OK) {
		bench_log(w, "subscribe to %s: %s (JetStream error %d)",
			  c->subject, status_text(s), (int)jerr);
		nats_close(c);
		free(c);
		return RMQ_EIO;
	}
	w->impl = c;
	return 0;
}

static int nats_consume(struct bench_worker *w, unsigned timeout_ms)
{
	struct nats_conn *c = w->impl;
	natsMsg *msg = NULL;
	natsStatus s;

	s = natsSubscription_NextMsg(&msg, c->sub, (int64_t)timeout_ms);
	if (s == NATS_TIMEOUT) {
		return 0;
	}
	if (s != NATS_OK) {
		bench_log(w, "next message: %s", status_text(s));
		return RMQ_EIO;
	}
	bench_delivered(w, natsMsg_GetData(msg),
			(size_t)natsMsg_GetDataLength(msg));
	s = natsMsg_Ack(msg, NULL);
	natsMsg_Destroy(msg);
	if (s != NATS_OK) {
		bench_log(w, "ack: %s", status_text(s));
		return RMQ_EIO;
	}
	return 0;
}

static void nats_consumer_close(struct bench_worker *w)
{
	struct nats_conn *c = w->impl;

	if (c == NULL) {
		return;
	}
	natsConnection_Flush(c->nc);
	nats_close(c);
	free(c);
	w->impl = NULL;
}

const struct bench_backend bench_backend_nats = {
	.name = "nats",
	.setup = nats_setup,
	.teardown = nats_teardown,
	.producer_open = nats_producer_open,
	.publish = nats_publish,
	.wait = NULL,
	.producer_close = nats_producer_close,
	.consumer_open = nats_consumer_open,
	.consume = nats_consume,
	.consumer_close = nats_consumer_close,
};
