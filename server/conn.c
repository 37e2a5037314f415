/* conn: one client connection. See server.h.
 *
 * The happy path: bytes are read into a per-connection buffer, cut into
 * frames by frame_reader (which refuses a frame longer than max_frame
 * before allocating), decoded, and handed to queues_request(). Replies and
 * deliveries are appended to an output buffer that is written once per
 * loop iteration (conn_flush), so a burst of confirms costs one write.
 *
 * Failure modes: a malformed frame or an oversized frame gets an error
 * reply, then the connection is closed once that reply is written; EOF or a
 * socket error closes it at once. Requests still in flight keep a reference
 * and their late replies are dropped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

#define READ_CHUNK (64 * 1024)
#define OUT_FLUSH_AT (256 * 1024)

static void conn_free(struct conn *c)
{
	frame_reader_close(&c->reader);
	for (size_t i = 0; i < c->n_fences; i++) {
		free(c->fences[i].queue);
	}
	free(c->fences);
	free(c->out);
	free(c->wbuf);
	free(c);
}

void conn_ref(struct conn *c)
{
	c->refs++;
}

void conn_unref(struct conn *c)
{
	if (--c->refs == 0) {
		conn_free(c);
	}
}

bool conn_alive(const struct conn *c)
{
	return !c->closing;
}

static void close_cb(uv_handle_t *h)
{
	conn_unref(h->data);
}

static void conn_close_now(struct conn *c)
{
	struct node *n = c->node;
	if (c->closed) {
		return;
	}
	c->closed = true;
	c->closing = true;
	n->metrics.conns_open--;
	queues_conn_closed(n, c);
	if (c->prev != NULL) {
		c->prev->next = c->next;
	} else if (n->conns == c) {
		n->conns = c->next;
	}
	if (c->next != NULL) {
		c->next->prev = c->prev;
	}
	c->prev = c->next = NULL;
	uv_close((uv_handle_t *)&c->tcp, close_cb);
}

/* Drop pending output and close at the next conn_flush() from the loop:
 * never inside a caller that may still be using the connection. */
static void conn_abort_later(struct conn *c)
{
	c->closing = true;
	c->close_after_flush = true;
	c->out_len = 0;
}

static void write_cb(uv_write_t *req, int status)
{
	struct conn *c = req->data;
	c->writing = false;
	if (status == 0) {
		c->node->metrics.bytes_out += c->wbuf_len;
	}
	free(c->wbuf);
	c->wbuf = NULL;
	c->wbuf_len = 0;
	if (status < 0) {
		conn_close_now(c);
	} else if (!c->closed) {
		conn_flush(c);
	}
	conn_unref(c); /* the write's reference */
}

void conn_flush(struct conn *c)
{
	if (c->closed || c->writing) {
		return;
	}
	if (c->out_len == 0) {
		if (c->close_after_flush) {
			conn_close_now(c);
		}
		return;
	}
	/* The output buffer becomes the write buffer; a new one fills. */
	c->wbuf = c->out;
	c->wbuf_len = c->out_len;
	c->out = NULL;
	c->out_len = 0;
	c->out_cap = 0;

	uv_buf_t buf = uv_buf_init((char *)c->wbuf, (unsigned)c->wbuf_len);
	c->wreq.data = c;
	int rv = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
	if (rv != 0) {
		conn_close_now(c);
		return;
	}
	c->writing = true;
	conn_ref(c);
}

static int out_append(struct conn *c, size_t len, uint8_t **dst)
{
	if (c->out_len + len > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + len) {
			cap *= 2;
		}
		uint8_t *p = realloc(c->out, cap);
		if (p == NULL) {
			return RMQ_ENOMEM;
		}
		c->out = p;
		c->out_cap = cap;
	}
	*dst = c->out + c->out_len;
	c->out_len += len;
	return 0;
}

