/* transport: the node's single peer listener and the raft_uv_transport of
 * every shard (contract in transport.h).
 *
 * Outgoing connection (one struct peer_out per raft connect request).
 * The happy path is:
 *   - connect() allocates the TCP handle with raft_malloc(), binds the source
 *     address if bind_host is set and submits a TCP connect request;
 *   - once connected, the shard's preamble is written;
 *   - once the write completes, raft's connect callback receives the stream
 *     (ownership passes to raft_uv) with status 0.
 * Failure modes are:
 *   - the TCP connect or the preamble write fails: the handle is closed and,
 *     from its close callback, raft's callback fires with RAFT_NOCONNECTION;
 *   - the shard transport is closed first: the handle is closed (libuv
 *     cancels the pending connect or write) and raft's callback fires with
 *     RAFT_CANCELED from the close callback.
 *
 * Incoming connection (one struct peer_in while the preamble is read).
 * The happy path is:
 *   - the listener accepts into a raft_malloc()'ed TCP handle and starts
 *     reading with buffers sized so that exactly the 8-byte header, then
 *     exactly the L body bytes are read: whatever follows the preamble is raft
 *     traffic and stays in the socket;
 *   - the preamble is validated, reading stops, the hello callback fires and
 *     the stream is handed to the accept callback of the named shard.
 * Failure modes are:
 *   - bad magic, version or length, malformed body, another cluster's id, an
 *     unknown shard, EOF or a read error before the end of the preamble, or
 *     no complete preamble within the timeout: one line on stderr, the
 *     rejected counter grows, the connection is closed;
 *   - the shard is registered but not listening (raft not started yet, or
 *     its transport is closing): the connection is closed quietly;
 *   - peer_net_close(): connections still reading their preamble are closed.
 *
 * Threads: everything runs on the loop thread. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raftmq_errors.h"
#include "transport.h"

/* Assertions check programmer errors and stay on in release builds
 * (STYLE.md); nothing read from the network is asserted on. */
#undef NDEBUG
#include <assert.h>

#define PREAMBLE_MAGIC 0x524d5150u /* "RMQP" */
#define PREAMBLE_VERSION 1
#define PREAMBLE_VERSION_KIND 2 /* the body ends with a u8 kind */
#define PREAMBLE_KIND_FETCH 1
#define PREAMBLE_HEADER 8
#define PREAMBLE_MAX_BODY 1024
/* cluster id, shard id, sender id and the two address lengths */
#define PREAMBLE_MIN_BODY (8 + 4 + 8 + 2 + 2)
#define PREAMBLE_MAX (PREAMBLE_HEADER + PREAMBLE_MAX_BODY)

#define PEER_NET_DEFAULT_PREAMBLE_TIMEOUT 5000 /* milliseconds */
#define PEER_NET_BACKLOG 128

/* "[v6 address%zone]:65535" fits. */
#define PEER_NET_NAME_MAX 96

/* Intrusive doubly linked list. */
struct link {
	struct link *prev;
	struct link *next;
};

#define link_entry(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static void link_init(struct link *l)
{
	l->prev = l;
	l->next = l;
}

static bool link_empty(const struct link *l)
{
	return l->next == l;
}

static void link_push(struct link *head, struct link *l)
{
	l->prev = head->prev;
	l->next = head;
	head->prev->next = l;
	head->prev = l;
}

