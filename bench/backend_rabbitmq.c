/* raftmq-bench backend for RabbitMQ quorum queues, through rabbitmq-c
 * (AMQP 0-9-1).
 *
 * The happy path is: each worker opens its own connection (channel 1) to
 * the node that declared its queue (server queue_no mod n, so the quorum
 * queue's leader is local to the client, RabbitMQ's best case). Queues are
 * durable, x-queue-type=quorum (replicated to every cluster node).
 * Producers put the channel in confirm mode and publish persistent
 * messages (delivery_mode 2) to the default exchange; basic.ack /
 * basic.nack frames (possibly "multiple") settle them, looked up by
 * delivery tag in a ring of send stamps. Consumers set basic.qos prefetch
 * and ack with "multiple" every few messages (and when idle).
 *
 * Failure modes are: socket, login or channel errors (the worker ends,
 * logged with the server's reply text); basic.nack (that publish counts as
 * failed).
 *
 * Threads: rabbitmq-c connections are not thread-safe; each is used only
 * by its worker's thread, which also reads the confirms (wait()). */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "raftmq_errors.h"

#define CHANNEL 1
#define FRAME_MAX 131072

struct rabbit_prod {
	amqp_connection_state_t conn; /* owned */
	uint64_t next_tag;            /* delivery tag of the next publish */
	uint64_t low;                 /* lowest tag not yet settled */
	uint64_t *ring; /* owned: send stamp per tag % size, 0 free */
	unsigned size;
	unsigned since_poll; /* publishes since we last looked for acks */
};

struct rabbit_cons {
	amqp_connection_state_t conn; /* owned */
	uint64_t last_tag;            /* newest delivery not yet acked */
	unsigned unacked;
	unsigned ack_every;
};

/* Text for a failed RPC: the server's close reason or the library's. */
static void reply_text(amqp_rpc_reply_t r, char *out, size_t n)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		snprintf(out, n, "ok");
		return;
	case AMQP_RESPONSE_NONE:
		snprintf(out, n, "no reply");
		return;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(out, n, "%s", amqp_error_string2(r.library_error));
		return;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			snprintf(out, n, "connection closed: %u %.*s",
				 m->reply_code, (int)m->reply_text.len,
				 (char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			snprintf(out, n, "channel closed: %u %.*s",
				 m->reply_code, (int)m->reply_text.len,
				 (char *)m->reply_text.bytes);
		} else {
			snprintf(out, n, "server error (method 0x%08x)",
				 r.reply.id);
		}
		return;
	}
	snprintf(out, n, "unknown reply");
}

/* 0 if the last RPC on @conn went well; else logs "@what: why". */
static int check_rpc(const struct bench_worker *w, amqp_connection_state_t conn,
		     const char *what)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
	char why[256];

	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		return 0;
	}
	reply_text(r, why, sizeof why);
	bench_log(w, "%s: %s", what, why);
	return RMQ_EIO;
}

/* Connect to server @i (mod n) of the list, log in as guest, open the
 * channel. */
static int open_conn(const struct bench_worker *w,
		     const struct bench_options *o, unsigned i,
		     amqp_connection_state_t *out)
{
	char addr[256], *colon;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	int port = 5672, st;

	bench_list_item(o->servers, i, addr, sizeof addr);
	colon = strrchr(addr, ':');
	if (colon != NULL) {
		*colon = '\0';
		port = atoi(colon + 1);
	}
	conn = amqp_new_connection();
	if (conn == NULL) {
		return RMQ_ENOMEM;
	}
	sock = amqp_tcp_socket_new(conn);
	if (sock == NULL) {
		amqp_destroy_connection(conn);
		return RMQ_ENOMEM;
	}
	st = amqp_socket_open(sock, addr, port);
	if (st != AMQP_STATUS_OK) {
		bench_log(w, "connect to %s:%d: %s", addr, port,
			  amqp_error_string2(st));
		amqp_destroy_connection(conn);
		return RMQ_ECONNECT;
	}
	amqp_rpc_reply_t r = amqp_login(conn, "/", 0, FRAME_MAX, 0,
					AMQP_SASL_METHOD_PLAIN, "guest",
					"guest");
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char why[256];
		reply_text(r, why, sizeof why);
		bench_log(w, "login to %s:%d: %s", addr, port, why);
		amqp_destroy_connection(conn);
		return RMQ_ECONNECT;
	}
	amqp_channel_open(conn, CHANNEL);
	if (check_rpc(w, conn, "channel.open") != 0) {
		amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(conn);
		return RMQ_EIO;
	}
	*out = conn;
	return 0;
}

