/* Unit tests of libraftmq against an in-process fake server.
 *
 * The fake runs its own libuv loop on its own thread, listens on
 * 127.0.0.1 (one port per fake node), decodes Requests, records them, and
 * answers through a per-test hook (or default answers). Each test checks
 * what the client library did on the wire and what it returned. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "cli_util.h"
#include "client_int.h"
#include "codec.h"
#include "raftmq.h"

/* ---- The fake server -------------------------------------------------------- */

#define FAKE_MAX_NODES 3
#define FAKE_MAX_RECS 1024

struct fake;

struct fake_conn {
	struct fake *f;
	int node;   /* index in fake.nodes */
	int serial; /* 1, 2, ... per fake, in accept order */
	uv_tcp_t tcp;
	struct frame_reader fr;
	char rbuf[65536];
	bool closing;
	struct fake_conn *next;
};

struct fake_node {
	uv_tcp_t listener;
	int port;
	uint64_t id;
};

struct rec {
	int node;
	int serial;
	Rmq__Request *req; /* owned */
};

/* Answer @r yourself (return true) or leave it to the default answers. */
typedef bool (*fake_hook)(struct fake *f, struct fake_conn *fc,
			  const Rmq__Request *r);

struct fake {
	uv_loop_t loop;
	uv_async_t stop;
	uv_thread_t thread;
	struct fake_node nodes[FAKE_MAX_NODES];
	int n_nodes;
	struct fake_conn *conns;
	int next_serial;
	fake_hook hook;
	uint64_t leader[2]; /* of shard 0 and shard 1 */
	uint64_t next_seq;  /* default PublishResp seq */
	int count;          /* free for hooks (fake thread) */
	uint64_t saved;     /* free for hooks (fake thread) */
	pthread_mutex_t mu;
	struct rec recs[FAKE_MAX_RECS]; /* mu */
	int n_recs;                     /* mu */
};

static void fc_close_cb(uv_handle_t *h)
{
	struct fake_conn *fc = h->data;
	struct fake_conn **cp;

	for (cp = &fc->f->conns; *cp != NULL; cp = &(*cp)->next) {
		if (*cp == fc) {
			*cp = fc->next;
			break;
		}
	}
	frame_reader_close(&fc->fr);
	free(fc);
}

static void fake_conn_close(struct fake_conn *fc)
{
	if (!fc->closing) {
		fc->closing = true;
		uv_close((uv_handle_t *)&fc->tcp, fc_close_cb);
	}
}

struct fake_write {
	uv_write_t w;
	uint8_t *buf;
};

static void fake_write_cb(uv_write_t *w, int status)
{
	struct fake_write *fw = (struct fake_write *)w;

	(void)status;
	free(fw->buf);
	free(fw);
}

static void fake_send(struct fake_conn *fc, const Rmq__ServerFrame *sf)
{
	struct fake_write *fw;
	size_t len;
	uv_buf_t b;

	if (fc->closing) {
		return;
	}
	fw = malloc(sizeof *fw);
	assert_non_null(fw);
	assert_int_equal(codec_pack_server_frame(sf, &fw->buf, &len), 0);
	b = uv_buf_init((char *)fw->buf, (unsigned)len);
	if (uv_write(&fw->w, (uv_stream_t *)&fc->tcp, &b, 1, fake_write_cb) !=
	    0) {
		free(fw->buf);
		free(fw);
	}
}

static void fake_respond(struct fake_conn *fc, Rmq__Response *resp)
{
	Rmq__ServerFrame sf = RMQ__SERVER_FRAME__INIT;

	sf.kind_case = RMQ__SERVER_FRAME__KIND_RESPONSE;
	sf.response = resp;
	fake_send(fc, &sf);
}

static void fake_error(struct fake_conn *fc, uint64_t id, Rmq__Code code,
		       const char *msg, uint64_t leader_id,
		       const char *leader_address)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__Error e = RMQ__ERROR__INIT;

	e.code = code;
	e.message = (char *)msg;
	e.leader_id = leader_id;
	e.leader_address = (char *)(leader_address ? leader_address : "");
	resp.id = id;
	resp.error = &e;
	fake_respond(fc, &resp);
}

static void fake_publish_ok(struct fake_conn *fc, uint64_t id, uint64_t seq,
			    bool duplicate)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__PublishResp pr = RMQ__PUBLISH_RESP__INIT;

	pr.seq = seq;
	pr.duplicate = duplicate;
	resp.id = id;
	resp.body_case = RMQ__RESPONSE__BODY_PUBLISH;
	resp.publish = &pr;
	fake_respond(fc, &resp);
}

static void fake_deliver(struct fake_conn *fc, uint64_t consumer_id,
			 uint64_t seq, const char *body, bool redelivered)
{
	Rmq__ServerFrame sf = RMQ__SERVER_FRAME__INIT;
	Rmq__Delivery d = RMQ__DELIVERY__INIT;
	Rmq__Header h = RMQ__HEADER__INIT;
	Rmq__Header *hp = &h;

	h.key = "k";
	h.value.data = (uint8_t *)"v";
	h.value.len = 1;
	d.consumer_id = consumer_id;
	d.queue = "q";
	d.seq = seq;
	d.body.data = (uint8_t *)body;
	d.body.len = strlen(body);
	d.n_headers = 1;
	d.headers = &hp;
	d.redelivered = redelivered;
	d.delivery_count = redelivered ? 2 : 1;
	sf.kind_case = RMQ__SERVER_FRAME__KIND_DELIVERY;
	sf.delivery = &d;
	fake_send(fc, &sf);
}