static void link_remove(struct link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

/* Lifecycle of a shard transport. */
enum pt_state {
	PT_REGISTERED,  /* peer_net_transport_init() done, raft_uv not yet */
	PT_INITIALIZED, /* raft_uv called init(): connect/listen allowed */
	PT_CLOSING,     /* close() called: waiting for connects to finish */
};

/* Implementation of one shard's raft_uv_transport (t->impl). Allocated by
 * peer_net_transport_init(), freed when close() completes (or by
 * peer_net_transport_release() if raft_uv never initialized it). */
struct peer_transport {
	struct peer_net *net;
	struct raft_uv_transport *t;
	uint32_t shard_id;
	enum pt_state state;
	raft_uv_accept_cb accept_cb; /* NULL until listen(), and when closing */
	peer_net_fetch_cb fetch_cb;  /* NULL: state fetches are refused */
	void *fetch_data;
	raft_uv_transport_close_cb close_cb;
	struct link outs;           /* struct peer_out, connecting or closing */
	unsigned n_handles_closing; /* handles of failed connect() calls */
	uv_idle_t closer;           /* closed to make close() asynchronous */
	bool closer_done;
	size_t preamble_len;
	uint8_t preamble[PREAMBLE_MAX]; /* what every connection writes first */
};

/* Steps of an outgoing connection. */
enum out_state {
	OUT_CONNECTING, /* TCP connect submitted */
	OUT_WRITING,    /* preamble write submitted */
	OUT_CLOSING,    /* handle being closed; status says why */
};

struct peer_out {
	struct peer_transport *pt;
	struct raft_uv_connect *req; /* raft's request, borrowed */
	uv_tcp_t *tcp; /* owned (raft_malloc) until handed to raft */
	uv_connect_t connect;
	uv_write_t write;
	enum out_state state;
	int status; /* RAFT_* code for raft's callback once closed */
	struct link link;
};

/* Steps of an incoming connection. */
enum in_state {
	IN_HEADER,  /* reading the fixed 8-byte header */
	IN_BODY,    /* reading exactly L body bytes */
	IN_CLOSING, /* handle being closed */
};

struct peer_in {
	struct peer_net *net;
	uv_tcp_t *tcp; /* owned (raft_malloc) until handed to raft */
	enum in_state state;
	uint16_t version; /* of the preamble, once its header is read */
	uint64_t started; /* uv_now() at accept time */
	size_t want;      /* bytes of buf to fill in this step */
	size_t have;
	uint8_t buf[PREAMBLE_MAX];
	char from[PEER_NET_NAME_MAX]; /* remote address, for log lines */
	struct link link;
};

/* A decoded preamble body; addresses point into peer_in->buf. */
struct preamble {
	uint8_t kind; /* 0: raft; PREAMBLE_KIND_FETCH */
	uint64_t cluster_id;
	uint32_t shard_id;
	uint64_t sender_id;
	const uint8_t *peer_address;
	size_t peer_address_len;
	const uint8_t *client_address;
	size_t client_address_len;
};

struct peer_net {
	uv_loop_t *loop;
	uint64_t node_id;
	uint64_t cluster_id;
	char *peer_address;   /* owned */
	char *client_address; /* owned */
	bool has_bind;
	struct sockaddr_storage bind_addr;
	peer_net_hello_cb hello_cb;
	void *data;
	uint64_t preamble_timeout; /* milliseconds */

	uv_tcp_t listener;
	bool listener_open;   /* uv_tcp_init() done and uv_close() not yet */
	uv_timer_t sweep;     /* enforces the preamble timeout */
	struct link incoming; /* struct peer_in reading their preamble */
	unsigned n_handles_closing;

	struct peer_transport *shards[PEER_NET_MAX_SHARDS];
	unsigned n_shards;

	uint64_t rejected;
	bool closing;
	peer_net_close_cb close_cb;
};

static void put_u16(uint8_t **p, uint16_t v)
{
	(*p)[0] = (uint8_t)(v >> 8);
	(*p)[1] = (uint8_t)v;
	*p += 2;
}

static void put_u32(uint8_t **p, uint32_t v)
{
	put_u16(p, (uint16_t)(v >> 16));
	put_u16(p, (uint16_t)v);
}

static void put_u64(uint8_t **p, uint64_t v)
{
	put_u32(p, (uint32_t)(v >> 32));
	put_u32(p, (uint32_t)v);
}

static uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | (unsigned)p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)get_u16(p) << 16 | get_u16(p + 2);
}

static uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

static char *dup_string(const char *s)
{
	size_t len = strlen(s) + 1;
	char *copy = malloc(len);

	if (copy != NULL) {
		memcpy(copy, s, len);
	}
	return copy;
}

int peer_net_parse_address(const char *hostport, struct sockaddr_storage *addr)
{
	char host[PEER_NET_NAME_MAX];
	const char *port_str;
	const char *host_start;
	size_t host_len;
	unsigned long port = 0;
	const char *p;
	bool v6;
	int rv;

	if (hostport == NULL || addr == NULL) {
		return RMQ_EINVAL;
	}
	memset(addr, 0, sizeof *addr);

	if (hostport[0] == '[') {
		const char *close = strchr(hostport, ']');

		if (close == NULL || close[1] != ':') {
			return RMQ_EINVAL;
		}
		v6 = true;
		host_start = hostport + 1;
		host_len = (size_t)(close - host_start);
		port_str = close + 2;
	} else {
		const char *colon = strrchr(hostport, ':');

		if (colon == NULL) {
			return RMQ_EINVAL;
		}
		v6 = false;
		host_start = hostport;
		host_len = (size_t)(colon - hostport);
		port_str = colon + 1;
	}
	if (host_len == 0 || host_len >= sizeof host) {
		return RMQ_EINVAL;
	}
	memcpy(host, host_start, host_len);
	host[host_len] = '\0';

	if (*port_str == '\0' || strlen(port_str) > 5) {
		return RMQ_EINVAL;
	}
	for (p = port_str; *p != '\0'; p++) {
		if (*p < '0' || *p > '9') {
			return RMQ_EINVAL;
		}
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port == 0 || port > 65535) {
		return RMQ_EINVAL;
	}

	if (v6) {
		rv = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)addr);
	} else {
		rv = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr);
	}
	if (rv != 0) {
		memset(addr, 0, sizeof *addr);
		return RMQ_EINVAL;
	}
	return 0;
}

