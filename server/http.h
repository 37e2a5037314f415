/* http: the admin HTTP server (libmicrohttpd) — /metrics, /healthz,
 * /readyz and the JSON admin API.
 *
 * Threads: libmicrohttpd serves connections on a thread of its own
 * (MHD_USE_INTERNAL_POLLING_THREAD). That thread never reads node state:
 * for each request it queues a job, wakes the loop with uv_async_send()
 * and waits (bounded) until the loop thread has rendered the document
 * through the render callback. Everything the callback reads is therefore
 * read on the loop thread, and a blocked loop shows up as a failing
 * /healthz instead of as torn numbers.
 *
 * http_start() and http_stop() are called on the loop thread. */
#ifndef RMQ_HTTP_H
#define RMQ_HTTP_H

#include <stddef.h>

#include <uv.h>

enum http_doc {
	HTTP_DOC_HEALTHZ = 0,
	HTTP_DOC_READYZ,
	HTTP_DOC_METRICS,
	HTTP_DOC_API_CLUSTER,
	HTTP_DOC_API_NODES,
	HTTP_DOC_API_QUEUES,
};

/* What the render callback fills in. */
struct http_reply {
	unsigned status;          /* 200, 503, ... */
	const char *content_type; /* static string */
	char *body;               /* malloc'd; the server frees it */
	size_t len;
};

/* Called on the loop thread. Leaving @out->body NULL answers 500. */
typedef void (*http_render_cb)(void *data, enum http_doc doc,
			       struct http_reply *out);

/* How long a request waits for the loop before it is answered 503. */
#define HTTP_LOOP_TIMEOUT_MS 2000

struct http;

/* Listen on @address ("ip:port" or "[ipv6]:port"; port 0 takes any free
 * one, see http_port()) and serve. Returns 0,
 * RMQ_EINVAL (the address does not parse; nothing is logged) or RMQ_EIO
 * (cannot listen; logged). On 0, *out is live until http_stop(). */
int http_start(uv_loop_t *loop, const char *address, http_render_cb cb,
	       void *data, struct http **out);

/* The port actually bound (useful with port 0). */
unsigned http_port(const struct http *h);

/* Stop serving: requests waiting for the loop are answered 503, the
 * server thread is joined, and @h is freed once its uv handle is closed
 * (the loop must run on for that). */
void http_stop(struct http *h);

#endif /* RMQ_HTTP_H */
