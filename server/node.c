/* node: the raftmqd process — identity, shards, listeners, timers and
 * shutdown. See server.h.
 *
 * Start-up: check the data dir's identity files, start the peer listener,
 * open every shard (bootstrapping it from initial_cluster on a fresh data
 * dir), load the queue table, then accept clients.
 * Shutdown (SIGTERM/SIGINT): stop accepting, close client connections,
 * close every shard (raft fails pending proposals), then the peer listener;
 * the loop ends when the last handle is closed. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "log.h"

static uint64_t fnv1a(const char *s, uint64_t h)
{
	for (; *s != '\0'; s++) {
		h ^= (uint8_t)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static int read_file_u64(const char *path, uint64_t *v, bool *found)
{
	char buf[64] = {0};
	FILE *f = fopen(path, "r");
	*found = false;
	if (f == NULL) {
		return errno == ENOENT ? 0 : RMQ_EIO;
	}
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *end;
	*v = strtoull(buf, &end, 16);
	if (end == buf) {
		return RMQ_ECORRUPT;
	}
	*found = true;
	return 0;
}

static int write_file_u64(const char *path, uint64_t v)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		return RMQ_EIO;
	}
	fprintf(f, "%" PRIx64 "\n", v);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		return RMQ_EIO;
	}
	fclose(f);
	return rename(tmp, path) == 0 ? 0 : RMQ_EIO;
}

/* The node id and cluster id live in the data dir: a data dir of another
 * node or cluster is refused. */
static int check_identity(struct node *n)
{
	char path[4200];
	uint64_t v;
	bool found;
	int rv;

	if (mkdir(n->cfg.data_dir, 0750) != 0 && errno != EEXIST) {
		LOGE("cannot create data dir %s: %s", n->cfg.data_dir,
		     strerror(errno));
		return RMQ_EIO;
	}
	snprintf(path, sizeof path, "%s/node.id", n->cfg.data_dir);
	rv = read_file_u64(path, &v, &found);
	if (rv != 0) {
		LOGE("cannot read %s", path);
		return rv;
	}
	if (found && v != n->cfg.id) {
		LOGE("data dir %s belongs to node %" PRIu64 ", not %" PRIu64,
		     n->cfg.data_dir, v, n->cfg.id);
		return RMQ_EINVAL;
	}
	if (!found && (rv = write_file_u64(path, n->cfg.id)) != 0) {
		LOGE("cannot write %s", path);
		return rv;
	}
	/* A node that joined a running cluster keeps the cluster's shard
	 * count here (its own config may say otherwise). */
	snprintf(path, sizeof path, "%s/shards", n->cfg.data_dir);
	rv = read_file_u64(path, &v, &found);
	if (rv != 0) {
		LOGE("cannot read %s", path);
		return rv;
	}
	if (found) {
		if (v < 1 || v + 1 > NODE_MAX_SHARDS) {
			LOGE("bad shard count in %s", path);
			return RMQ_ECORRUPT;
		}
		n->cfg.shards = (unsigned)v;
		n->joined = true;
	}
	snprintf(path, sizeof path, "%s/cluster.id", n->cfg.data_dir);
	rv = read_file_u64(path, &v, &found);
	if (rv != 0) {
		LOGE("cannot read %s", path);
		return rv;
	}
	if (found) {
		n->cluster_id = v;
	} else if (n->cfg.join[0] != '\0') {
		/* Empty data dir and --join: register with the cluster as a
		 * spare; its shards start empty, not bootstrapped. */
		unsigned shards = 0;
		rv = join_cluster(&n->cfg, &n->cluster_id, &shards);
		if (rv != 0) {
			return rv;
		}
		n->cfg.shards = shards;
		n->joined = true;
		snprintf(path, sizeof path, "%s/shards", n->cfg.data_dir);
		rv = write_file_u64(path, shards);
		if (rv == 0) {
			snprintf(path, sizeof path, "%s/cluster.id",
				 n->cfg.data_dir);
			rv = write_file_u64(path, n->cluster_id);
		}
		if (rv != 0) {
			LOGE("cannot write %s", path);
			return rv;
		}
	} else {
		/* Same name and initial cluster on every node: same id. */
		n->cluster_id = fnv1a(n->cfg.initial_cluster,
				      fnv1a(n->cfg.cluster_name,
					    14695981039346656037ULL));
		rv = write_file_u64(path, n->cluster_id);
		if (rv != 0) {
			LOGE("cannot write %s", path);
			return rv;
		}
	}
	return 0;
}