/* Parse a bare IPv4 or IPv6 host (no port) into @addr with port 0. */
static int parse_host(const char *host, struct sockaddr_storage *addr)
{
	memset(addr, 0, sizeof *addr);
	if (uv_ip4_addr(host, 0, (struct sockaddr_in *)addr) == 0) {
		return 0;
	}
	memset(addr, 0, sizeof *addr);
	if (strchr(host, ':') != NULL &&
	    uv_ip6_addr(host, 0, (struct sockaddr_in6 *)addr) == 0) {
		return 0;
	}
	return RMQ_EINVAL;
}

/* Format the remote end of @tcp as "ip:port" or "[ip]:port". */
static void format_peer_name(uv_tcp_t *tcp, char *out, size_t size)
{
	struct sockaddr_storage ss;
	int len = (int)sizeof ss;
	char ip[INET6_ADDRSTRLEN];

	snprintf(out, size, "unknown peer");
	if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) {
		return;
	}
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

		if (uv_ip4_name(in, ip, sizeof ip) == 0) {
			snprintf(out, size, "%s:%u", ip, ntohs(in->sin_port));
		}
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 =
			(const struct sockaddr_in6 *)&ss;

		if (uv_ip6_name(in6, ip, sizeof ip) == 0) {
			snprintf(out, size, "[%s]:%u", ip,
				 ntohs(in6->sin6_port));
		}
	}
}

static struct peer_transport *find_shard(struct peer_net *n, uint32_t id)
{
	unsigned i;

	for (i = 0; i < n->n_shards; i++) {
		if (n->shards[i]->shard_id == id) {
			return n->shards[i];
		}
	}
	return NULL;
}

static void unregister_shard(struct peer_net *n, struct peer_transport *pt)
{
	unsigned i;

	for (i = 0; i < n->n_shards; i++) {
		if (n->shards[i] == pt) {
			n->shards[i] = n->shards[n->n_shards - 1];
			n->n_shards--;
			return;
		}
	}
	assert(false); /* every transport is registered until it is freed */
}

/* Fire the close callback of @n once nothing is left open. */
static void net_maybe_finish_close(struct peer_net *n)
{
	if (!n->closing || n->n_handles_closing > 0 || n->listener_open) {
		return;
	}
	assert(link_empty(&n->incoming));
	if (n->close_cb != NULL) {
		n->close_cb(n);
	}
	free(n->peer_address);
	free(n->client_address);
	free(n);
}

/* ---- incoming connections ---------------------------------------------- */

static void in_close_cb(uv_handle_t *handle)
{
	struct peer_in *in = handle->data;
	struct peer_net *n = in->net;

	raft_free(in->tcp);
	free(in);
	n->n_handles_closing--;
	net_maybe_finish_close(n);
}

/* Close an incoming connection that has not been handed to raft. After
 * uv_close() no alloc or read callback runs again. */
static void in_abort(struct peer_in *in)
{
	assert(in->state != IN_CLOSING);
	in->state = IN_CLOSING;
	link_remove(&in->link);
	in->net->n_handles_closing++;
	uv_close((uv_handle_t *)in->tcp, in_close_cb);
}

static void in_reject(struct peer_in *in, const char *why)
{
	fprintf(stderr, "raftmq: peer rejected: %s from %s\n", why, in->from);
	in->net->rejected++;
	in_abort(in);
}

/* Validate the 8-byte header; on success in->want covers the body. */
static const char *in_parse_header(struct peer_in *in)
{
	uint16_t len;

	if (get_u32(in->buf) != PREAMBLE_MAGIC) {
		return "bad magic";
	}
	in->version = get_u16(in->buf + 4);
	if (in->version != PREAMBLE_VERSION &&
	    in->version != PREAMBLE_VERSION_KIND) {
		return "unsupported preamble version";
	}
	len = get_u16(in->buf + 6);
	if (len < PREAMBLE_MIN_BODY + (in->version == PREAMBLE_VERSION_KIND) ||
	    len > PREAMBLE_MAX_BODY) {
		return "bad preamble length";
	}
	in->want = PREAMBLE_HEADER + (size_t)len;
	return NULL;
}