static void fake_ended(struct fake_conn *fc, uint64_t consumer_id)
{
	Rmq__ServerFrame sf = RMQ__SERVER_FRAME__INIT;
	Rmq__ConsumerEnded e = RMQ__CONSUMER_ENDED__INIT;
	Rmq__Error reason = RMQ__ERROR__INIT;

	reason.code = RMQ__CODE__NOT_LEADER;
	reason.message = "leadership lost";
	e.consumer_id = consumer_id;
	e.reason = &reason;
	sf.kind_case = RMQ__SERVER_FRAME__KIND_ENDED;
	sf.ended = &e;
	fake_send(fc, &sf);
}

static void fake_addr(const struct fake *f, int i, char *buf, size_t n)
{
	snprintf(buf, n, "127.0.0.1:%d", f->nodes[i].port);
}

static void fake_default(struct fake *f, struct fake_conn *fc,
			 const Rmq__Request *r)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;

	resp.id = r->id;
	switch (r->body_case) {
	case RMQ__REQUEST__BODY_HELLO: {
		Rmq__HelloResp h = RMQ__HELLO_RESP__INIT;
		h.node_id = f->nodes[fc->node].id;
		h.cluster_name = "fake";
		h.max_frame = RMQ_DEFAULT_MAX_FRAME;
		h.max_message_size = 1048576;
		resp.body_case = RMQ__RESPONSE__BODY_HELLO;
		resp.hello = &h;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_TOPOLOGY: {
		Rmq__TopologyResp t = RMQ__TOPOLOGY_RESP__INIT;
		Rmq__NodeInfo ni[FAKE_MAX_NODES];
		Rmq__NodeInfo *nip[FAKE_MAX_NODES];
		char addrs[FAKE_MAX_NODES][32];
		Rmq__ShardInfo si[2];
		Rmq__ShardInfo *sip[2];
		uint64_t reps[FAKE_MAX_NODES];
		Rmq__QueueInfo qi = RMQ__QUEUE_INFO__INIT;
		Rmq__QueueInfo *qip = &qi;
		for (int i = 0; i < f->n_nodes; i++) {
			rmq__node_info__init(&ni[i]);
			ni[i].id = f->nodes[i].id;
			fake_addr(f, i, addrs[i], sizeof addrs[i]);
			ni[i].client_address = addrs[i];
			nip[i] = &ni[i];
			reps[i] = f->nodes[i].id;
		}
		for (int s = 0; s < 2; s++) {
			rmq__shard_info__init(&si[s]);
			si[s].id = (uint32_t)s;
			si[s].leader = f->leader[s];
			si[s].term = 3;
			si[s].commit_index = 10 + (uint64_t)s;
			si[s].n_replicas = (size_t)f->n_nodes;
			si[s].replicas = reps;
			sip[s] = &si[s];
		}
		qi.name = "q";
		qi.shard = 1;
		t.node_id = f->nodes[fc->node].id;
		t.cluster_name = "fake";
		t.n_nodes = (size_t)f->n_nodes;
		t.nodes = nip;
		t.n_shards = 2;
		t.shards = sip;
		t.n_queues = 1;
		t.queues = &qip;
		resp.body_case = RMQ__RESPONSE__BODY_TOPOLOGY;
		resp.topology = &t;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_PUBLISH:
		fake_publish_ok(fc, r->id, ++f->next_seq, false);
		break;
	case RMQ__REQUEST__BODY_DECLARE: {
		Rmq__DeclareResp d = RMQ__DECLARE_RESP__INIT;
		d.shard = 1;
		d.created = strcmp(r->declare->name, "q") != 0;
		resp.body_case = RMQ__RESPONSE__BODY_DECLARE;
		resp.declare = &d;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_LIST: {
		Rmq__ListResp l = RMQ__LIST_RESP__INIT;
		Rmq__QueueInfo qi = RMQ__QUEUE_INFO__INIT;
		Rmq__QueueInfo *qip = &qi;
		uint64_t self = f->nodes[fc->node].id;
		qi.name = "q";
		qi.shard = 1;
		qi.leader = f->leader[1] == self ? self : 0;
		qi.ready = qi.leader != 0 ? 42 : 0;
		qi.unacked = qi.leader != 0 ? 5 : 0;
		l.n_queues = 1;
		l.queues = &qip;
		resp.body_case = RMQ__RESPONSE__BODY_LIST;
		resp.list = &l;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_SUBSCRIBE: {
		Rmq__SubscribeResp s = RMQ__SUBSCRIBE_RESP__INIT;
		resp.body_case = RMQ__RESPONSE__BODY_SUBSCRIBE;
		resp.subscribe = &s;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_SETTLE: {
		Rmq__SettleResp s = RMQ__SETTLE_RESP__INIT;
		resp.body_case = RMQ__RESPONSE__BODY_SETTLE;
		resp.settle = &s;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_CANCEL: {
		Rmq__CancelResp s = RMQ__CANCEL_RESP__INIT;
		resp.body_case = RMQ__RESPONSE__BODY_CANCEL;
		resp.cancel = &s;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_PING: {
		Rmq__PingResp s = RMQ__PING_RESP__INIT;
		resp.body_case = RMQ__RESPONSE__BODY_PING;
		resp.ping = &s;
		fake_respond(fc, &resp);
		break;
	}
	case RMQ__REQUEST__BODY_DELETE: {
		Rmq__DeleteResp s = RMQ__DELETE_RESP__INIT;
		resp.body_case = RMQ__RESPONSE__BODY_DELETE;
		resp.delete_ = &s;
		fake_respond(fc, &resp);
		break;
	}
	default:
		fake_error(fc, r->id, RMQ__CODE__BAD_REQUEST, "bad request", 0,
			   NULL);
		break;
	}
}

static int fake_frame_cb(void *arg, uint8_t *data, uint32_t len)
{
	struct fake_conn *fc = arg;
	struct fake *f = fc->f;
	Rmq__Request *r = rmq__request__unpack(NULL, len, data);
	const Rmq__Request *req = r;

	free(data);
	if (r == NULL) {
		return -1;
	}
	pthread_mutex_lock(&f->mu);
	if (f->n_recs < FAKE_MAX_RECS) {
		f->recs[f->n_recs].node = fc->node;
		f->recs[f->n_recs].serial = fc->serial;
		f->recs[f->n_recs].req = r;
		f->n_recs++;
		r = NULL;
	}
	pthread_mutex_unlock(&f->mu);
	if (f->hook == NULL || !f->hook(f, fc, req)) {
		fake_default(f, fc, req);
	}
	if (r != NULL) {
		rmq__request__free_unpacked(r, NULL);
	}
	return fc->closing ? 1 : 0;
}

static void fake_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct fake_conn *fc = h->data;
	(void)hint;
	b->base = fc->rbuf;
	b->len = sizeof fc->rbuf;
}

static void fake_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct fake_conn *fc = s->data;

	if (n < 0) {
		fake_conn_close(fc);
		return;
	}
	if (n > 0 && frame_reader_feed(&fc->fr, (const uint8_t *)b->base,
				       (size_t)n, fake_frame_cb, fc) != 0) {
		fake_conn_close(fc);
	}
}

static void fake_accept_cb(uv_stream_t *server, int status)
{
	struct fake *f = server->data;
	struct fake_conn *fc;
	int node = 0;

	if (status < 0) {
		return;
	}
	for (int i = 0; i < f->n_nodes; i++) {
		if ((uv_stream_t *)&f->nodes[i].listener == server) {
			node = i;
		}
	}
	fc = calloc(1, sizeof *fc);
	assert_non_null(fc);
	fc->f = f;
	fc->node = node;
	fc->serial = ++f->next_serial;
	frame_reader_init(&fc->fr, RMQ_DEFAULT_MAX_FRAME);
	uv_tcp_init(&f->loop, &fc->tcp);
	fc->tcp.data = fc;
	fc->next = f->conns;
	f->conns = fc;
	if (uv_accept(server, (uv_stream_t *)&fc->tcp) != 0) {
		fake_conn_close(fc);
		return;
	}
	uv_read_start((uv_stream_t *)&fc->tcp, fake_alloc_cb, fake_read_cb);
}

static void fake_stop_cb(uv_async_t *a)
{
	struct fake *f = a->data;

	for (struct fake_conn *fc = f->conns; fc != NULL; fc = fc->next) {
		fake_conn_close(fc);
	}
	for (int i = 0; i < f->n_nodes; i++) {
		uv_close((uv_handle_t *)&f->nodes[i].listener, NULL);
	}
	uv_close((uv_handle_t *)&f->stop, NULL);
}

static void fake_main(void *arg)
{
	struct fake *f = arg;
	uv_run(&f->loop, UV_RUN_DEFAULT);
}

static struct fake *fake_start(int n_nodes, fake_hook hook)
{
	struct fake *f = calloc(1, sizeof *f);

	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	pthread_mutex_init(&f->mu, NULL);
	f->n_nodes = n_nodes;
	f->hook = hook;
	f->leader[0] = 1;
	f->leader[1] = 1;
	for (int i = 0; i < n_nodes; i++) {
		struct sockaddr_in sa;
		struct sockaddr_storage name;
		int len = sizeof name;
		f->nodes[i].id = (uint64_t)i + 1;
		uv_tcp_init(&f->loop, &f->nodes[i].listener);
		f->nodes[i].listener.data = f;
		uv_ip4_addr("127.0.0.1", 0, &sa);
		assert_int_equal(uv_tcp_bind(&f->nodes[i].listener,
					     (const struct sockaddr *)&sa, 0),
				 0);
		assert_int_equal(uv_listen((uv_stream_t *)&f->nodes[i].listener,
					   16, fake_accept_cb),
				 0);
		uv_tcp_getsockname(&f->nodes[i].listener,
				   (struct sockaddr *)&name, &len);
		f->nodes[i].port =
			ntohs(((struct sockaddr_in *)&name)->sin_port);
	}
	uv_async_init(&f->loop, &f->stop, fake_stop_cb);
	f->stop.data = f;
	assert_int_equal(uv_thread_create(&f->thread, fake_main, f), 0);
	return f;
}

static void fake_stop(struct fake *f)
{
	uv_async_send(&f->stop);
	uv_thread_join(&f->thread);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < f->n_recs; i++) {
		rmq__request__free_unpacked(f->recs[i].req, NULL);
	}
	pthread_mutex_destroy(&f->mu);
	free(f);
}

/* Requests of kind @kind recorded so far (copied pointers, stable). */
static int fake_find(struct fake *f, Rmq__Request__BodyCase kind,
		     struct rec *out, int max)
{
	int n = 0;

	pthread_mutex_lock(&f->mu);
	for (int i = 0; i < f->n_recs && n < max; i++) {
		if (f->recs[i].req->body_case == kind) {
			out[n++] = f->recs[i];
		}
	}
	pthread_mutex_unlock(&f->mu);
	return n;
}

static void fake_servers(const struct fake *f, int n, char *buf, size_t sz)
{
	size_t off = 0;

	buf[0] = '\0';
	for (int i = 0; i < n; i++) {
		off += (size_t)snprintf(buf + off, sz - off, "%s127.0.0.1:%d",
					i ? "," : "", f->nodes[i].port);
	}
}

static struct rmq_client *connect_fake(struct fake *f, int n_seeds,
				       struct rmq_options *o)
{
	struct rmq_options def;
	struct rmq_client *c = NULL;
	char servers[256];

	if (o == NULL) {
		rmq_options_init(&def);
		o = &def;
	}
	fake_servers(f, n_seeds, servers, sizeof servers);
	o->servers = servers;
	assert_int_equal(rmq_connect(o, &c), 0);
	assert_non_null(c);
	return c;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- Pure helpers ------------------------------------------------------------ */

static void servers_list_parses_and_trims(void **state)
{
	char **v;
	int n;

	(void)state;
	n = cutil_parse_servers(" a:1, b:2,,[::1]:7101 ", &v);
	assert_int_equal(n, 3);
	assert_string_equal(v[0], "a:1");
	assert_string_equal(v[1], "b:2");
	assert_string_equal(v[2], "[::1]:7101");
	cutil_free_servers(v, n);
	assert_int_equal(cutil_parse_servers("nocolon", &v), RMQ_EINVAL);
	assert_int_equal(cutil_parse_servers("h:0", &v), RMQ_EINVAL);
	assert_int_equal(cutil_parse_servers("h:99999", &v), RMQ_EINVAL);
	assert_int_equal(cutil_parse_servers(" , ", &v), RMQ_EINVAL);
}

static void addr_split_handles_ipv6(void **state)
{
	char host[64];
	int port;

	(void)state;
	assert_int_equal(cutil_split_addr("[::1]:80", host, sizeof host, &port),
			 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 80);
	assert_int_equal(cutil_split_addr("localhost:7101", host, sizeof host,
					  &port),
			 0);
	assert_string_equal(host, "localhost");
	assert_int_equal(port, 7101);
	assert_int_equal(cutil_split_addr(":80", host, sizeof host, &port),
			 RMQ_EINVAL);
}

static void body_pads_with_dots_to_size(void **state)
{
	char buf[64];

	(void)state;
	assert_int_equal(cliutil_make_body(buf, sizeof buf, "P", 3, 10), 10);
	assert_memory_equal(buf, "P-3.......", 10);
	assert_int_equal(cliutil_make_body(buf, sizeof buf, "abc", 1234, 0), 8);
	assert_string_equal(buf, "abc-1234");
	/* --size shorter than the body: no truncation. */
	assert_int_equal(cliutil_make_body(buf, sizeof buf, "abc", 1234, 4), 8);
	assert_string_equal(buf, "abc-1234");
	assert_int_equal(cliutil_make_body(buf, 4, "abc", 1234, 0), 0);
}

static void seconds_parse_fractions(void **state)
{
	unsigned ms;
	uint64_t v;

	(void)state;
	assert_int_equal(cliutil_parse_seconds("0.5", &ms), 0);
	assert_int_equal(ms, 500);
	assert_int_equal(cliutil_parse_seconds("2", &ms), 0);
	assert_int_equal(ms, 2000);
	assert_int_equal(cliutil_parse_seconds("-1", &ms), -1);
	assert_int_equal(cliutil_parse_seconds("x", &ms), -1);
	assert_int_equal(cliutil_parse_u64("12", 1, 100, &v), 0);
	assert_int_equal(v, 12);
	assert_int_equal(cliutil_parse_u64("0", 1, 100, &v), -1);
	assert_int_equal(cliutil_parse_u64("-3", 0, 100, &v), -1);
}

/* ---- Connecting and topology ------------------------------------------------- */

static void client_connect_dead_seeds_fails_fast(void **state)
{
	struct rmq_options o;
	struct rmq_client *c = NULL;
	double t0 = now_s();

	(void)state;
	rmq_options_init(&o);
	o.servers = "127.0.0.1:1,127.0.0.1:2";
	o.connect_timeout_ms = 1000;
	assert_int_equal(rmq_connect(&o, &c), RMQ_ECONNECT);
	assert_null(c);
	assert_true(now_s() - t0 < 1.5);
	assert_non_null(strstr(rmq_last_error(), "127.0.0.1:1"));
}

static void client_connect_learns_topology(void **state)
{
	struct fake *f = fake_start(2, NULL);
	struct rmq_cluster_info *ci;
	struct rmq_client *c;

	(void)state;
	f->leader[0] = 1;
	f->leader[1] = 2;
	c = connect_fake(f, 1, NULL);
	assert_int_equal(rmq_cluster_status(c, &ci), 0);
	assert_string_equal(ci->cluster_name, "fake");
	assert_int_equal(ci->n_nodes, 2);
	assert_true(ci->nodes[0].reachable);
	assert_true(ci->nodes[1].reachable);
	assert_int_equal(ci->n_shards, 2);
	assert_int_equal(ci->shards[0].leader, 1);
	assert_int_equal(ci->shards[1].leader, 2);
	assert_int_equal(ci->shards[1].commit_index, 11);
	assert_int_equal(ci->shards[1].n_replicas, 2);
	rmq_cluster_info_free(ci);
	rmq_close(c, 1000);
	fake_stop(f);
}

static void client_list_merges_leader_counts(void **state)
{
	struct fake *f = fake_start(2, NULL);
	struct rmq_queue_info *qs;
	struct rmq_client *c;
	uint32_t shard = 0;
	bool created = true;
	size_t n;

	(void)state;
	f->leader[0] = 1;
	f->leader[1] = 2;
	c = connect_fake(f, 2, NULL);
	assert_int_equal(rmq_queue_list(c, &qs, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(qs[0].name, "q");
	assert_int_equal(qs[0].leader, 2);
	assert_int_equal(qs[0].ready, 42);
	assert_int_equal(qs[0].unacked, 5);
	free(qs);
	assert_int_equal(rmq_queue_declare_ex(c, "q", NULL, &created, &shard),
			 0);
	assert_false(created);
	assert_int_equal(shard, 1);
	assert_int_equal(rmq_queue_declare(c, "other", NULL, &created), 0);
	assert_true(created);
	assert_int_equal(rmq_queue_delete(c, "other"), 0);
	rmq_close(c, 1000);
	fake_stop(f);
}

/* ---- Publishing --------------------------------------------------------------- */

static void client_publish_confirmed_returns_seq(void **state)
{
	struct fake *f = fake_start(1, NULL);
	struct rmq_options o;
	struct rmq_client *c;
	struct rec recs[4];
	uint64_t seq = 0;

	(void)state;
	rmq_options_init(&o);
	o.producer_id = "test-producer";
	c = connect_fake(f, 1, &o);
	assert_int_equal(rmq_publish(c, "q", "hello", 5, &seq), 0);
	assert_int_equal(seq, 1);
	assert_int_equal(rmq_publish(c, "q", "again", 5, &seq), 0);
	assert_int_equal(seq, 2);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 4), 2);
	assert_string_equal(recs[0].req->publish->queue, "q");
	assert_string_equal(recs[0].req->publish->producer_id, "test-producer");
	assert_int_equal(recs[0].req->publish->producer_seq, 1);
	assert_int_equal(recs[1].req->publish->producer_seq, 2);
	assert_memory_equal(recs[0].req->publish->body.data, "hello", 5);
	rmq_close(c, 1000);
	fake_stop(f);
}

static void client_publish_unknown_queue_not_found(void **state)
{
	struct fake *f = fake_start(1, NULL);
	struct rmq_client *c = connect_fake(f, 1, NULL);
	struct rec recs[4];

	(void)state;
	assert_int_equal(rmq_publish(c, "nope", "x", 1, NULL), RMQ_ENOTFOUND);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 4), 0);
	rmq_close(c, 1000);
	fake_stop(f);
}

static bool hook_not_leader(struct fake *f, struct fake_conn *fc,
			    const Rmq__Request *r)
{
	char addr[32];

	if (r->body_case == RMQ__REQUEST__BODY_PUBLISH && fc->node == 0) {
		fake_addr(f, 1, addr, sizeof addr);
		fake_error(fc, r->id, RMQ__CODE__NOT_LEADER, "not leader", 2,
			   addr);
		return true;
	}
	return false;
}

static void client_publish_not_leader_redirects(void **state)
{
	struct fake *f = fake_start(2, hook_not_leader);
	struct rmq_client *c;
	struct rec recs[4];
	uint64_t seq = 0;

	(void)state;
	f->leader[1] = 1; /* stale: node 1 says it is not the leader */
	c = connect_fake(f, 1, NULL);
	assert_int_equal(rmq_publish(c, "q", "m", 1, &seq), 0);
	assert_int_equal(seq, 1);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 4), 2);
	assert_int_equal(recs[0].node, 0);
	assert_int_equal(recs[1].node, 1);
	assert_string_equal(recs[0].req->publish->producer_id,
			    recs[1].req->publish->producer_id);
	assert_int_equal(recs[0].req->publish->producer_seq,
			 recs[1].req->publish->producer_seq);
	/* The resend goes with a higher epoch than the refused publish, so
	 * a server that fenced the refused one takes it. */
	assert_true(recs[0].req->publish->epoch >= 1);
	assert_true(recs[1].req->publish->epoch > recs[0].req->publish->epoch);
	rmq_close(c, 1000);
	fake_stop(f);
}