struct peer_info *node_peer(struct node *n, uint64_t id, bool create)
{
	for (size_t i = 0; i < n->n_peers; i++) {
		if (n->peers[i].id == id) {
			return &n->peers[i];
		}
	}
	if (!create || n->n_peers == NODE_MAX_PEERS) {
		return NULL;
	}
	struct peer_info *p = &n->peers[n->n_peers++];
	memset(p, 0, sizeof *p);
	p->id = id;
	return p;
}

const char *node_client_address(struct node *n, uint64_t id)
{
	struct peer_info *p = node_peer(n, id, false);
	return p != NULL ? p->client_address : "";
}

static void hello_cb(void *data, uint64_t id, const char *peer_address,
		     const char *client_address)
{
	struct node *n = data;
	struct peer_info *p = node_peer(n, id, true);
	if (p == NULL) {
		return;
	}
	if (strcmp(p->client_address, client_address) != 0 ||
	    strcmp(p->peer_address, peer_address) != 0) {
		snprintf(p->client_address, sizeof p->client_address, "%s",
			 client_address);
		snprintf(p->peer_address, sizeof p->peer_address, "%s",
			 peer_address);
		p->registered = false;
	}
}

static void shard_applied_hook(void *data, struct shard *s,
			       const struct fsm_result *r)
{
	queues_applied(data, s, r);
}

static void shard_role_hook(void *data, struct shard *s, enum shard_role role,
			    uint64_t term)
{
	struct node *n = data;
	static const char *const names[] = {"follower", "leader (catching up)",
					    "leader"};
	LOGI("node %" PRIu64 ": shard %u: %s, term %" PRIu64, n->cfg.id,
	     shard_id(s), names[role], term);
	queues_role(n, s, role);
}

static void shard_apply_time_hook(void *data, struct shard *s, uint64_t ns)
{
	struct node *n = data;
	lat_record(&n->apply_lat[shard_id(s)], ns);
}

static void shard_restored_hook(void *data, struct shard *s)
{
	queues_restored(data, s);
}

static void shard_fatal_hook(void *data, struct shard *s)
{
	struct node *n = data;
	LOGE("node %" PRIu64 ": shard %u cannot apply entries any more; "
	     "exiting so that the other replicas take over",
	     n->cfg.id, shard_id(s));
	n->fatal = true; /* acted on outside raft, in prepare_cb */
}

/* A raft entry must fit in one log segment: the largest batch is
 * batch_max_bytes plus one message of max_message_size. */
static size_t segment_size(const struct config *c)
{
	size_t mib = 1024 * 1024;
	size_t need = c->batch_max_bytes + c->max_message_size + mib;
	need = (need + mib - 1) / mib * mib;
	return need > 8 * mib ? need : 8 * mib;
}