/* Decode the body in in->buf into @p. Returns a reason on failure. */
static const char *in_parse_body(struct peer_in *in, struct preamble *p)
{
	const uint8_t *cur = in->buf + PREAMBLE_HEADER;
	const uint8_t *end = in->buf + in->want;

	p->kind = 0;
	if (in->version == PREAMBLE_VERSION_KIND) {
		end--;
		p->kind = *end;
		if (p->kind != PREAMBLE_KIND_FETCH) {
			return "unknown connection kind";
		}
	}

	/* PREAMBLE_MIN_BODY guarantees the fixed fields are there. */
	p->cluster_id = get_u64(cur);
	cur += 8;
	p->shard_id = get_u32(cur);
	cur += 4;
	p->sender_id = get_u64(cur);
	cur += 8;

	p->peer_address_len = get_u16(cur);
	cur += 2;
	if (p->peer_address_len == 0 ||
	    p->peer_address_len > (size_t)(end - cur)) {
		return "bad peer address";
	}
	p->peer_address = cur;
	cur += p->peer_address_len;

	if ((size_t)(end - cur) < 2) {
		return "truncated preamble";
	}
	p->client_address_len = get_u16(cur);
	cur += 2;
	if (p->client_address_len != (size_t)(end - cur)) {
		return "bad client address";
	}
	p->client_address = cur;

	if (memchr(p->peer_address, '\0', p->peer_address_len) != NULL ||
	    memchr(p->client_address, '\0', p->client_address_len) != NULL) {
		return "bad address";
	}
	if (p->sender_id == 0) {
		return "sender id 0";
	}
	return NULL;
}

/* The preamble of @in is complete: validate it and hand the stream over. */
static void in_complete(struct peer_in *in)
{
	struct peer_net *n = in->net;
	struct peer_transport *pt;
	struct preamble p;
	char peer_address[PREAMBLE_MAX_BODY + 1];
	char client_address[PREAMBLE_MAX_BODY + 1];
	char why[64];
	const char *err;
	uv_stream_t *stream;

	err = in_parse_body(in, &p);
	if (err != NULL) {
		in_reject(in, err);
		return;
	}
	if (p.cluster_id != n->cluster_id) {
		in_reject(in, "cluster id mismatch");
		return;
	}
	memcpy(peer_address, p.peer_address, p.peer_address_len);
	peer_address[p.peer_address_len] = '\0';
	memcpy(client_address, p.client_address, p.client_address_len);
	client_address[p.client_address_len] = '\0';

	/* Raft data may already follow in the socket: leave it there. */
	uv_read_stop((uv_stream_t *)in->tcp);

	if (n->hello_cb != NULL) {
		n->hello_cb(n->data, p.sender_id, peer_address, client_address);
	}

	pt = find_shard(n, p.shard_id);
	if (pt == NULL) {
		snprintf(why, sizeof why, "unknown shard %u",
			 (unsigned)p.shard_id);
		in_reject(in, why);
		return;
	}
	if (p.kind == PREAMBLE_KIND_FETCH ? pt->fetch_cb == NULL
					  : pt->accept_cb == NULL) {
		/* Raft not started yet or stopping: the peer retries. */
		in_abort(in);
		return;
	}

	link_remove(&in->link);
	stream = (uv_stream_t *)in->tcp;
	stream->data = NULL;
	free(in);
	if (p.kind == PREAMBLE_KIND_FETCH) {
		/* Ownership of the stream passes to the fetch handler. */
		pt->fetch_cb(pt->fetch_data, p.sender_id, (uv_tcp_t *)stream);
		return;
	}
	/* Ownership of the stream passes to raft_uv. */
	pt->accept_cb(pt->t, p.sender_id, peer_address, stream);
}

static void in_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	struct peer_in *in = handle->data;

	(void)suggested;
	assert(in->state == IN_HEADER || in->state == IN_BODY);
	assert(in->have < in->want);
	/* Never more than the rest of the current step: no byte past the
	 * preamble is taken from the socket. */
	buf->base = (char *)in->buf + in->have;
	buf->len = in->want - in->have;
}

static void in_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct peer_in *in = stream->data;
	const char *err;

	(void)buf;
	if (nread == 0) {
		return;
	}
	if (nread < 0) {
		if (nread == UV_EOF) {
			in_reject(in, "connection closed in preamble");
		} else {
			in_reject(in, "read error in preamble");
		}
		return;
	}
	assert((size_t)nread <= in->want - in->have);
	in->have += (size_t)nread;
	if (in->have < in->want) {
		return;
	}
	if (in->state == IN_HEADER) {
		err = in_parse_header(in);
		if (err != NULL) {
			in_reject(in, err);
			return;
		}
		in->state = IN_BODY;
		return; /* libuv asks in_alloc_cb for the body next */
	}
	in_complete(in);
}

/* Reject the connections whose preamble is overdue. */
static void sweep_cb(uv_timer_t *timer)
{
	struct peer_net *n = timer->data;
	uint64_t now = uv_now(n->loop);
	struct link *l;
	struct link *next;

	for (l = n->incoming.next; l != &n->incoming; l = next) {
		struct peer_in *in = link_entry(l, struct peer_in, link);

		next = l->next;
		if (now - in->started >= n->preamble_timeout) {
			in_reject(in, "preamble timeout");
		}
	}
	if (link_empty(&n->incoming)) {
		uv_timer_stop(timer);
	}
}