static bool hook_unknown_outcome(struct fake *f, struct fake_conn *fc,
				 const Rmq__Request *r)
{
	if (r->body_case != RMQ__REQUEST__BODY_PUBLISH) {
		return false;
	}
	if (f->count++ == 0) {
		fake_error(fc, r->id, RMQ__CODE__UNKNOWN_OUTCOME,
			   "leadership lost", 0, NULL);
	} else {
		fake_publish_ok(fc, r->id, 7, true);
	}
	return true;
}

static void client_publish_unknown_outcome_resends_same_seq(void **state)
{
	struct fake *f = fake_start(1, hook_unknown_outcome);
	struct rmq_client *c = connect_fake(f, 1, NULL);
	struct rec recs[4];
	uint64_t seq = 0;

	(void)state;
	assert_int_equal(rmq_publish(c, "q", "m", 1, &seq), 0);
	assert_int_equal(seq, 7);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 4), 2);
	assert_string_equal(recs[0].req->publish->producer_id,
			    recs[1].req->publish->producer_id);
	assert_int_equal(recs[0].req->publish->producer_seq, 1);
	assert_int_equal(recs[1].req->publish->producer_seq, 1);
	rmq_close(c, 1000);
	fake_stop(f);
}

/* Node 1 (index 0) freezes at the first publish, like a SIGSTOPped
 * process: its sockets stay open and it answers nothing, not even a new
 * connection's Hello. Node 2 takes over as the shard's leader. */
