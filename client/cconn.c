/* One TCP connection from the client to one server address.
 *
 * The happy path is: cconn_ensure() resolves the address (literal IPs need
 * no resolver), connects with a connect timeout, then client_conn_up()
 * sends Hello; cconn_send() appends frames to an output buffer which is
 * written in one uv_write at a time (frames coalesce while a write is in
 * flight); incoming bytes are reassembled by frame_reader and handed to
 * client_frame().
 *
 * Failure modes are: the address does not resolve, the connect fails or
 * times out, the peer closes or sends a malformed frame, a write fails.
 * Each ends in cconn_fail(): the tcp handle is closed, every request in
 * flight completes with the error, client_conn_down() lets the client
 * reroute, and the next attempt waits for an exponential backoff capped by
 * max_backoff_ms (none right after a connection that had worked).
 *
 * Thread: the I/O thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

static void conn_close_cb(uv_handle_t *h);

struct cconn *cconn_get(struct rmq_client *c, const char *addr)
{
	struct link *l;
	struct cconn *x;

	for (l = c->conns.next; l != &c->conns; l = l->next) {
		x = container_of(l, struct cconn, link);
		if (strcmp(x->addr, addr) == 0) {
			return x;
		}
	}
	if (strlen(addr) >= RMQ_ADDR_MAX) {
		return NULL;
	}
	x = calloc(1, sizeof *x);
	if (x == NULL) {
		return NULL;
	}
	x->c = c;
	strcpy(x->addr, addr);
	x->state = CONN_IDLE;
	link_init(&x->reqs);
	frame_reader_init(&x->fr, RMQ_DEFAULT_MAX_FRAME);
	uv_timer_init(&c->loop, &x->timer);
	x->timer.data = x;
	list_push_back(&c->conns, &x->link);
	return x;
}

static unsigned next_backoff(struct cconn *x)
{
	unsigned cap = x->c->o.max_backoff_ms;
	unsigned b = 50;

	if (x->failed_attempts == 0) {
		return 0;
	}
	for (unsigned i = 1; i < x->failed_attempts && b < cap; i++) {
		b *= 2;
	}
	return b < cap ? b : cap;
}

/* An attempt that never got a tcp handle (resolution failed). */
static void attempt_failed_early(struct cconn *x)
{
	x->failed_attempts++;
	x->attempted = true;
	x->last_fail_at = client_now();
	x->state = CONN_IDLE;
	x->backoff_ms = next_backoff(x);
	x->next_attempt = client_now() + x->backoff_ms;
	client_conn_down(x->c, x, RMQ_ECONNECT);
}

static void read_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct cconn *x = h->data;
	(void)hint;
	b->base = x->rbuf;
	b->len = sizeof x->rbuf;
}

static int on_frame_cb(void *arg, uint8_t *data, uint32_t len)
{
	struct cconn *x = arg;
	Rmq__ServerFrame *f = rmq__server_frame__unpack(NULL, len, data);

	free(data);
	if (f == NULL) {
		return RMQ_EPROTO;
	}
	client_frame(x->c, x, f);
	return x->state == CONN_CONNECTED ? 0 : 1;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct cconn *x = s->data;
	struct rmq_client *c = x->c;

	if (n < 0) {
		cconn_fail(x, RMQ_ECONNECT);
	} else if (n > 0) {
		int rv;
		x->last_rx = client_now();
		rv = frame_reader_feed(&x->fr, (const uint8_t *)b->base,
				       (size_t)n, on_frame_cb, x);
		if (rv != 0 && x->state == CONN_CONNECTED) {
			cconn_fail(x, RMQ_EPROTO);
		}
	}
	client_pump(c);
}

static void start_write(struct cconn *x);