static void accept_failed_close_cb(uv_handle_t *handle)
{
	struct peer_net *n = handle->data;

	raft_free(handle);
	n->n_handles_closing--;
	net_maybe_finish_close(n);
}

static void listen_cb(uv_stream_t *server, int status)
{
	struct peer_net *n = server->data;
	struct peer_in *in;
	uint64_t period;
	int rv;

	if (status != 0) {
		fprintf(stderr, "raftmq: peer listener: %s\n",
			uv_strerror(status));
		return;
	}
	in = malloc(sizeof *in);
	if (in == NULL) {
		rv = UV_ENOMEM;
		goto err;
	}
	in->tcp = raft_malloc(sizeof *in->tcp);
	if (in->tcp == NULL) {
		rv = UV_ENOMEM;
		goto err_after_in_alloc;
	}
	rv = uv_tcp_init(n->loop, in->tcp);
	if (rv != 0) {
		goto err_after_tcp_alloc;
	}
	in->tcp->data = n;
	rv = uv_accept(server, (uv_stream_t *)in->tcp);
	if (rv != 0) {
		goto err_after_tcp_init;
	}
	/* Raft messages are small and latency-bound: no Nagle delay. */
	uv_tcp_nodelay(in->tcp, 1);
	in->net = n;
	in->state = IN_HEADER;
	in->started = uv_now(n->loop);
	in->want = PREAMBLE_HEADER;
	in->have = 0;
	format_peer_name(in->tcp, in->from, sizeof in->from);
	in->tcp->data = in;
	rv = uv_read_start((uv_stream_t *)in->tcp, in_alloc_cb, in_read_cb);
	if (rv != 0) {
		goto err_after_tcp_init;
	}
	link_push(&n->incoming, &in->link);
	if (!uv_is_active((uv_handle_t *)&n->sweep)) {
		period = n->preamble_timeout / 4 + 1;
		uv_timer_start(&n->sweep, sweep_cb, period, period);
	}
	return;

err_after_tcp_init:
	in->tcp->data = n;
	n->n_handles_closing++;
	uv_close((uv_handle_t *)in->tcp, accept_failed_close_cb);
	goto err_after_in_alloc;
err_after_tcp_alloc:
	raft_free(in->tcp);
err_after_in_alloc:
	free(in);
err:
	/* If the connection could not be accepted (out of memory), libuv
	 * leaves it in the backlog and stops watching the listener until the
	 * next uv_accept(): only a restart recovers from that. */
	fprintf(stderr, "raftmq: peer listener: cannot accept: %s\n",
		uv_strerror(rv));
}

/* ---- outgoing connections ---------------------------------------------- */

static void pt_maybe_finish_close(struct peer_transport *pt)
{
	struct raft_uv_transport *t = pt->t;
	raft_uv_transport_close_cb cb = pt->close_cb;

	if (pt->state != PT_CLOSING || !pt->closer_done ||
	    !link_empty(&pt->outs) || pt->n_handles_closing > 0) {
		return;
	}
	unregister_shard(pt->net, pt);
	t->impl = NULL;
	free(pt);
	if (cb != NULL) {
		cb(t);
	}
}

static void out_close_cb(uv_handle_t *handle)
{
	struct peer_out *out = handle->data;
	struct peer_transport *pt = out->pt;
	struct raft_uv_connect *req = out->req;
	int status = out->status;

	assert(out->state == OUT_CLOSING && status != 0);
	link_remove(&out->link);
	raft_free(out->tcp);
	free(out);
	req->cb(req, NULL, status);
	pt_maybe_finish_close(pt);
}

/* Close the handle of @out; raft's callback fires with @status once it is
 * closed. libuv cancels a pending connect or write (their callbacks see
 * UV_ECANCELED and ignore it). */
static void out_abort(struct peer_out *out, int status)
{
	assert(out->state != OUT_CLOSING);
	out->state = OUT_CLOSING;
	out->status = status;
	uv_close((uv_handle_t *)out->tcp, out_close_cb);
}

static void out_write_cb(uv_write_t *write, int status)
{
	struct peer_out *out = write->data;
	struct raft_uv_connect *req = out->req;
	uv_stream_t *stream = (uv_stream_t *)out->tcp;

	if (out->state == OUT_CLOSING) {
		return;
	}
	assert(out->state == OUT_WRITING);
	if (status != 0) {
		snprintf(out->pt->t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "preamble write: %s", uv_strerror(status));
		out_abort(out, RAFT_NOCONNECTION);
		return;
	}
	link_remove(&out->link);
	stream->data = NULL;
	free(out);
	/* Ownership of the stream passes to raft_uv. */
	req->cb(req, stream, 0);
}