static bool hook_freeze_leader(struct fake *f, struct fake_conn *fc,
			       const Rmq__Request *r)
{
	if (fc->node == 0 && r->body_case == RMQ__REQUEST__BODY_PUBLISH) {
		f->count = 1;
		f->leader[1] = 2;
	}
	return fc->node == 0 && f->count == 1;
}

static void client_silent_node_fails_over(void **state)
{
	struct fake *f = fake_start(2, hook_freeze_leader);
	struct rmq_options o;
	struct rmq_client *c;
	struct rec recs[8];
	uint64_t seq = 0;
	double t0;
	int n;

	(void)state;
	rmq_options_init(&o);
	o.liveness_timeout_ms = 600;
	o.publish_timeout_ms = 20000;
	c = connect_fake(f, 2, &o);
	t0 = now_s();
	assert_int_equal(rmq_publish(c, "q", "m", 1, &seq), 0);
	/* Without liveness the publish would wait for its 20 s deadline. */
	assert_true(now_s() - t0 < 5.0);
	n = fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 8);
	assert_true(n >= 2);
	assert_int_equal(recs[0].node, 0);
	assert_int_equal(recs[n - 1].node, 1);
	assert_int_equal(recs[0].req->publish->producer_seq,
			 recs[n - 1].req->publish->producer_seq);
	/* The silent node was probed (the other one may have been pinged
	 * too, and first: it is quiet as well until the failover). */
	n = fake_find(f, RMQ__REQUEST__BODY_PING, recs, 8);
	bool pinged_silent = false;
	for (int i = 0; i < n; i++) {
		pinged_silent = pinged_silent || recs[i].node == 0;
	}
	assert_true(pinged_silent);
	rmq_close(c, 1000);
	fake_stop(f);
}