static void write_cb(uv_write_t *w, int status)
{
	struct cconn *x = container_of(w, struct cconn, wreq);

	x->writing = false;
	x->wbuf.len = 0;
	if (x->wbuf.cap > (4u << 20)) {
		free(x->wbuf.data);
		memset(&x->wbuf, 0, sizeof x->wbuf);
	}
	if (status < 0) {
		if (x->state == CONN_CONNECTED) {
			cconn_fail(x, RMQ_ECONNECT);
			client_pump(x->c);
		}
		return;
	}
	start_write(x);
}

static void deferred_fail_cb(uv_timer_t *t)
{
	struct cconn *x = t->data;

	cconn_fail(x, RMQ_ECONNECT);
	client_pump(x->c);
}

static void start_write(struct cconn *x)
{
	struct buf tmp;
	uv_buf_t b;

	if (x->writing || x->out.len == 0 || x->state != CONN_CONNECTED) {
		return;
	}
	tmp = x->wbuf;
	x->wbuf = x->out;
	x->out = tmp;
	x->out.len = 0;
	b = uv_buf_init((char *)x->wbuf.data, (unsigned)x->wbuf.len);
	if (uv_write(&x->wreq, (uv_stream_t *)&x->tcp, &b, 1, write_cb) != 0) {
		/* Fail from the timer, not from inside the caller's loop. */
		x->wbuf.len = 0;
		uv_read_stop((uv_stream_t *)&x->tcp);
		uv_timer_start(&x->timer, deferred_fail_cb, 0, 0);
		return;
	}
	x->writing = true;
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct cconn *x = container_of(req, struct cconn, connect_req);

	if (x->state != CONN_CONNECTING) {
		return; /* closed meanwhile (timeout or shutdown) */
	}
	if (status < 0) {
		cconn_fail(x, RMQ_ECONNECT);
		client_pump(x->c);
		return;
	}
	uv_timer_stop(&x->timer);
	if (uv_read_start((uv_stream_t *)&x->tcp, read_alloc_cb, read_cb) !=
	    0) {
		cconn_fail(x, RMQ_ECONNECT);
		client_pump(x->c);
		return;
	}
	/* A paused process still completes TCP handshakes (the kernel
	 * does): the attempt only counts as good once Hello is answered. */
	x->state = CONN_CONNECTED;
	x->ready = false;
	x->ping_inflight = false;
	x->last_rx = client_now();
	client_conn_up(x->c, x);
	start_write(x);
	client_pump(x->c);
}

static void connect_timeout_cb(uv_timer_t *t)
{
	struct cconn *x = t->data;

	if (x->state == CONN_CONNECTING) {
		cconn_fail(x, RMQ_ETIMEDOUT);
		client_pump(x->c);
	}
}

static void start_connect(struct cconn *x, const struct sockaddr *sa)
{
	struct rmq_client *c = x->c;

	uv_tcp_init(&c->loop, &x->tcp);
	x->tcp.data = x;
	uv_tcp_nodelay(&x->tcp, 1);
	x->state = CONN_CONNECTING;
	if (uv_tcp_connect(&x->connect_req, &x->tcp, sa, connect_cb) != 0) {
		cconn_fail(x, RMQ_ECONNECT);
		return;
	}
	uv_timer_start(&x->timer, connect_timeout_cb, c->o.connect_timeout_ms,
		       0);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct cconn *x = container_of(req, struct cconn, gai);

	if (x->c->shutting_down || status < 0 || res == NULL) {
		if (res != NULL) {
			uv_freeaddrinfo(res);
		}
		if (x->c->shutting_down) {
			x->state = CONN_IDLE;
			return;
		}
		attempt_failed_early(x);
		client_pump(x->c);
		return;
	}
	start_connect(x, res->ai_addr);
	uv_freeaddrinfo(res);
	client_pump(x->c);
}