static void out_connect_cb(uv_connect_t *connect, int status)
{
	struct peer_out *out = connect->data;
	struct peer_transport *pt = out->pt;
	uv_buf_t buf;
	int rv;

	if (out->state == OUT_CLOSING) {
		return;
	}
	assert(out->state == OUT_CONNECTING);
	if (status != 0) {
		snprintf(pt->t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "uv_tcp_connect(): %s", uv_strerror(status));
		out_abort(out, RAFT_NOCONNECTION);
		return;
	}
	buf = uv_buf_init((char *)pt->preamble, (unsigned)pt->preamble_len);
	out->state = OUT_WRITING;
	rv = uv_write(&out->write, (uv_stream_t *)out->tcp, &buf, 1,
		      out_write_cb);
	if (rv != 0) {
		snprintf(pt->t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "preamble write: %s", uv_strerror(rv));
		out_abort(out, RAFT_NOCONNECTION);
	}
}

static void failed_connect_close_cb(uv_handle_t *handle)
{
	struct peer_transport *pt = handle->data;

	raft_free(handle);
	pt->n_handles_closing--;
	pt_maybe_finish_close(pt);
}

/* Implementation of raft_uv_transport->connect. */
static int transport_connect(struct raft_uv_transport *t,
			     struct raft_uv_connect *req, raft_id id,
			     const char *address, raft_uv_connect_cb cb)
{
	struct peer_transport *pt = t->impl;
	struct peer_net *n = pt->net;
	struct sockaddr_storage addr;
	struct peer_out *out;
	int rv;

	(void)id;
	assert(pt->state == PT_INITIALIZED);
	if (peer_net_parse_address(address, &addr) != 0) {
		snprintf(t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "bad peer address \"%s\"", address);
		rv = RAFT_NOCONNECTION;
		goto err;
	}
	out = malloc(sizeof *out);
	if (out == NULL) {
		rv = RAFT_NOMEM;
		goto err;
	}
	out->tcp = raft_malloc(sizeof *out->tcp);
	if (out->tcp == NULL) {
		rv = RAFT_NOMEM;
		goto err_after_out_alloc;
	}
	rv = uv_tcp_init(n->loop, out->tcp);
	if (rv != 0) {
		snprintf(t->errmsg, RAFT_ERRMSG_BUF_SIZE, "uv_tcp_init(): %s",
			 uv_strerror(rv));
		rv = RAFT_NOCONNECTION;
		goto err_after_tcp_alloc;
	}
	out->tcp->data = pt;
	uv_tcp_nodelay(out->tcp, 1);
	if (n->has_bind) {
		rv = uv_tcp_bind(out->tcp, (struct sockaddr *)&n->bind_addr, 0);
		if (rv != 0) {
			snprintf(t->errmsg, RAFT_ERRMSG_BUF_SIZE,
				 "bind to source address: %s", uv_strerror(rv));
			rv = RAFT_NOCONNECTION;
			goto err_after_tcp_init;
		}
	}
	out->connect.data = out;
	rv = uv_tcp_connect(&out->connect, out->tcp, (struct sockaddr *)&addr,
			    out_connect_cb);
	if (rv != 0) {
		snprintf(t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "uv_tcp_connect(): %s", uv_strerror(rv));
		rv = RAFT_NOCONNECTION;
		goto err_after_tcp_init;
	}
	out->pt = pt;
	out->req = req;
	out->state = OUT_CONNECTING;
	out->status = 0;
	out->write.data = out;
	out->tcp->data = out;
	link_push(&pt->outs, &out->link);
	req->cb = cb;
	return 0;

err_after_tcp_init:
	pt->n_handles_closing++;
	uv_close((uv_handle_t *)out->tcp, failed_connect_close_cb);
	free(out);
	return rv;
err_after_tcp_alloc:
	raft_free(out->tcp);
err_after_out_alloc:
	free(out);
err:
	return rv;
}

/* ---- shard transports --------------------------------------------------- */

/* Implementation of raft_uv_transport->init. The raft id of every shard of
 * a node is the node id, so the preamble carries it. */
static int transport_init(struct raft_uv_transport *t, raft_id id,
			  const char *address)
{
	struct peer_transport *pt = t->impl;

	(void)address;
	assert(pt->state == PT_REGISTERED);
	if (id != pt->net->node_id) {
		snprintf(t->errmsg, RAFT_ERRMSG_BUF_SIZE,
			 "raft id %llu is not the node id %llu",
			 (unsigned long long)id,
			 (unsigned long long)pt->net->node_id);
		return RAFT_INVALID;
	}
	pt->state = PT_INITIALIZED;
	return 0;
}