/* First connection: swallow publishes and drop the connection at the
 * @close_at-th; later connections get the default answers. */
static bool swallow_first_conn(struct fake *f, struct fake_conn *fc,
			       const Rmq__Request *r, int close_at)
{
	if (r->body_case != RMQ__REQUEST__BODY_PUBLISH) {
		return false;
	}
	if (f->saved == 0) {
		f->saved = (uint64_t)fc->serial;
	}
	if ((uint64_t)fc->serial == f->saved) {
		if (++f->count == close_at) {
			fake_conn_close(fc);
		}
		return true;
	}
	return false;
}

static bool hook_drop_after_five(struct fake *f, struct fake_conn *fc,
				 const Rmq__Request *r)
{
	return swallow_first_conn(f, fc, r, 5);
}

struct confirms {
	pthread_mutex_t mu;
	int ok;
	int failed;
	uint64_t seqs[16];
	uint64_t nodes[16]; /* rmq_confirm_node() in each good confirm */
	int pipe_unblocked; /* callbacks run with SIGPIPE deliverable */
};

static void count_cb(void *arg, int status, uint64_t seq)
{
	struct confirms *cf = arg;
	sigset_t cur;

	(void)seq;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	pthread_mutex_lock(&cf->mu);
	cf->pipe_unblocked += !sigismember(&cur, SIGPIPE);
	if (status == 0) {
		cf->ok++;
	} else {
		cf->failed++;
	}
	pthread_mutex_unlock(&cf->mu);
}