static int open_shards(struct node *n)
{
	uint64_t ids[CONFIG_MAX_MEMBERS];
	const char *addrs[CONFIG_MAX_MEMBERS];
	bool member = false;
	char dir[4200];
	int rv;

	for (size_t i = 0; i < n->cfg.n_members; i++) {
		ids[i] = n->cfg.members[i].id;
		addrs[i] = n->cfg.members[i].peer_address;
		member = member || ids[i] == n->cfg.id;
	}
	if (n->joined) {
		member = false; /* never bootstrap: the cluster adds us */
	}
	n->n_shards = n->cfg.shards + 1;
	for (unsigned i = 0; i < n->n_shards; i++) {
		struct shard_config sc = {
			.id = i,
			.node_id = n->cfg.id,
			.peer_address = n->cfg.peer_address,
			.dir = dir,
			.election_timeout_ms = n->cfg.election_timeout_ms,
			.heartbeat_timeout_ms = n->cfg.heartbeat_timeout_ms,
			.cluster_id = n->cluster_id,
			.snapshot_threshold = n->cfg.snapshot_threshold,
			.snapshot_trailing = n->cfg.snapshot_trailing,
			.log_cache_bytes = n->cfg.log_cache_bytes,
			.map_size = n->cfg.map_size,
			.segment_size = segment_size(&n->cfg),
		};
		struct shard_hooks hooks = {
			.data = n,
			.applied = shard_applied_hook,
			.role = shard_role_hook,
			.restored = shard_restored_hook,
			.fatal = shard_fatal_hook,
			.apply_time = shard_apply_time_hook,
		};
		snprintf(dir, sizeof dir, "%s/shard-%u", n->cfg.data_dir, i);
		rv = shard_open(n->loop, n->net, &sc, &hooks, &n->shards[i]);
		if (rv != 0) {
			LOGE("shard %u: cannot open in %s: %s", i, dir,
			     codec_strerror(rv));
			return rv;
		}
		n->n_open++;
		if (member) {
			rv = shard_bootstrap(n->shards[i], ids, addrs,
					     n->cfg.n_members);
			if (rv == 0) {
				LOGI("shard %u: bootstrapped with %zu members",
				     i, n->cfg.n_members);
			} else if (rv != RMQ_EEXISTS) {
				LOGE("shard %u: bootstrap: %s", i,
				     codec_strerror(rv));
				return rv;
			}
		}
	}
	return 0;
}

static int start_shards(struct node *n)
{
	for (unsigned i = 0; i < n->n_shards; i++) {
		int rv = shard_start(n->shards[i]);
		if (rv != 0) {
			LOGE("shard %u: cannot start: %s", i,
			     codec_strerror(rv));
			return rv;
		}
	}
	return 0;
}

static void prepare_cb(uv_prepare_t *h)
{
	struct node *n = h->data;
	if (n->stopping) {
		return;
	}
	if (n->fatal) {
		/* The store failed under raft: exit at once, like a crash. A
		 * graceful close would write through the failing storage, and
		 * everything confirmed is in the other replicas' fsynced logs
		 * and in ours, which a restart replays. */
		LOGE("node %" PRIu64 ": exiting after a fatal storage fault",
		     n->cfg.id);
		fflush(stderr);
		_exit(1);
	}
	for (unsigned i = 0; i < n->n_shards; i++) {
		shard_poll(n->shards[i]);
	}
	for (unsigned i = 0; i < n->n_shards; i++) {
		queues_flush(n, i);
	}
	struct conn *next;
	for (struct conn *c = n->conns; c != NULL; c = next) {
		next = c->next; /* conn_flush() may close and unlink c */
		conn_flush(c);
	}
}

/* Stop before the disk is full: canonical/raft 0.15's error paths after a
 * failed log write free memory they should not (seen: munmap_chunk():
 * invalid pointer from appendLeaderCb when a segment could not be
 * created on a full disk). A node that stops is a crash the others ride
 * out; a node that corrupts its heap is not. */
static void check_free_disk(struct node *n)
{
	struct statvfs vfs;
	uint64_t avail;

	if (n->cfg.min_free_disk == 0 || statvfs(n->cfg.data_dir, &vfs) != 0) {
		return;
	}
	avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	if (avail < n->cfg.min_free_disk) {
		LOGE("node %" PRIu64 ": %" PRIu64 " MiB free on the data "
		     "directory's file system, below min_free_disk_mb = %" PRIu64
		     ": exiting so that the other replicas take over; free "
		     "space, then restart",
		     n->cfg.id, avail >> 20, n->cfg.min_free_disk >> 20);
		n->fatal = true; /* acted on in prepare_cb */
	}
}