/* Implementation of raft_uv_transport->listen: the node's listener does the
 * listening, the shard only says it is ready for streams. */
static int transport_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
	struct peer_transport *pt = t->impl;

	assert(pt->state == PT_INITIALIZED);
	pt->accept_cb = cb;
	return 0;
}

static void closer_close_cb(uv_handle_t *handle)
{
	struct peer_transport *pt = handle->data;

	pt->closer_done = true;
	pt_maybe_finish_close(pt);
}

/* Implementation of raft_uv_transport->close. @cb always fires from a later
 * loop iteration, after every pending connect got its RAFT_CANCELED. */
static void transport_close(struct raft_uv_transport *t,
			    raft_uv_transport_close_cb cb)
{
	struct peer_transport *pt = t->impl;
	struct link *l;

	assert(pt->state == PT_INITIALIZED);
	pt->state = PT_CLOSING;
	pt->close_cb = cb;
	pt->accept_cb = NULL;
	for (l = pt->outs.next; l != &pt->outs; l = l->next) {
		struct peer_out *out = link_entry(l, struct peer_out, link);

		if (out->state != OUT_CLOSING) {
			out_abort(out, RAFT_CANCELED);
		}
	}
	uv_idle_init(pt->net->loop, &pt->closer);
	pt->closer.data = pt;
	uv_close((uv_handle_t *)&pt->closer, closer_close_cb);
}

/* The preamble of a raft connection (@kind 0, version 1, which every
 * release reads) or of another kind (version 2) into @out (PREAMBLE_MAX
 * bytes); returns its length. */
static size_t encode_preamble(struct peer_net *n, uint32_t shard_id,
			      uint8_t kind, uint8_t *out)
{
	size_t peer_len = strlen(n->peer_address);
	size_t client_len = strlen(n->client_address);
	size_t body = PREAMBLE_MIN_BODY + peer_len + client_len + (kind != 0);
	uint8_t *p = out;

	assert(body <= PREAMBLE_MAX_BODY); /* checked by peer_net_init() */
	put_u32(&p, PREAMBLE_MAGIC);
	put_u16(&p, kind != 0 ? PREAMBLE_VERSION_KIND : PREAMBLE_VERSION);
	put_u16(&p, (uint16_t)body);
	put_u64(&p, n->cluster_id);
	put_u32(&p, shard_id);
	put_u64(&p, n->node_id);
	put_u16(&p, (uint16_t)peer_len);
	memcpy(p, n->peer_address, peer_len);
	p += peer_len;
	put_u16(&p, (uint16_t)client_len);
	memcpy(p, n->client_address, client_len);
	p += client_len;
	if (kind != 0) {
		*p++ = kind;
	}
	return (size_t)(p - out);
}

size_t peer_net_fetch_preamble(struct peer_net *n, uint32_t shard_id,
			       uint8_t buf[PEER_NET_PREAMBLE_MAX])
{
	return encode_preamble(n, shard_id, PREAMBLE_KIND_FETCH, buf);
}

void peer_net_set_fetch_cb(struct raft_uv_transport *t, peer_net_fetch_cb cb,
			   void *data)
{
	struct peer_transport *pt = t->impl;
	pt->fetch_cb = cb;
	pt->fetch_data = data;
}

int peer_net_transport_init(struct peer_net *n, uint32_t shard_id,
			    struct raft_uv_transport *t)
{
	struct peer_transport *pt;

	assert(!n->closing);
	if (find_shard(n, shard_id) != NULL ||
	    n->n_shards == PEER_NET_MAX_SHARDS) {
		return RMQ_EINVAL;
	}
	pt = malloc(sizeof *pt);
	if (pt == NULL) {
		return RMQ_ENOMEM;
	}
	pt->net = n;
	pt->t = t;
	pt->shard_id = shard_id;
	pt->state = PT_REGISTERED;
	pt->accept_cb = NULL;
	pt->fetch_cb = NULL;
	pt->fetch_data = NULL;
	pt->close_cb = NULL;
	link_init(&pt->outs);
	pt->n_handles_closing = 0;
	pt->closer_done = false;
	pt->preamble_len = encode_preamble(n, shard_id, 0, pt->preamble);

	t->impl = pt;
	t->init = transport_init;
	t->listen = transport_listen;
	t->connect = transport_connect;
	t->close = transport_close;
	n->shards[n->n_shards++] = pt;
	return 0;
}

void peer_net_transport_release(struct raft_uv_transport *t)
{
	struct peer_transport *pt = t->impl;

	if (pt == NULL) {
		return;
	}
	/* raft_uv calls close() on every transport it initialized. */
	assert(pt->state == PT_REGISTERED);
	unregister_shard(pt->net, pt);
	t->impl = NULL;
	free(pt);
}

/* ---- the node ------------------------------------------------------------ */