static void confirm_cb(void *arg, int status, uint64_t seq)
{
	struct confirms *cf = arg;

	pthread_mutex_lock(&cf->mu);
	if (status == 0) {
		cf->nodes[cf->ok] = rmq_confirm_node();
		cf->seqs[cf->ok++] = seq;
	} else {
		cf->failed++;
	}
	pthread_mutex_unlock(&cf->mu);
}

static void client_conn_drop_resends_in_order(void **state)
{
	struct fake *f = fake_start(1, hook_drop_after_five);
	struct rmq_client *c = connect_fake(f, 1, NULL);
	struct confirms cf = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rec recs[16];
	int n;

	(void)state;
	for (int i = 0; i < 5; i++) {
		char body[8];
		snprintf(body, sizeof body, "m%d", i);
		assert_int_equal(rmq_publish_async(c, "q", body, strlen(body),
						   NULL, 0, confirm_cb, &cf),
				 0);
	}
	assert_int_equal(rmq_flush(c, 5000), 0);
	assert_int_equal(cf.ok, 5);
	assert_int_equal(cf.failed, 0);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(cf.nodes[i],
				 1); /* the fake's node 1 answered */
	}
	assert_int_equal(rmq_confirm_node(), 0); /* outside a callback */
	n = fake_find(f, RMQ__REQUEST__BODY_PUBLISH, recs, 16);
	assert_int_equal(n, 10);
	for (int i = 0; i < 5; i++) {
		char body[8];
		snprintf(body, sizeof body, "m%d", i);
		assert_int_equal(recs[i].serial, recs[0].serial);
		assert_int_not_equal(recs[5 + i].serial, recs[0].serial);
		assert_int_equal(recs[5 + i].req->publish->producer_seq,
				 (uint64_t)i + 1);
		assert_memory_equal(recs[5 + i].req->publish->body.data, body,
				    strlen(body));
	}
	rmq_close(c, 1000);
	fake_stop(f);
}

