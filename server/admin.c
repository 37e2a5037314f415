/* admin: the documents of the admin HTTP API, rendered from node state —
 * readiness, Prometheus /metrics and the JSON of /api/cluster, /api/nodes
 * and /api/queues. Every metric and field is described in
 * docs/operations.md; keep the two in step.
 *
 * Threads: loop thread only (http.c calls admin_render() from its uv_async
 * callback). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "server.h"

#ifndef RAFTMQ_VERSION
#define RAFTMQ_VERSION "unknown"
#endif

static const char *const role_names[] = {"follower", "leader_pending",
					 "leader"};

/* ---- readiness ---------------------------------------------------------- */

/* Shard @i of @n serves through this node or a known leader, and our
 * replica trails the announced commit index by at most ready_max_lag. */
static bool shard_ok(struct node *n, unsigned i, char *why, size_t len)
{
	struct shard *s = n->shards[i];
	uint64_t leader = shard_leader_id(s);
	uint64_t applied = shard_applied_index(s);
	uint64_t commit = shard_leader_commit_index(s);

	if (leader == 0) {
		snprintf(why, len, "shard %u: no known leader", i);
		return false;
	}
	if (leader == n->cfg.id && shard_role(s) != SHARD_LEADER) {
		snprintf(why, len,
			 "shard %u: elected leader, not serving yet (applying "
			 "the entries of earlier terms)",
			 i);
		return false;
	}
	if (commit > applied && commit - applied > n->cfg.ready_max_lag) {
		snprintf(why, len,
			 "shard %u: behind the leader by %" PRIu64
			 " entries (applied %" PRIu64 ", leader commit %" PRIu64
			 ", ready_max_lag %u)",
			 i, commit - applied, applied, commit,
			 n->cfg.ready_max_lag);
		return false;
	}
	return true;
}

bool admin_ready(struct node *n, char *why, size_t why_len)
{
	char scratch[256], reason[256];
	size_t used = 0;
	bool ok = true;

	if (why == NULL) {
		why = scratch;
		why_len = sizeof scratch;
	}
	why[0] = '\0';
	if (n->stopping) {
		snprintf(why, why_len, "shutting down");
		return false;
	}
	if (!n->serving) {
		snprintf(why, why_len, "starting: not accepting clients yet");
		return false;
	}
	/* Every failing shard, so that an operator sees the whole picture. */
	for (unsigned i = 0; i < n->n_shards; i++) {
		if (n->shards[i] == NULL || !members_holds(n, i) ||
		    shard_ok(n, i, reason, sizeof reason)) {
			continue;
		}
		if (used < why_len) {
			int k = snprintf(why + used, why_len - used, "%s%s",
					 ok ? "" : "; ", reason);
			used += k > 0 ? (size_t)k : 0;
		}
		ok = false;
	}
	if (ok) {
		snprintf(why, why_len, "ready");
	}
	return ok;
}

static void render_readyz(struct node *n, struct http_reply *out)
{
	char why[1024];
	struct sbuf b;
	bool ok = admin_ready(n, why, sizeof why);

	sbuf_init(&b);
	sbuf_printf(&b, "%s%s\n", ok ? "" : "not ready: ", why);
	/* The state the verdict was made on, one line per shard. */
	for (unsigned i = 0; i < n->n_shards && n->shards[i] != NULL; i++) {
		struct shard *s = n->shards[i];
		sbuf_printf(&b,
			    "shard %u: role %s, leader %" PRIu64
			    ", applied %" PRIu64 ", leader commit %" PRIu64
			    "\n",
			    i, role_names[shard_role(s)], shard_leader_id(s),
			    shard_applied_index(s),
			    shard_leader_commit_index(s));
	}
	out->status = ok ? 200 : 503;
	out->content_type = "text/plain; charset=utf-8";
	out->body = sbuf_take(&b, &out->len);
}

/* ---- /metrics ----------------------------------------------------------- */

struct qlist {
	struct queue_stats *v; /* owned; names point into the queue table */
	size_t n, cap;
	bool failed;
};