static void close_conn(amqp_connection_state_t conn)
{
	amqp_channel_close(conn, CHANNEL, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

static int rabbit_setup(const struct bench_options *o)
{
	amqp_table_entry_t args[1];
	amqp_table_t table;
	char name[64];
	unsigned i;

	args[0].key = amqp_cstring_bytes("x-queue-type");
	args[0].value.kind = AMQP_FIELD_KIND_UTF8;
	args[0].value.value.bytes = amqp_cstring_bytes("quorum");
	table.num_entries = 1;
	table.entries = args;
	for (i = 0; i < o->queues; i++) {
		amqp_connection_state_t conn;
		int rv;

		/* Declared through the node its workers use: leader there. */
		rv = open_conn(NULL, o, i, &conn);
		if (rv != 0) {
			return rv;
		}
		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		amqp_queue_delete(conn, CHANNEL, amqp_cstring_bytes(name), 0,
				  0);
		rv = check_rpc(NULL, conn, "queue.delete");
		if (rv == 0) {
			amqp_queue_declare(conn, CHANNEL,
					   amqp_cstring_bytes(name), 0, 1, 0, 0,
					   table);
			rv = check_rpc(NULL, conn,
				       "queue.declare (x-queue-type=quorum)");
		}
		close_conn(conn);
		if (rv != 0) {
			return rv;
		}
	}
	return 0;
}

static void rabbit_teardown(const struct bench_options *o)
{
	amqp_connection_state_t conn;
	char name[64];
	unsigned i;

	for (i = 0; i < o->queues; i++) {
		if (open_conn(NULL, o, i, &conn) != 0) {
			return;
		}
		snprintf(name, sizeof name, "%s-%u", o->queue_prefix, i);
		amqp_queue_delete(conn, CHANNEL, amqp_cstring_bytes(name), 0,
				  0);
		check_rpc(NULL, conn, "queue.delete");
		close_conn(conn);
	}
}

static int rabbit_producer_open(struct bench_worker *w)
{
	struct rabbit_prod *p;
	int rv;

	p = calloc(1, sizeof *p);
	if (p == NULL) {
		rv = RMQ_ENOMEM;
		goto err;
	}
	p->size = w->o->window;
	p->ring = calloc(p->size, sizeof *p->ring);
	if (p->ring == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_alloc;
	}
	p->next_tag = 1;
	p->low = 1;
	rv = open_conn(w, w->o, w->queue_no, &p->conn);
	if (rv != 0) {
		goto err_after_ring;
	}
	amqp_confirm_select(p->conn, CHANNEL);
	rv = check_rpc(w, p->conn, "confirm.select");
	if (rv != 0) {
		goto err_after_conn;
	}
	w->impl = p;
	return 0;

err_after_conn:
	close_conn(p->conn);
err_after_ring:
	free(p->ring);
err_after_alloc:
	free(p);
err:
	return rv;
}

static void settle_one(struct bench_worker *w, struct rabbit_prod *p,
		       uint64_t tag, bool ok)
{
	uint64_t *slot = &p->ring[tag % p->size];
	uint64_t sent = *slot;

	if (tag < p->low || tag >= p->next_tag || sent == 0) {
		return; /* already settled */
	}
	*slot = 0;
	bench_confirmed(w, sent, ok);
}

static void settle(struct bench_worker *w, struct rabbit_prod *p, uint64_t tag,
		   bool multiple, bool ok)
{
	uint64_t t;

	if (multiple) {
		for (t = p->low; t <= tag && t < p->next_tag; t++) {
			settle_one(w, p, t, ok);
		}
	} else {
		settle_one(w, p, tag, ok);
	}
	while (p->low < p->next_tag && p->ring[p->low % p->size] == 0) {
		p->low++;
	}
}

/* Read the frames that come within @timeout_ms (then whatever is already
 * buffered) and settle the confirms among them. */
static int read_confirms(struct bench_worker *w, struct rabbit_prod *p,
			 unsigned timeout_ms)
{
	struct timeval tv = {(long)(timeout_ms / 1000),
			     (long)(timeout_ms % 1000) * 1000};
	struct timeval zero = {0, 0};
	bool first = true;

	for (;;) {
		amqp_frame_t f;
		int st = amqp_simple_wait_frame_noblock(p->conn, &f,
							first ? &tv : &zero);

		first = false;
		if (st == AMQP_STATUS_TIMEOUT) {
			return 0;
		}
		if (st != AMQP_STATUS_OK) {
			bench_log(w, "reading confirms: %s",
				  amqp_error_string2(st));
			return RMQ_EIO;
		}
		if (f.frame_type != AMQP_FRAME_METHOD) {
			continue;
		}
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD: {
			amqp_basic_ack_t *a = f.payload.method.decoded;
			settle(w, p, a->delivery_tag, a->multiple != 0, true);
			break;
		}
		case AMQP_BASIC_NACK_METHOD: {
			amqp_basic_nack_t *a = f.payload.method.decoded;
			bench_log(w, "basic.nack for delivery tag %llu",
				  (unsigned long long)a->delivery_tag);
			settle(w, p, a->delivery_tag, a->multiple != 0, false);
			break;
		}
		case AMQP_CHANNEL_CLOSE_METHOD: {
			amqp_channel_close_t *m = f.payload.method.decoded;
			bench_log(w, "channel closed by the server: %u %.*s",
				  m->reply_code, (int)m->reply_text.len,
				  (char *)m->reply_text.bytes);
			return RMQ_EIO;
		}
		case AMQP_CONNECTION_CLOSE_METHOD: {
			amqp_connection_close_t *m = f.payload.method.decoded;
			bench_log(w, "connection closed by the server: %u %.*s",
				  m->reply_code, (int)m->reply_text.len,
				  (char *)m->reply_text.bytes);
			return RMQ_EIO;
		}
		default:
			break;
		}
		amqp_maybe_release_buffers(p->conn);
	}
}

static int rabbit_wait(struct bench_worker *w, unsigned timeout_ms)
{
	return read_confirms(w, w->impl, timeout_ms);
}

static int rabbit_publish(struct bench_worker *w, const void *body, size_t len)
{
	struct rabbit_prod *p = w->impl;
	amqp_basic_properties_t props;
	amqp_bytes_t b;
	int st, rv;

	/* Out-of-order confirms may still hold this tag's ring slot. */
	while (p->ring[p->next_tag % p->size] != 0) {
		rv = read_confirms(w, p, 100);
		if (rv != 0) {
			return rv;
		}
	}
	memset(&props, 0, sizeof props);
	props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
	props.delivery_mode = 2; /* persistent */
	b.len = len;
	b.bytes = (void *)(uintptr_t)body;
	p->ring[p->next_tag % p->size] = bench_body_stamp(body, len);
	st = amqp_basic_publish(p->conn, CHANNEL, amqp_empty_bytes,
				amqp_cstring_bytes(w->queue), 0, 0, &props, b);
	if (st != AMQP_STATUS_OK) {
		p->ring[p->next_tag % p->size] = 0;
		bench_log(w, "basic.publish: %s", amqp_error_string2(st));
		return RMQ_EIO;
	}
	p->next_tag++;
	/* Pick up confirms that already came, so their latency is not
	 * stretched until the window fills. */
	if (++p->since_poll >= 8 || w->o->window <= 16) {
		p->since_poll = 0;
		return read_confirms(w, p, 0);
	}
	return 0;
}

static void rabbit_producer_close(struct bench_worker *w)
{
	struct rabbit_prod *p = w->impl;

	if (p == NULL) {
		return;
	}
	close_conn(p->conn);
	free(p->ring);
	free(p);
	w->impl = NULL;
}

static int rabbit_consumer_open(struct bench_worker *w)
{
	struct rabbit_cons *k;
	int rv;

	k = calloc(1, sizeof *k);
	if (k == NULL) {
		return RMQ_ENOMEM;
	}
	k->ack_every = w->o->prefetch / 2 < 64 ? w->o->prefetch / 2 : 64;
	if (k->ack_every == 0) {
		k->ack_every = 1;
	}
	rv = open_conn(w, w->o, w->queue_no, &k->conn);
	if (rv != 0) {
		free(k);
		return rv;
	}
	amqp_basic_qos(k->conn, CHANNEL, 0, (uint16_t)w->o->prefetch, 0);
	rv = check_rpc(w, k->conn, "basic.qos");
	if (rv == 0) {
		amqp_basic_consume(k->conn, CHANNEL,
				   amqp_cstring_bytes(w->queue),
				   amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
		rv = check_rpc(w, k->conn, "basic.consume");
	}
	if (rv != 0) {
		close_conn(k->conn);
		free(k);
		return rv;
	}
	w->impl = k;
	return 0;
}

static int flush_acks(struct bench_worker *w, struct rabbit_cons *k)
{
	int st;

	if (k->unacked == 0) {
		return 0;
	}
	st = amqp_basic_ack(k->conn, CHANNEL, k->last_tag, 1);
	k->unacked = 0;
	if (st != AMQP_STATUS_OK) {
		bench_log(w, "basic.ack: %s", amqp_error_string2(st));
		return RMQ_EIO;
	}
	return 0;
}

static int rabbit_consume(struct bench_worker *w, unsigned timeout_ms)
{
	struct rabbit_cons *k = w->impl;
	struct timeval tv = {(long)(timeout_ms / 1000),
			     (long)(timeout_ms % 1000) * 1000};
	amqp_envelope_t env;
	amqp_rpc_reply_t r;
	char why[256];

	amqp_maybe_release_buffers(k->conn);
	r = amqp_consume_message(k->conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		bench_delivered(w, env.message.body.bytes,
				env.message.body.len);
		k->last_tag = env.delivery_tag;
		k->unacked++;
		amqp_destroy_envelope(&env);
		return k->unacked >= k->ack_every ? flush_acks(w, k) : 0;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
	    r.library_error == AMQP_STATUS_TIMEOUT) {
		return flush_acks(w, k); /* idle: settle what we hold */
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
	    r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
		/* A method other than basic.deliver: read it to say why. */
		amqp_frame_t f;
		if (amqp_simple_wait_frame(k->conn, &f) == AMQP_STATUS_OK &&
		    f.frame_type == AMQP_FRAME_METHOD &&
		    f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = f.payload.method.decoded;
			bench_log(w, "channel closed by the server: %u %.*s",
				  m->reply_code, (int)m->reply_text.len,
				  (char *)m->reply_text.bytes);
			return RMQ_EIO;
		}
		return 0;
	}
	reply_text(r, why, sizeof why);
	bench_log(w, "consume: %s", why);
	return RMQ_EIO;
}

static void rabbit_consumer_close(struct bench_worker *w)
{
	struct rabbit_cons *k = w->impl;

	if (k == NULL) {
		return;
	}
	flush_acks(w, k);
	close_conn(k->conn);
	free(k);
	w->impl = NULL;
}

const struct bench_backend bench_backend_rabbitmq = {
	.name = "rabbitmq",
	.setup = rabbit_setup,
	.teardown = rabbit_teardown,
	.producer_open = rabbit_producer_open,
	.publish = rabbit_publish,
	.wait = rabbit_wait,
	.producer_close = rabbit_producer_close,
	.consumer_open = rabbit_consumer_open,
	.consume = rabbit_consume,
	.consumer_close = rabbit_consumer_close,
};