static bool hook_too_large(struct fake *f, struct fake_conn *fc,
			   const Rmq__Request *r)
{
	(void)f;
	if (r->body_case == RMQ__REQUEST__BODY_PUBLISH) {
		fake_error(fc, r->id, RMQ__CODE__TOO_LARGE,
			   "message too large: 2000000 > 1048576", 0, NULL);
		return true;
	}
	return false;
}

/* First connection: close it at the first publish, while the client still
 * has megabytes to write into it. */
static bool hook_close_at_first(struct fake *f, struct fake_conn *fc,
				const Rmq__Request *r)
{
	return swallow_first_conn(f, fc, r, 1);
}

/* A server that hangs up while the client writes must not kill the
 * application with SIGPIPE (its default action): the client fails over
 * and every publish is confirmed on the next connection. */
static void client_server_hangup_no_sigpipe(void **state)
{
	struct fake *f = fake_start(1, hook_close_at_first);
	struct rmq_options o;
	struct rmq_client *c;
	struct confirms cf = {.mu = PTHREAD_MUTEX_INITIALIZER};
	static char body[64 * 1024];
	void (*old)(int) = signal(SIGPIPE, SIG_DFL);

	(void)state;
	memset(body, 'x', sizeof body);
	rmq_options_init(&o);
	o.publish_window = 200;
	c = connect_fake(f, 1, &o);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(rmq_publish_async(c, "q", body, sizeof body,
						   NULL, 0, count_cb, &cf),
				 0);
	}
	assert_int_equal(rmq_flush(c, 20000), 0);
	assert_int_equal(cf.ok, 200);
	/* Callbacks run on the I/O thread, the one that writes to sockets. */
	assert_int_equal(cf.pipe_unblocked, 0);
	rmq_close(c, 1000);
	fake_stop(f);
	signal(SIGPIPE, old);
}

static void client_publish_too_large_keeps_message(void **state)
{
	struct fake *f = fake_start(1, hook_too_large);
	struct rmq_client *c = connect_fake(f, 1, NULL);

	(void)state;
	assert_int_equal(rmq_publish(c, "q", "big", 3, NULL), RMQ_ETOOLARGE);
	assert_string_equal(rmq_last_error(),
			    "message too large: 2000000 > 1048576");
	rmq_close(c, 1000);
	fake_stop(f);
}

static bool hook_swallow_publish(struct fake *f, struct fake_conn *fc,
				 const Rmq__Request *r)
{
	(void)f;
	(void)fc;
	return r->body_case == RMQ__REQUEST__BODY_PUBLISH;
}

static void client_publish_timeout_fails(void **state)
{
	struct fake *f = fake_start(1, hook_swallow_publish);
	struct rmq_options o;
	struct rmq_client *c;
	double t0;

	(void)state;
	rmq_options_init(&o);
	o.publish_timeout_ms = 300;
	c = connect_fake(f, 1, &o);
	t0 = now_s();
	assert_int_equal(rmq_publish(c, "q", "m", 1, NULL), RMQ_ETIMEDOUT);
	assert_true(now_s() - t0 >= 0.25);
	assert_true(now_s() - t0 < 2.0);
	rmq_close(c, 0);
	fake_stop(f);
}

static void client_publish_window_full_in_callback(void **state);

/* ---- Consuming ---------------------------------------------------------------- */

static bool hook_deliver_three(struct fake *f, struct fake_conn *fc,
			       const Rmq__Request *r)
{
	(void)f;
	if (r->body_case == RMQ__REQUEST__BODY_SUBSCRIBE) {
		fake_default(f, fc, r);
		fake_deliver(fc, r->subscribe->consumer_id, 1, "a", false);
		fake_deliver(fc, r->subscribe->consumer_id, 2, "b", false);
		fake_deliver(fc, r->subscribe->consumer_id, 3, "c", false);
		return true;
	}
	return false;
}

static void client_subscribe_acks_are_batched(void **state)
{
	struct fake *f = fake_start(1, hook_deliver_three);
	struct rmq_client *c = connect_fake(f, 1, NULL);
	struct rmq_consumer *k;
	struct rec subs[4];
	struct rec recs[8];
	size_t total = 0;
	int n;

	(void)state;
	assert_int_equal(rmq_subscribe(c, "q", 10, NULL, NULL, &k), 0);
	for (int i = 0; i < 3; i++) {
		struct rmq_delivery *d;
		assert_int_equal(rmq_receive(k, 2000, &d), 0);
		assert_int_equal(d->seq, (uint64_t)i + 1);
		assert_int_equal(d->len, 1);
		assert_int_equal(((const char *)d->body)[0], 'a' + i);
		assert_int_equal(d->n_headers, 1);
		assert_string_equal(d->headers[0].key, "k");
		assert_false(d->redelivered);
		assert_int_equal(rmq_ack(k, d->seq), 0);
		rmq_delivery_free(d);
	}
	assert_int_equal(rmq_settle_flush(c, 2000), 0);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_SUBSCRIBE, subs, 4),
			 1);
	assert_int_equal(subs[0].req->subscribe->prefetch, 10);
	n = fake_find(f, RMQ__REQUEST__BODY_SETTLE, recs, 8);
	assert_in_range(n, 1, 3);
	for (int i = 0; i < n; i++) {
		assert_int_equal(recs[i].req->settle->consumer_id,
				 subs[0].req->subscribe->consumer_id);
		assert_int_equal(recs[i].req->settle->outcome,
				 RMQ__OUTCOME__ACK);
		for (size_t j = 0; j < recs[i].req->settle->n_seqs; j++) {
			assert_int_equal(recs[i].req->settle->seqs[j],
					 total + j + 1);
		}
		total += recs[i].req->settle->n_seqs;
	}
	assert_int_equal(total, 3);
	assert_int_equal(rmq_receive(k, 50, &(struct rmq_delivery *){NULL}),
			 RMQ_ETIMEDOUT);
	assert_int_equal(rmq_unsubscribe(k), 0);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_CANCEL, recs, 8), 1);
	rmq_close(c, 1000);
	fake_stop(f);
}

