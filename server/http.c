/* http: see http.h.
 *
 * The happy path of a request: libmicrohttpd's thread calls handler()
 * with the URL; a known path becomes a job on h->jobs and the thread waits
 * on h->cond; uv_async_send() wakes the loop, whose async_cb renders every
 * queued job under h->mu and broadcasts; the thread wakes, turns the reply
 * into an MHD response (which takes ownership of the body) and returns.
 *
 * Failure modes: the loop does not answer within HTTP_LOOP_TIMEOUT_MS → the
 * job is unlinked (under the mutex, so the loop can no longer see it) and
 * the client gets 503; the server is stopping → 503 at once; unknown path
 * → 404, other methods than GET and HEAD → 405, both without the loop. */
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#include "log.h"
#include "raftmq_errors.h"
#include "transport.h"

struct http_job {
	enum http_doc doc;
	struct http_reply reply;
	bool done;
	bool aborted; /* the server stopped before the loop rendered it */
	struct http_job *next;
};

struct http {
	uv_async_t async;
	struct MHD_Daemon *daemon;
	http_render_cb cb;
	void *data;
	unsigned port;
	char address[64];

	pthread_mutex_t mu; /* guards everything below */
	pthread_cond_t cond;
	struct http_job *jobs; /* waiting for the loop */
	bool closed;
};

static const struct {
	const char *path;
	enum http_doc doc;
} routes[] = {
	{"/healthz", HTTP_DOC_HEALTHZ},
	{"/readyz", HTTP_DOC_READYZ},
	{"/metrics", HTTP_DOC_METRICS},
	{"/api/cluster", HTTP_DOC_API_CLUSTER},
	{"/api/nodes", HTTP_DOC_API_NODES},
	{"/api/queues", HTTP_DOC_API_QUEUES},
};

static const char index_text[] =
	"raftmqd admin API: /healthz /readyz /metrics /api/cluster "
	"/api/nodes /api/queues (see docs/operations.md)\n";

/* Loop thread: render every queued job. */
static void async_cb(uv_async_t *a)
{
	struct http *h = a->data;
	struct http_job *j;

	pthread_mutex_lock(&h->mu);
	while ((j = h->jobs) != NULL) {
		h->jobs = j->next;
		j->next = NULL;
		h->cb(h->data, j->doc, &j->reply);
		j->done = true;
	}
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->mu);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status,
			       const char *type, char *body, size_t len,
			       bool owned)
{
	struct MHD_Response *r;
	enum MHD_Result rv;

	r = MHD_create_response_from_buffer(len, body,
					    owned ? MHD_RESPMEM_MUST_FREE
						  : MHD_RESPMEM_PERSISTENT);
	if (r == NULL) {
		if (owned) {
			free(body);
		}
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	}
	rv = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rv;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn,
				    unsigned status, const char *text)
{
	return respond(conn, status, "text/plain; charset=utf-8", (char *)text,
		       strlen(text), false);
}

/* MHD thread: queue @doc for the loop and wait for it. */
static enum MHD_Result serve_doc(struct http *h, struct MHD_Connection *conn,
				 enum http_doc doc)
{
	struct http_job job = {.doc = doc};
	struct timespec deadline;
	bool closed;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += HTTP_LOOP_TIMEOUT_MS / 1000;
	deadline.tv_nsec += (long)(HTTP_LOOP_TIMEOUT_MS % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}

	pthread_mutex_lock(&h->mu);
	closed = h->closed;
	if (!closed) {
		job.next = h->jobs;
		h->jobs = &job;
		uv_async_send(&h->async);
		while (!job.done) {
			if (pthread_cond_timedwait(&h->cond, &h->mu,
						   &deadline) == ETIMEDOUT) {
				break;
			}
		}
		if (!job.done) {
			/* Still queued: the loop has not looked at it. */
			for (struct http_job **p = &h->jobs; *p != NULL;
			     p = &(*p)->next) {
				if (*p == &job) {
					*p = job.next;
					break;
				}
			}
		}
	}
	pthread_mutex_unlock(&h->mu);