void cconn_ensure(struct cconn *x)
{
	struct rmq_client *c = x->c;
	char host[RMQ_ADDR_MAX];
	char port_s[16];
	int port;
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	} sa;
	struct addrinfo hints;

	if (x->state != CONN_IDLE || c->shutting_down ||
	    client_now() < x->next_attempt) {
		return;
	}
	if (cutil_split_addr(x->addr, host, sizeof host, &port) != 0) {
		attempt_failed_early(x);
		return;
	}
	if (uv_ip4_addr(host, port, &sa.in4) == 0 ||
	    uv_ip6_addr(host, port, &sa.in6) == 0) {
		start_connect(x, &sa.sa);
		return;
	}
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port_s, sizeof port_s, "%d", port);
	x->state = CONN_RESOLVING;
	if (uv_getaddrinfo(&c->loop, &x->gai, gai_cb, host, port_s, &hints) !=
	    0) {
		attempt_failed_early(x);
	}
}

int cconn_send(struct cconn *x, struct req *req, Rmq__Request *r)
{
	struct rmq_client *c = x->c;
	size_t size;
	int rv;

	if (x->state != CONN_CONNECTED) {
		return RMQ_ECONNECT;
	}
	r->id = ++c->next_req_id;
	size = rmq__request__get_packed_size(r);
	if (size > c->max_frame) {
		return RMQ_ETOOLARGE;
	}
	rv = cutil_buf_reserve(&x->out, size + RMQ_FRAME_HEADER);
	if (rv != 0) {
		return rv;
	}
	codec_put_u32be(x->out.data + x->out.len, (uint32_t)size);
	rmq__request__pack(r, x->out.data + x->out.len + RMQ_FRAME_HEADER);
	x->out.len += size + RMQ_FRAME_HEADER;
	if (req != NULL) {
		req->id = r->id;
		req->conn = x;
		list_push_back(&x->reqs, &req->link);
	}
	start_write(x);
	return 0;
}

static void conn_close_cb(uv_handle_t *h)
{
	struct cconn *x = h->data;

	x->state = CONN_IDLE;
	x->next_attempt = client_now() + x->backoff_ms;
	if (!x->c->shutting_down) {
		client_pump(x->c);
	}
}

void cconn_fail(struct cconn *x, int err)
{
	struct rmq_client *c = x->c;
	struct link reqs;
	bool was_connected = x->state == CONN_CONNECTED;

	if (x->state != CONN_CONNECTING && x->state != CONN_CONNECTED) {
		return;
	}
	uv_timer_stop(&x->timer);
	x->state = CONN_CLOSING;
	uv_close((uv_handle_t *)&x->tcp, conn_close_cb);
	if (!was_connected || !x->ready || err == RMQ_ETIMEDOUT) {
		x->failed_attempts++;
		x->last_fail_at = client_now();
	}
	x->attempted = true;
	x->ready = false;
	x->ping_inflight = false;
	x->backoff_ms = next_backoff(x);
	frame_reader_close(&x->fr);
	x->out.len = 0;

	link_init(&reqs);
	list_splice_back(&reqs, &x->reqs);
	while (!list_empty(&reqs)) {
		struct req *r = container_of(reqs.next, struct req, link);
		list_remove(&r->link);
		client_req_done(c, r, NULL, RMQ_ECONNECT);
	}
	client_conn_down(c, x, RMQ_ECONNECT);
}

bool cconn_ready(const struct cconn *x)
{
	return x->state == CONN_CONNECTED && x->ready;
}

void cconn_hello_ok(struct cconn *x)
{
	x->ready = true;
	x->failed_attempts = 0;
	x->backoff_ms = 0;
}

void cconn_shutdown(struct cconn *x)
{
	if (x->state == CONN_RESOLVING) {
		uv_cancel((uv_req_t *)&x->gai);
	}
	cconn_fail(x, RMQ_ESHUTDOWN);
	uv_close((uv_handle_t *)&x->timer, NULL);
}

void cconn_free(struct cconn *x)
{
	frame_reader_close(&x->fr);
	free(x->out.data);
	free(x->wbuf.data);
	free(x);
}