void conn_send(struct conn *c, const Rmq__ServerFrame *f)
{
	uint8_t *dst;
	if (c->closed) {
		return;
	}
	size_t len = rmq__server_frame__get_packed_size(f);
	if (out_append(c, len + RMQ_FRAME_HEADER, &dst) != 0) {
		LOGW("client %s: out of memory, closing", c->peer);
		conn_abort_later(c);
		return;
	}
	codec_put_u32be(dst, (uint32_t)len);
	rmq__server_frame__pack(f, dst + RMQ_FRAME_HEADER);
	if (c->out_len >= OUT_FLUSH_AT) {
		conn_flush(c);
	}
}

void conn_send_response(struct conn *c, Rmq__Response *r)
{
	Rmq__ServerFrame f = RMQ__SERVER_FRAME__INIT;
	f.kind_case = RMQ__SERVER_FRAME__KIND_RESPONSE;
	f.response = r;
	conn_send(c, &f);
}

void conn_send_error(struct conn *c, uint64_t id, int err, const char *msg)
{
	Rmq__Response r = RMQ__RESPONSE__INIT;
	Rmq__Error e = RMQ__ERROR__INIT;
	e.code = codec_code_from_err(err);
	e.message = (char *)(msg != NULL ? msg : codec_strerror(err));
	r.id = id;
	r.error = &e;
	conn_send_response(c, &r);
}

void conn_shutdown(struct conn *c)
{
	if (c->closed) {
		return;
	}
	c->closing = true;
	c->close_after_flush = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	conn_flush(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = malloc(READ_CHUNK);
	buf->len = buf->base != NULL ? READ_CHUNK : 0;
}

static int conn_frame_cb(void *arg, uint8_t *data, uint32_t len)
{
	struct conn *c = arg;
	Rmq__Request *req = rmq__request__unpack(NULL, len, data);
	free(data);
	if (req == NULL || req->body_case == RMQ__REQUEST__BODY__NOT_SET) {
		if (req != NULL) {
			rmq__request__free_unpacked(req, NULL);
		}
		LOGW("client %s: malformed request, closing", c->peer);
		conn_send_error(c, 0, RMQ_EPROTO, "malformed request frame");
		return RMQ_EPROTO;
	}
	queues_request(c->node, c, req);
	return c->closing ? RMQ_ESHUTDOWN : 0;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (nread < 0) {
		free(buf->base);
		conn_close_now(c);
		return;
	}
	c->node->metrics.bytes_in += (uint64_t)nread;
	if (nread == 0 || c->closing) {
		free(buf->base);
		return;
	}
	int rv = frame_reader_feed(&c->reader, (uint8_t *)buf->base,
				   (size_t)nread, conn_frame_cb, c);
	free(buf->base);
	if (rv == RMQ_ETOOLARGE) {
		char msg[128];
		snprintf(msg, sizeof msg, "frame too large: %u > %u",
			 c->reader.len, c->reader.max_frame);
		LOGW("client %s: %s, closing", c->peer, msg);
		conn_send_error(c, 0, RMQ_ETOOLARGE, msg);
	}
	if (rv != 0) {
		conn_shutdown(c);
	}
}

int conn_accept(struct node *n, uv_stream_t *server)
{
	struct conn *c = calloc(1, sizeof *c);
	if (c == NULL) {
		return RMQ_ENOMEM;
	}
	c->node = n;
	c->refs = 1; /* released by close_cb */
	frame_reader_init(&c->reader, n->cfg.max_frame);
	uv_tcp_init(n->loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
		c->closed = true;
		uv_close((uv_handle_t *)&c->tcp, close_cb);
		return RMQ_EIO;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	struct sockaddr_storage ss;
	int len = sizeof ss;
	snprintf(c->peer, sizeof c->peer, "?");
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0 &&
	    ss.ss_family == AF_INET) {
		char ip[32];
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		uv_ip4_name(sin, ip, sizeof ip);
		snprintf(c->peer, sizeof c->peer, "%s:%u", ip,
			 (unsigned)ntohs(sin->sin_port));
	}
	n->metrics.conns_accepted++;
	n->metrics.conns_open++;
	c->next = n->conns;
	if (n->conns != NULL) {
		n->conns->prev = c;
	}
	n->conns = c;
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
	return 0;
}