static bool hook_end_first(struct fake *f, struct fake_conn *fc,
			   const Rmq__Request *r)
{
	if (r->body_case != RMQ__REQUEST__BODY_SUBSCRIBE) {
		return false;
	}
	fake_default(f, fc, r);
	if (f->count++ == 0) {
		fake_ended(fc, r->subscribe->consumer_id);
	} else {
		fake_deliver(fc, r->subscribe->consumer_id, 9, "again", true);
	}
	return true;
}

struct got {
	pthread_mutex_t mu;
	int n;
	uint64_t seq;
	bool redelivered;
	char body[16];
	int ack_rv;
};

static void delivery_cb(void *arg, const struct rmq_delivery *d)
{
	struct got *g = arg;

	pthread_mutex_lock(&g->mu);
	g->n++;
	g->seq = d->seq;
	g->redelivered = d->redelivered;
	snprintf(g->body, sizeof g->body, "%.*s", (int)d->len,
		 (const char *)d->body);
	g->ack_rv = rmq_ack(d->consumer, d->seq);
	pthread_mutex_unlock(&g->mu);
}

static void client_consumer_ended_resubscribes(void **state)
{
	struct fake *f = fake_start(1, hook_end_first);
	struct rmq_client *c = connect_fake(f, 1, NULL);
	struct got g = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rmq_consumer *k;
	struct rec subs[4];
	double t0 = now_s();
	int n = 0;

	(void)state;
	assert_int_equal(rmq_subscribe(c, "q", 5, delivery_cb, &g, &k), 0);
	while (now_s() - t0 < 3.0) {
		pthread_mutex_lock(&g.mu);
		n = g.n;
		pthread_mutex_unlock(&g.mu);
		if (n > 0) {
			break;
		}
		usleep(5000);
	}
	assert_int_equal(n, 1);
	assert_int_equal(g.seq, 9);
	assert_true(g.redelivered);
	assert_string_equal(g.body, "again");
	assert_int_equal(g.ack_rv, 0);
	assert_int_equal(rmq_settle_flush(c, 2000), 0);
	assert_int_equal(fake_find(f, RMQ__REQUEST__BODY_SUBSCRIBE, subs, 4),
			 2);
	assert_string_equal(subs[1].req->subscribe->queue, "q");
	assert_int_equal(subs[0].req->subscribe->consumer_id,
			 subs[1].req->subscribe->consumer_id);
	assert_int_equal(rmq_unsubscribe(k), 0);
	rmq_close(c, 1000);
	fake_stop(f);
}

/* A confirm callback that publishes again: the window is full, so the
 * library must refuse with RMQ_EFULL instead of blocking its I/O thread. */
struct window_state {
	struct rmq_client *c;
	_Atomic int full;
	_Atomic int done;
};

static void window_cb(void *arg, int status, uint64_t seq)
{
	struct window_state *w = arg;

	(void)seq;
	(void)status;
	if (rmq_publish_async(w->c, "q", "x", 1, NULL, 0, NULL, NULL) ==
	    RMQ_EFULL) {
		w->full++;
	}
	w->done++;
}

static void client_publish_window_full_in_callback(void **state)
{
	struct fake *f = fake_start(1, NULL);
	struct rmq_options o;
	struct window_state w = {0};

	(void)state;
	rmq_options_init(&o);
	o.publish_window = 1;
	w.c = connect_fake(f, 1, &o);
	assert_int_equal(
		rmq_publish_async(w.c, "q", "x", 1, NULL, 0, window_cb, &w), 0);
	assert_int_equal(rmq_flush(w.c, 2000), 0);
	assert_int_equal(w.done, 1);
	assert_int_equal(w.full, 1);
	rmq_close(w.c, 1000);
	fake_stop(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(servers_list_parses_and_trims),
		cmocka_unit_test(addr_split_handles_ipv6),
		cmocka_unit_test(body_pads_with_dots_to_size),
		cmocka_unit_test(seconds_parse_fractions),
		cmocka_unit_test(client_connect_dead_seeds_fails_fast),
		cmocka_unit_test(client_connect_learns_topology),
		cmocka_unit_test(client_list_merges_leader_counts),
		cmocka_unit_test(client_publish_confirmed_returns_seq),
		cmocka_unit_test(client_publish_unknown_queue_not_found),
		cmocka_unit_test(client_publish_not_leader_redirects),
		cmocka_unit_test(client_silent_node_fails_over),
		cmocka_unit_test(client_server_hangup_no_sigpipe),
		cmocka_unit_test(
			client_publish_unknown_outcome_resends_same_seq),
		cmocka_unit_test(client_conn_drop_resends_in_order),
		cmocka_unit_test(client_publish_too_large_keeps_message),
		cmocka_unit_test(client_publish_timeout_fails),
		cmocka_unit_test(client_publish_window_full_in_callback),
		cmocka_unit_test(client_subscribe_acks_are_batched),
		cmocka_unit_test(client_consumer_ended_resubscribes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