	if (closed || job.aborted) {
		return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				    "node is shutting down\n");
	}
	if (!job.done) {
		return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				    "the node's event loop did not answer "
				    "within 2 s\n");
	}
	if (job.reply.body == NULL) {
		return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				    "cannot render the document (out of "
				    "memory?)\n");
	}
	return respond(conn, job.reply.status, job.reply.content_type,
		       job.reply.body, job.reply.len, true);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn,
			       const char *url, const char *method,
			       const char *version, const char *upload_data,
			       size_t *upload_data_size, void **con_cls)
{
	struct http *h = cls;
	(void)version;
	(void)upload_data;
	(void)con_cls;

	if (*upload_data_size != 0) {
		*upload_data_size = 0; /* a GET with a body: ignore it */
		return MHD_YES;
	}
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
				    "only GET and HEAD\n");
	}
	if (strcmp(url, "/") == 0) {
		return respond_text(conn, MHD_HTTP_OK, index_text);
	}
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
		if (strcmp(url, routes[i].path) == 0) {
			return serve_doc(h, conn, routes[i].doc);
		}
	}
	return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void mhd_log_cb(void *cls, const char *fmt, va_list ap)
{
	struct http *h = cls;
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
		msg[--n] = '\0';
	}
	LOGW("http %s: %s", h->address, msg);
}

static void async_close_cb(uv_handle_t *handle)
{
	struct http *h = handle->data;
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

/* Like peer_net_parse_address(), and port 0 (any free port) is allowed. */
static int parse_address(const char *address, struct sockaddr_storage *addr)
{
	char buf[80];
	size_t len = strlen(address);

	if (len < 2 || len >= sizeof buf - 1 ||
	    strcmp(address + len - 2, ":0") != 0) {
		return peer_net_parse_address(address, addr);
	}
	memcpy(buf, address, len - 1);
	buf[len - 1] = '1';
	buf[len] = '\0';
	if (peer_net_parse_address(buf, addr) != 0) {
		return RMQ_EINVAL;
	}
	if (addr->ss_family == AF_INET6) {
		((struct sockaddr_in6 *)addr)->sin6_port = 0;
	} else {
		((struct sockaddr_in *)addr)->sin_port = 0;
	}
	return 0;
}

int http_start(uv_loop_t *loop, const char *address, http_render_cb cb,
	       void *data, struct http **out)
{
	struct sockaddr_storage addr;
	pthread_condattr_t ca;
	struct http *h;
	unsigned flags;
	int rv;

	if (parse_address(address, &addr) != 0) {
		return RMQ_EINVAL;
	}
	h = calloc(1, sizeof *h);
	if (h == NULL) {
		return RMQ_ENOMEM;
	}
	h->cb = cb;
	h->data = data;
	snprintf(h->address, sizeof h->address, "%s", address);
	pthread_mutex_init(&h->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);

	rv = uv_async_init(loop, &h->async, async_cb);
	if (rv != 0) {
		LOGE("http: uv_async_init: %s", uv_strerror(rv));
		pthread_cond_destroy(&h->cond);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return RMQ_EIO;
	}
	h->async.data = h;

	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
		MHD_USE_ERROR_LOG;
	if (addr.ss_family == AF_INET6) {
		flags |= MHD_USE_IPv6;
	}
	h->daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, handler, h, MHD_OPTION_EXTERNAL_LOGGER,
		mhd_log_cb, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
	if (h->daemon == NULL) {
		LOGE("http: cannot listen on http_address %s", address);
		h->closed = true;
		uv_close((uv_handle_t *)&h->async, async_close_cb);
		return RMQ_EIO;
	}
	const union MHD_DaemonInfo *info =
		MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info != NULL ? info->port : 0;
	*out = h;
	return 0;
}

unsigned http_port(const struct http *h)
{
	return h->port;
}

void http_stop(struct http *h)
{
	struct http_job *j;

	pthread_mutex_lock(&h->mu);
	h->closed = true;
	while ((j = h->jobs) != NULL) {
		h->jobs = j->next;
		j->aborted = true;
		j->done = true;
	}
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->mu);
	/* Give the answers just queued a moment to be written: stopping
	 * closes every connection at once. At most 200 ms, spent only while
	 * connections are open. */
	for (int i = 0; i < 20; i++) {
		const union MHD_DaemonInfo *info = MHD_get_daemon_info(
			h->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
		if (info == NULL || info->num_connections == 0) {
			break;
		}
		uv_sleep(10);
	}
	/* Joins the server thread; its handlers now answer 503 at once. */
	MHD_stop_daemon(h->daemon);
	h->daemon = NULL;
	uv_close((uv_handle_t *)&h->async, async_close_cb);
}