/* Every tick (200 ms) also drops the LMDB pages this process mapped by
 * reading and writing: they stay in the page cache, but no longer count in
 * its RSS, which would otherwise grow with everything read back (a
 * backlog). */
static void tick_cb(uv_timer_t *t)
{
	struct node *n = t->data;
	if (!n->stopping) {
		check_free_disk(n);
		queues_tick(n);
		for (unsigned i = 0; i < n->n_shards; i++) {
			if (n->shards[i] != NULL) {
				store_release_map(shard_store(n->shards[i]));
			}
		}
	}
}

static void listen_cb(uv_stream_t *server, int status)
{
	struct node *n = server->data;
	if (status < 0) {
		LOGW("accept: %s", uv_strerror(status));
		return;
	}
	if (n->stopping) {
		return;
	}
	conn_accept(n, server);
}

static int start_listener(struct node *n)
{
	struct sockaddr_storage addr;
	int rv = peer_net_parse_address(n->cfg.client_address, &addr);
	if (rv != 0) {
		LOGE("bad client_address %s", n->cfg.client_address);
		return RMQ_EINVAL;
	}
	uv_tcp_init(n->loop, &n->listener);
	n->listener.data = n;
	rv = uv_tcp_bind(&n->listener, (struct sockaddr *)&addr, 0);
	if (rv == 0) {
		rv = uv_listen((uv_stream_t *)&n->listener, 1024, listen_cb);
	}
	if (rv != 0) {
		LOGE("cannot listen on %s: %s", n->cfg.client_address,
		     uv_strerror(rv));
		return RMQ_EIO;
	}
	return 0;
}

static void net_close_cb(struct peer_net *net)
{
	(void)net;
}

static void shard_closed_cb(struct shard *s, void *data)
{
	struct node *n = data;
	(void)s;
	if (--n->n_open == 0) {
		queues_close(n);
		if (n->net != NULL) {
			peer_net_close(n->net, net_close_cb);
			n->net = NULL;
		}
	}
}

void node_stop(struct node *n, int exit_code)
{
	if (n->stopping) {
		return;
	}
	n->stopping = true;
	n->serving = false;
	n->exit_code = exit_code;
	LOGI("node %" PRIu64 ": shutting down", n->cfg.id);
	sd_notify(0, "STOPPING=1");
	if (n->http != NULL) {
		http_stop(n->http);
		n->http = NULL;
	}
	uv_close((uv_handle_t *)&n->sigterm, NULL);
	uv_close((uv_handle_t *)&n->sigint, NULL);
	uv_close((uv_handle_t *)&n->prepare, NULL);
	uv_close((uv_handle_t *)&n->tick, NULL);
	if (n->listener.loop != NULL) { /* uv_tcp_init() was called */
		uv_close((uv_handle_t *)&n->listener, NULL);
	}
	struct conn *next;
	for (struct conn *c = n->conns; c != NULL; c = next) {
		next = c->next;
		conn_shutdown(c);
	}
	if (n->n_open == 0) {
		queues_close(n);
		if (n->net != NULL) {
			peer_net_close(n->net, net_close_cb);
			n->net = NULL;
		}
		return;
	}
	unsigned total = n->n_open;
	for (unsigned i = 0; i < total; i++) {
		if (n->shards[i] != NULL) {
			struct shard *s = n->shards[i];
			n->shards[i] = NULL;
			shard_close(s, shard_closed_cb, n);
		}
	}
}