static void collect_cb(void *arg, const struct queue_stats *st)
{
	struct qlist *l = arg;
	if (l->failed) {
		return;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct queue_stats *v = realloc(l->v, cap * sizeof *v);
		if (v == NULL) {
			l->failed = true;
			return;
		}
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = *st;
}

static void shard_label(char *buf, size_t len, unsigned i)
{
	snprintf(buf, len, "shard=\"%u\"", i);
}

/* One family with one series per shard, from @get. */
static void shard_family(struct sbuf *b, struct node *n, const char *name,
			 const char *type, const char *help,
			 uint64_t (*get)(struct node *n, unsigned i))
{
	char labels[32];
	prom_help(b, name, type, help);
	for (unsigned i = 0; i < n->n_shards; i++) {
		if (n->shards[i] == NULL) {
			continue;
		}
		shard_label(labels, sizeof labels, i);
		prom_u64(b, name, labels, get(n, i));
	}
}

static uint64_t get_leader(struct node *n, unsigned i)
{
	return shard_leader_id(n->shards[i]);
}

static uint64_t get_term(struct node *n, unsigned i)
{
	return shard_term(n->shards[i]);
}

static uint64_t get_commit(struct node *n, unsigned i)
{
	return shard_commit_index(n->shards[i]);
}

static uint64_t get_applied(struct node *n, unsigned i)
{
	return shard_applied_index(n->shards[i]);
}

static uint64_t get_leader_commit(struct node *n, unsigned i)
{
	return shard_leader_commit_index(n->shards[i]);
}

static uint64_t get_stored(struct node *n, unsigned i)
{
	return n->shard_bytes[i];
}

static uint64_t get_map_used(struct node *n, unsigned i)
{
	size_t used = 0, size = 0;
	store_usage(shard_store(n->shards[i]), &used, &size);
	return used;
}

static uint64_t get_map_size(struct node *n, unsigned i)
{
	size_t used = 0, size = 0;
	store_usage(shard_store(n->shards[i]), &used, &size);
	return size;
}

enum qfield { Q_READY, Q_UNACKED, Q_TOTAL, Q_BYTES, Q_CONSUMERS };

static uint64_t qfield(const struct queue_stats *st, enum qfield f)
{
	switch (f) {
	case Q_READY:
		return st->ready;
	case Q_UNACKED:
		return st->unacked;
	case Q_TOTAL:
		return st->total;
	case Q_BYTES:
		return st->bytes;
	case Q_CONSUMERS:
		return st->consumers;
	}
	return 0;
}

/* Queue series come only from the node leading the queue's shard, so that
 * a sum over nodes counts each queue once. */
static void queue_family(struct sbuf *b, const struct qlist *l,
			 const char *name, const char *help, enum qfield f)
{
	prom_help(b, name, "gauge", help);
	for (size_t k = 0; k < l->n; k++) {
		const struct queue_stats *st = &l->v[k];
		if (!st->leading) {
			continue;
		}
		sbuf_printf(b, "%s{queue=\"", name);
		sbuf_label_value(b, st->name);
		sbuf_printf(b, "\",shard=\"%u\"} %" PRIu64 "\n", st->shard,
			    qfield(st, f));
	}
}

static void counter(struct sbuf *b, const char *name, const char *help,
		    uint64_t v)
{
	prom_help(b, name, "counter", help);
	prom_u64(b, name, "", v);
}

static void gauge(struct sbuf *b, const char *name, const char *help,
		  uint64_t v)
{
	prom_help(b, name, "gauge", help);
	prom_u64(b, name, "", v);
}

static void render_metrics(struct node *n, struct http_reply *out)
{
	const struct metrics *m = &n->metrics;
	struct qlist ql = {0};
	struct statvfs vfs;
	char labels[64];
	struct sbuf b;

	sbuf_init(&b);
	queues_stats(n, collect_cb, &ql);

	prom_help(
		&b, "raftmq_node_info", "gauge",
		"Constant 1; labels name this node, its cluster and version.");
	sbuf_printf(&b, "raftmq_node_info{node_id=\"%" PRIu64 "\",cluster=\"",
		    n->cfg.id);
	sbuf_label_value(&b, n->cfg.cluster_name);
	sbuf_printf(&b, "\",version=\"%s\"} 1\n", RAFTMQ_VERSION);
	gauge(&b, "raftmq_ready", "1 if /readyz answers 200.",
	      admin_ready(n, NULL, 0) ? 1 : 0);
	prom_help(&b, "raftmq_uptime_seconds", "gauge",
		  "Seconds since the process started.");
	prom_double(&b, "raftmq_uptime_seconds", "",
		    (double)(uv_hrtime() / 1000000 - n->started_ms) / 1e3);

	gauge(&b, "raftmq_client_connections", "Open client connections.",
	      m->conns_open);
	counter(&b, "raftmq_client_connections_accepted_total",
		"Client connections accepted.", m->conns_accepted);
	counter(&b, "raftmq_client_received_bytes_total",
		"Bytes read from client connections.", m->bytes_in);
	counter(&b, "raftmq_client_sent_bytes_total",
		"Bytes written to client connections.", m->bytes_out);
	counter(&b, "raftmq_publishes_total", "Publish requests received.",
		m->publishes);
	counter(&b, "raftmq_publish_confirms_total",
		"Publishes confirmed (stored by a majority), retries "
		"included.",
		m->confirms);
	counter(&b, "raftmq_publish_duplicates_total",
		"Confirmed publishes that were retries of a stored message.",
		m->duplicates);
	counter(&b, "raftmq_publish_errors_total",
		"Publishes answered with an error.", m->publish_errors);
	counter(&b, "raftmq_deliveries_total",
		"Messages delivered to consumers, redeliveries included.",
		m->deliveries);
	counter(&b, "raftmq_redeliveries_total",
		"Deliveries flagged redelivered.", m->redeliveries);
	counter(&b, "raftmq_acks_total", "Messages acked by consumers.",
		m->acks);
	counter(&b, "raftmq_requeues_total",
		"Messages nacked with requeue by consumers.", m->requeues);
	counter(&b, "raftmq_drops_total",
		"Messages nacked without requeue (dropped) by consumers.",
		m->drops);

	prom_help(&b, "raftmq_shard_role", "gauge",
		  "1 for this node's role in the shard (follower, "
		  "leader_pending, leader), 0 for the others.");
	for (unsigned i = 0; i < n->n_shards; i++) {
		if (n->shards[i] == NULL) {
			continue;
		}
		enum shard_role r = shard_role(n->shards[i]);
		for (unsigned k = 0; k < 3; k++) {
			snprintf(labels, sizeof labels,
				 "shard=\"%u\",role=\"%s\"", i, role_names[k]);
			prom_u64(&b, "raftmq_shard_role", labels,
				 (unsigned)r == k ? 1 : 0);
		}
	}
	shard_family(&b, n, "raftmq_shard_leader_id", "gauge",
		     "Node id of the shard's leader as known here, 0 if none.",
		     get_leader);
	shard_family(&b, n, "raftmq_shard_term", "gauge",
		     "Current raft term of the shard.", get_term);
	shard_family(&b, n, "raftmq_shard_commit_index", "gauge",
		     "Raft commit index of this replica.", get_commit);
	shard_family(&b, n, "raftmq_shard_applied_index", "gauge",
		     "Last raft index applied to this replica's store.",
		     get_applied);
	shard_family(&b, n, "raftmq_shard_leader_commit_index", "gauge",
		     "Highest commit index announced by a leader (own commit "
		     "index on the leader).",
		     get_leader_commit);
	shard_family(&b, n, "raftmq_shard_stored_bytes", "gauge",
		     "Message bytes stored in the shard, as counted for "
		     "admission (FULL).",
		     get_stored);
	shard_family(&b, n, "raftmq_lmdb_map_used_bytes", "gauge",
		     "Bytes of the shard's LMDB map in use (last page).",
		     get_map_used);
	shard_family(&b, n, "raftmq_lmdb_map_size_bytes", "gauge",
		     "Size of the shard's LMDB map (map_size_mb).",
		     get_map_size);

	prom_help(&b, "raftmq_raft_append_seconds", "histogram",
		  "Leader: from proposing an entry until it is committed "
		  "(appended and fsynced by a majority) and applied here.");
	for (unsigned i = 0; i < n->n_shards; i++) {
		shard_label(labels, sizeof labels, i);
		prom_hist(&b, "raftmq_raft_append_seconds", labels,
			  &n->append_lat[i]);
	}
	prom_help(&b, "raftmq_raft_apply_seconds", "histogram",
		  "Time the state machine took to apply one entry to LMDB "
		  "(every replica).");
	for (unsigned i = 0; i < n->n_shards; i++) {
		shard_label(labels, sizeof labels, i);
		prom_hist(&b, "raftmq_raft_apply_seconds", labels,
			  &n->apply_lat[i]);
	}

	queue_family(&b, &ql, "raftmq_queue_ready",
		     "Messages ready for delivery (reported by the shard's "
		     "leader).",
		     Q_READY);
	queue_family(&b, &ql, "raftmq_queue_unacked",
		     "Messages delivered and not yet settled (reported by the "
		     "shard's leader).",
		     Q_UNACKED);
	queue_family(&b, &ql, "raftmq_queue_messages",
		     "Messages stored, ready + unacked (reported by the "
		     "shard's leader).",
		     Q_TOTAL);
	queue_family(&b, &ql, "raftmq_queue_bytes",
		     "Body bytes stored (reported by the shard's leader).",
		     Q_BYTES);
	queue_family(&b, &ql, "raftmq_queue_consumers",
		     "Consumers attached (reported by the shard's leader).",
		     Q_CONSUMERS);

	if (statvfs(n->cfg.data_dir, &vfs) == 0) {
		gauge(&b, "raftmq_disk_free_bytes",
		      "Bytes available to raftmqd on the data dir's "
		      "filesystem.",
		      (uint64_t)vfs.f_bavail * vfs.f_frsize);
		gauge(&b, "raftmq_disk_size_bytes",
		      "Size of the data dir's filesystem.",
		      (uint64_t)vfs.f_blocks * vfs.f_frsize);
	}
	if (ql.failed) {
		sbuf_free(&b);
	}
	free(ql.v);
	out->status = 200;
	out->content_type = "text/plain; version=0.0.4; charset=utf-8";
	out->body = sbuf_take(&b, &out->len);
}

/* ---- JSON --------------------------------------------------------------- */

static void json_reply(cJSON *doc, struct http_reply *out)
{
	out->status = 200;
	out->content_type = "application/json";
	out->body = doc != NULL ? cJSON_PrintUnformatted(doc) : NULL;
	out->len = out->body != NULL ? strlen(out->body) : 0;
	cJSON_Delete(doc);
}

static cJSON *shard_json(struct node *n, unsigned i)
{
	struct shard *s = n->shards[i];
	size_t used = 0, size = 0;
	cJSON *o = cJSON_CreateObject();
	cJSON *reps = cJSON_CreateArray();

	struct shard_view v;
	members_shard_view(n, i, &v);
	for (size_t k = 0; k < v.n_voters; k++) {
		cJSON_AddItemToArray(reps,
				     cJSON_CreateNumber((double)v.voters[k]));
	}
	store_usage(shard_store(s), &used, &size);
	cJSON_AddNumberToObject(o, "id", i);
	cJSON_AddStringToObject(o, "role", role_names[shard_role(s)]);
	cJSON_AddBoolToObject(o, "replica_here", members_holds(n, i));
	cJSON_AddNumberToObject(o, "leader", (double)v.leader);
	cJSON_AddNumberToObject(o, "term", (double)v.term);
	cJSON_AddNumberToObject(o, "commit_index",
				(double)shard_commit_index(s));
	cJSON_AddNumberToObject(o, "applied_index",
				(double)shard_applied_index(s));
	cJSON_AddNumberToObject(o, "leader_commit_index",
				(double)shard_leader_commit_index(s));
	cJSON_AddItemToObject(o, "replicas", reps);
	cJSON_AddNumberToObject(o, "stored_bytes", (double)n->shard_bytes[i]);
	cJSON_AddNumberToObject(o, "lmdb_used_bytes", (double)used);
	cJSON_AddNumberToObject(o, "lmdb_map_bytes", (double)size);
	return o;
}

static void render_cluster(struct node *n, struct http_reply *out)
{
	char why[1024];
	bool ok = admin_ready(n, why, sizeof why);
	cJSON *doc = cJSON_CreateObject();
	cJSON *shards = cJSON_CreateArray();

	cJSON_AddStringToObject(doc, "cluster_name", n->cfg.cluster_name);
	cJSON_AddNumberToObject(doc, "node_id", (double)n->cfg.id);
	cJSON_AddStringToObject(doc, "version", RAFTMQ_VERSION);
	cJSON_AddBoolToObject(doc, "ready", ok);
	cJSON_AddStringToObject(doc, "ready_reason", why);
	cJSON_AddNumberToObject(
		doc, "uptime_seconds",
		(double)(uv_hrtime() / 1000000 - n->started_ms) / 1e3);
	for (unsigned i = 0; i < n->n_shards; i++) {
		if (n->shards[i] != NULL) {
			cJSON_AddItemToArray(shards, shard_json(n, i));
		}
	}
	cJSON_AddItemToObject(doc, "shards", shards);
	json_reply(doc, out);
}

static void render_nodes(struct node *n, struct http_reply *out)
{
	cJSON *doc = cJSON_CreateArray();

	for (size_t k = 0; k < n->n_peers; k++) {
		const struct peer_info *p = &n->peers[k];
		cJSON *o = cJSON_CreateObject();
		cJSON *leads = cJSON_CreateArray();
		for (unsigned i = 0; i < n->n_shards; i++) {
			struct shard_view v;
			if (n->shards[i] == NULL) {
				continue;
			}
			members_shard_view(n, i, &v);
			if (v.leader == p->id) {
				cJSON_AddItemToArray(leads,
						     cJSON_CreateNumber(i));
			}
		}
		cJSON_AddNumberToObject(o, "id", (double)p->id);
		cJSON_AddStringToObject(o, "client_address", p->client_address);
		cJSON_AddStringToObject(o, "peer_address", p->peer_address);
		cJSON_AddBoolToObject(o, "self", p->id == n->cfg.id);
		cJSON_AddItemToObject(o, "leader_of", leads);
		cJSON_AddItemToArray(doc, o);
	}
	json_reply(doc, out);
}

static void queue_json_cb(void *arg, const struct queue_stats *st)
{
	cJSON *doc = arg;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "name", st->name);
	cJSON_AddNumberToObject(o, "shard", st->shard);
	cJSON_AddNumberToObject(o, "leader", (double)st->leader);
	cJSON_AddBoolToObject(o, "leading", st->leading);
	cJSON_AddNumberToObject(o, "ready", (double)st->ready);
	cJSON_AddNumberToObject(o, "unacked", (double)st->unacked);
	cJSON_AddNumberToObject(o, "total", (double)st->total);
	cJSON_AddNumberToObject(o, "bytes", (double)st->bytes);
	cJSON_AddNumberToObject(o, "consumers", (double)st->consumers);
	cJSON_AddItemToArray(doc, o);
}

static void render_queues(struct node *n, struct http_reply *out)
{
	cJSON *doc = cJSON_CreateArray();
	queues_stats(n, queue_json_cb, doc);
	json_reply(doc, out);
}

void admin_render(void *data, enum http_doc doc, struct http_reply *out)
{
	struct node *n = data;

	switch (doc) {
	case HTTP_DOC_HEALTHZ:
		/* Answering at all proves the loop turns. */
		out->status = 200;
		out->content_type = "text/plain; charset=utf-8";
		out->body = strdup("ok\n");
		out->len = out->body != NULL ? 3 : 0;
		break;
	case HTTP_DOC_READYZ:
		render_readyz(n, out);
		break;
	case HTTP_DOC_METRICS:
		render_metrics(n, out);
		break;
	case HTTP_DOC_API_CLUSTER:
		render_cluster(n, out);
		break;
	case HTTP_DOC_API_NODES:
		render_nodes(n, out);
		break;
	case HTTP_DOC_API_QUEUES:
		render_queues(n, out);
		break;
	}
}