int peer_net_init(uv_loop_t *loop, const struct peer_net_config *c,
		  struct peer_net **out)
{
	struct sockaddr_storage addr;
	struct peer_net *n;
	size_t body;
	int rv;

	if (c->node_id == 0 || c->peer_address == NULL ||
	    c->client_address == NULL ||
	    peer_net_parse_address(c->peer_address, &addr) != 0) {
		rv = RMQ_EINVAL;
		goto err;
	}
	body = PREAMBLE_MIN_BODY + 1 + strlen(c->peer_address) +
	       strlen(c->client_address);
	if (body > PREAMBLE_MAX_BODY) {
		rv = RMQ_EINVAL;
		goto err;
	}
	n = calloc(1, sizeof *n);
	if (n == NULL) {
		rv = RMQ_ENOMEM;
		goto err;
	}
	if (c->bind_host != NULL && c->bind_host[0] != '\0') {
		if (parse_host(c->bind_host, &n->bind_addr) != 0) {
			rv = RMQ_EINVAL;
			goto err_after_net_alloc;
		}
		n->has_bind = true;
	}
	n->peer_address = dup_string(c->peer_address);
	if (n->peer_address == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_net_alloc;
	}
	n->client_address = dup_string(c->client_address);
	if (n->client_address == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_peer_dup;
	}
	rv = uv_timer_init(loop, &n->sweep);
	if (rv != 0) {
		rv = RMQ_EINTERNAL;
		goto err_after_client_dup;
	}
	n->sweep.data = n;
	n->loop = loop;
	n->node_id = c->node_id;
	n->cluster_id = c->cluster_id;
	n->hello_cb = c->hello_cb;
	n->data = c->data;
	n->preamble_timeout = PEER_NET_DEFAULT_PREAMBLE_TIMEOUT;
	link_init(&n->incoming);
	*out = n;
	return 0;

err_after_client_dup:
	free(n->client_address);
err_after_peer_dup:
	free(n->peer_address);
err_after_net_alloc:
	free(n);
err:
	return rv;
}

void peer_net_set_preamble_timeout(struct peer_net *n, unsigned msecs)
{
	n->preamble_timeout = msecs > 0 ? msecs : 1;
}

static void listener_close_cb(uv_handle_t *handle)
{
	struct peer_net *n = handle->data;

	n->n_handles_closing--;
	net_maybe_finish_close(n);
}

/* Close the listener; net_maybe_finish_close() waits for it. */
static void listener_close(struct peer_net *n)
{
	n->listener_open = false;
	n->n_handles_closing++;
	uv_close((uv_handle_t *)&n->listener, listener_close_cb);
}

int peer_net_listen(struct peer_net *n)
{
	struct sockaddr_storage addr;
	int rv;

	assert(!n->closing && !n->listener_open);
	rv = peer_net_parse_address(n->peer_address, &addr);
	assert(rv == 0); /* checked by peer_net_init() */
	rv = uv_tcp_init(n->loop, &n->listener);
	if (rv != 0) {
		goto err;
	}
	n->listener.data = n;
	n->listener_open = true;
	rv = uv_tcp_bind(&n->listener, (struct sockaddr *)&addr, 0);
	if (rv != 0) {
		goto err_after_tcp_init;
	}
	/* libuv reports EADDRINUSE here rather than from the bind. */
	rv = uv_listen((uv_stream_t *)&n->listener, PEER_NET_BACKLOG,
		       listen_cb);
	if (rv != 0) {
		goto err_after_tcp_init;
	}
	return 0;

err_after_tcp_init:
	listener_close(n);
err:
	fprintf(stderr, "raftmq: cannot listen on peer address %s: %s\n",
		n->peer_address, uv_strerror(rv));
	return RMQ_EIO;
}

uint64_t peer_net_rejected(struct peer_net *n)
{
	return n->rejected;
}

static void sweep_close_cb(uv_handle_t *handle)
{
	struct peer_net *n = handle->data;

	n->n_handles_closing--;
	net_maybe_finish_close(n);
}

void peer_net_close(struct peer_net *n, peer_net_close_cb cb)
{
	assert(!n->closing);
	n->closing = true;
	n->close_cb = cb;

	/* Transports raft_uv never initialized are ours to release; the
	 * others must have been closed by raft_uv already. */
	while (n->n_shards > 0) {
		struct peer_transport *pt = n->shards[n->n_shards - 1];

		assert(pt->state == PT_REGISTERED);
		peer_net_transport_release(pt->t);
	}
	if (n->listener_open) {
		listener_close(n);
	}
	while (!link_empty(&n->incoming)) {
		in_abort(link_entry(n->incoming.next, struct peer_in, link));
	}
	n->n_handles_closing++;
	uv_close((uv_handle_t *)&n->sweep, sweep_close_cb);
}