static void signal_cb(uv_signal_t *h, int signum)
{
	struct node *n = h->data;
	LOGI("node %" PRIu64 ": signal %d", n->cfg.id, signum);
	node_stop(n, 0);
}

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000;
}

int node_run(const struct config *cfg)
{
	struct node *n;
	uv_loop_t loop;
	int rv;

	n = calloc(1, sizeof *n);
	if (n == NULL) {
		return 1;
	}
	n->cfg = *cfg;
	n->started_ms = now_ms();
	log_set_level(cfg->log_level);
	uv_loop_init(&loop);
	n->loop = &loop;

	uv_signal_init(&loop, &n->sigterm);
	uv_signal_init(&loop, &n->sigint);
	uv_prepare_init(&loop, &n->prepare);
	uv_timer_init(&loop, &n->tick);
	n->sigterm.data = n->sigint.data = n->prepare.data = n->tick.data = n;
	uv_signal_start(&n->sigterm, signal_cb, SIGTERM);
	uv_signal_start(&n->sigint, signal_cb, SIGINT);
	uv_prepare_start(&n->prepare, prepare_cb);
	signal(SIGPIPE, SIG_IGN);

	rv = check_identity(n);
	if (rv != 0) {
		goto fail;
	}
	/* Early, so that a taken port fails the start before the shards
	 * load. Requests made while they load wait for the loop to run (and
	 * get 503 after HTTP_LOOP_TIMEOUT_MS): the node is not ready. */
	if (cfg->http_address[0] != '\0') {
		rv = http_start(&loop, cfg->http_address, admin_render, n,
				&n->http);
		if (rv != 0) {
			if (rv == RMQ_EINVAL) {
				LOGE("bad http_address %s", cfg->http_address);
			}
			goto fail;
		}
	}
	struct peer_net_config pc = {
		.node_id = cfg->id,
		.cluster_id = n->cluster_id,
		.peer_address = cfg->peer_address,
		.client_address = cfg->client_address,
		.bind_host = cfg->bind_address[0] ? cfg->bind_address : NULL,
		.hello_cb = hello_cb,
		.data = n,
	};
	rv = peer_net_init(&loop, &pc, &n->net);
	if (rv != 0) {
		LOGE("peer transport: %s", codec_strerror(rv));
		goto fail;
	}
	hello_cb(n, cfg->id, cfg->peer_address, cfg->client_address);
	rv = peer_net_listen(n->net);
	if (rv != 0) {
		goto fail;
	}
	check_free_disk(n);
	rv = n->fatal ? RMQ_EFULL : members_init(n);
	if (rv == 0) {
		rv = open_shards(n);
	}
	if (rv == 0) {
		rv = queues_load(n);
	}
	if (rv == 0) {
		rv = start_shards(n);
	}
	if (rv == 0) {
		rv = start_listener(n);
	}
	if (rv != 0) {
		goto fail;
	}
	uv_timer_start(&n->tick, tick_cb, 200, 200);
	n->serving = true;
	LOGI("node %" PRIu64 ": serving clients on %s, peers on %s, "
	     "%u data shards%s%s",
	     cfg->id, cfg->client_address, cfg->peer_address, cfg->shards,
	     n->http != NULL ? ", HTTP on " : "",
	     n->http != NULL ? cfg->http_address : "");
	/* Type=notify: systemd considers the node started once it accepts
	 * clients (not once it is caught up: a node that waits for a
	 * majority must not be killed as a failed start). */
	sd_notifyf(0, "READY=1\nSTATUS=serving clients on %s",
		   cfg->client_address);
	goto run;

fail:
	node_stop(n, 1);
run:
	uv_run(&loop, UV_RUN_DEFAULT);
	rv = uv_loop_close(&loop);
	if (rv != 0) {
		LOGW("loop close: %s", uv_strerror(rv));
	}
	int code = n->exit_code;
	members_close(n);
	free(n);
	LOGI("node %" PRIu64 ": stopped", cfg->id);
	return code;
}
