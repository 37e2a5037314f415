/* raftmq: the command-line client, built on the public libraftmq API.
 *
 * Output formats are a contract (scripts and cluster tests parse them):
 * see usage() and the last lines printed by publish and consume. Errors go
 * to stderr as "raftmq: <what>: <message>" with exit status 1; usage
 * errors print the usage text with exit status 2.
 *
 * Thread: main thread; the publish confirm callback runs on the library's
 * I/O thread and only touches the atomic counters of struct pub_run. */
#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "raftmq.h"

#define DEFAULT_SERVERS "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"

static void usage(FILE *f)
{
	fputs("usage: raftmq [--servers H:P[,H:P...]] COMMAND\n"
	      "  default servers: $RAFTMQ_SERVERS, else " DEFAULT_SERVERS "\n"
	      "\n"
	      "commands:\n"
	      "  cluster status [--json]\n"
	      "  queue declare NAME [--max-length N] [--max-message-size B]\n"
	      "  queue list [--json]\n"
	      "  queue delete NAME\n"
	      "  publish QUEUE (--body TEXT | --count N [--size BYTES] "
	      "[--prefix P])\n"
	      "          [--window W] [--timeout S]\n"
	      "  consume QUEUE [--count N] [--idle-timeout S] [--prefetch K] "
	      "[--print]\n"
	      "  node list [--json]\n"
	      "  node add ID [--timeout S]\n"
	      "  node remove ID [--wait] [--timeout S]\n"
	      "  shard transfer SHARD --to NODE\n"
	      "  shard move SHARD --from NODE --to NODE [--wait] [--timeout S]\n",
	      f);
}

static int usage_error(const char *what)
{
	if (what != NULL) {
		fprintf(stderr, "raftmq: %s\n", what);
	}
	usage(stderr);
	return 2;
}

/* "raftmq: <what>: <message>", the message being the server's text when
 * there is one. */
static void print_error(const char *what, int err)
{
	const char *msg = rmq_last_error();

	if (msg == NULL || msg[0] == '\0') {
		msg = rmq_strerror(err);
	}
	fprintf(stderr, "raftmq: %s: %s\n", what, msg);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- Argument parsing --------------------------------------------------- */

struct args {
	const char *servers;
	const char *pos[4]; /* positional words */
	int npos;
	bool json;
	bool print;
	bool wait;
	const char *to;
	const char *from;
	const char *body;
	const char *count;
	const char *size;
	const char *prefix;
	const char *window;
	const char *timeout;
	const char *idle_timeout;
	const char *prefetch;
	const char *max_length;
	const char *max_message_size;
};

/* Options taking a value, and where they are stored. */
static const char **opt_slot(struct args *a, const char *name)
{
	static const char *const names[] = {
		"--servers",
		"--body",
		"--count",
		"--size",
		"--prefix",
		"--window",
		"--timeout",
		"--idle-timeout",
		"--prefetch",
		"--max-length",
		"--max-message-size",
		"--to",
		"--from",
	};
	const char **slots[] = {
		&a->servers,
		&a->body,
		&a->count,
		&a->size,
		&a->prefix,
		&a->window,
		&a->timeout,
		&a->idle_timeout,
		&a->prefetch,
		&a->max_length,
		&a->max_message_size,
		&a->to,
		&a->from,
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strcmp(name, names[i]) == 0) {
			return slots[i];
		}
	}
	return NULL;
}

/* 0, 1 for --help, or 2 for a usage error (already reported). */
static int parse_args(int argc, char **argv, struct args *a)
{
	memset(a, 0, sizeof *a);
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			return 1;
		}
		if (strcmp(arg, "--json") == 0) {
			a->json = true;
			continue;
		}
		if (strcmp(arg, "--print") == 0) {
			a->print = true;
			continue;
		}
		if (strcmp(arg, "--wait") == 0) {
			a->wait = true;
			continue;
		}
		if (strncmp(arg, "--", 2) == 0) {
			char name[64];
			const char *eq = strchr(arg, '=');
			const char *val;
			const char **slot;
			size_t nl = eq != NULL ? (size_t)(eq - arg)
					       : strlen(arg);
			if (nl >= sizeof name) {
				fprintf(stderr, "raftmq: unknown option %s\n",
					arg);
				return 2;
			}
			memcpy(name, arg, nl);
			name[nl] = '\0';
			slot = opt_slot(a, name);
			if (slot == NULL) {
				fprintf(stderr, "raftmq: unknown option %s\n",
					name);
				return 2;
			}
			if (eq != NULL) {
				val = eq + 1;
			} else if (i + 1 < argc) {
				val = argv[++i];
			} else {
				fprintf(stderr, "raftmq: %s needs a value\n",
					name);
				return 2;
			}
			*slot = val;
			continue;
		}
		if (a->npos >= 4) {
			fprintf(stderr, "raftmq: too many arguments\n");
			return 2;
		}
		a->pos[a->npos++] = arg;
	}
	return 0;
}

static int connect_client(const struct args *a, struct rmq_options *o,
			  struct rmq_client **c)
{
	int rv;

	if (a->servers != NULL) {
		o->servers = a->servers;
	} else if (getenv("RAFTMQ_SERVERS") != NULL &&
		   getenv("RAFTMQ_SERVERS")[0] != '\0') {
		o->servers = getenv("RAFTMQ_SERVERS");
	} else {
		o->servers = DEFAULT_SERVERS;
	}
	rv = rmq_connect(o, c);
	if (rv != 0) {
		print_error("connect", rv);
	}
	return rv;
}

/* ---- cluster status ------------------------------------------------------ */

static int cmd_cluster_status(const struct args *a)
{
	struct rmq_options o;
	struct rmq_client *c;
	struct rmq_cluster_info *ci;
	int rv;

	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_cluster_status(c, &ci);
	if (rv != 0) {
		print_error("cluster status", rv);
		rmq_close(c, 0);
		return 1;
	}
	if (a->json) {
		cJSON *root = cJSON_CreateObject();
		cJSON *nodes;
		cJSON *shards;
		char *text;
		cJSON_AddStringToObject(root, "cluster_name", ci->cluster_name);
		nodes = cJSON_AddArrayToObject(root, "nodes");
		for (size_t i = 0; i < ci->n_nodes; i++) {
			cJSON *n = cJSON_CreateObject();
			cJSON_AddNumberToObject(n, "id",
						(double)ci->nodes[i].id);
			cJSON_AddStringToObject(n, "client_address",
						ci->nodes[i].client_address);
			cJSON_AddBoolToObject(n, "reachable",
					      ci->nodes[i].reachable);
			cJSON_AddItemToArray(nodes, n);
		}
		shards = cJSON_AddArrayToObject(root, "shards");
		for (size_t i = 0; i < ci->n_shards; i++) {
			const struct rmq_shard_info *s = &ci->shards[i];
			cJSON *j = cJSON_CreateObject();
			cJSON *reps;
			cJSON_AddNumberToObject(j, "id", s->id);
			if (s->leader != 0) {
				cJSON_AddNumberToObject(j, "leader",
							(double)s->leader);
			} else {
				cJSON_AddNullToObject(j, "leader");
			}
			cJSON_AddNumberToObject(j, "term", (double)s->term);
			cJSON_AddNumberToObject(j, "commit_index",
						(double)s->commit_index);
			reps = cJSON_AddArrayToObject(j, "replicas");
			for (size_t r = 0; r < s->n_replicas; r++) {
				cJSON_AddItemToArray(
					reps, cJSON_CreateNumber(
						      (double)s->replicas[r]));
			}
			cJSON_AddItemToArray(shards, j);
		}
		text = cJSON_PrintUnformatted(root);
		if (text != NULL) {
			printf("%s\n", text);
			free(text);
		}
		cJSON_Delete(root);
	} else {
		printf("cluster: %s\n\n",
		       ci->cluster_name[0] ? ci->cluster_name : "-");
		printf("%-6s %-24s %s\n", "NODE", "CLIENT ADDRESS",
		       "REACHABLE");
		for (size_t i = 0; i < ci->n_nodes; i++) {
			printf("%-6llu %-24s %s\n",
			       (unsigned long long)ci->nodes[i].id,
			       ci->nodes[i].client_address[0]
				       ? ci->nodes[i].client_address
				       : "-",
			       ci->nodes[i].reachable ? "yes" : "no");
		}
		printf("\n%-6s %-7s %-8s %-12s %s\n", "SHARD", "LEADER", "TERM",
		       "COMMIT", "REPLICAS");
		for (size_t i = 0; i < ci->n_shards; i++) {
			const struct rmq_shard_info *s = &ci->shards[i];
			char leader[24];
			char reps[128] = "";
			size_t off = 0;
			if (s->leader != 0) {
				snprintf(leader, sizeof leader, "%llu",
					 (unsigned long long)s->leader);
			} else {
				snprintf(leader, sizeof leader, "-");
			}
			for (size_t r = 0; r < s->n_replicas; r++) {
				int w = snprintf(
					reps + off, sizeof reps - off, "%s%llu",
					r ? "," : "",
					(unsigned long long)s->replicas[r]);
				if (w < 0 || (size_t)w >= sizeof reps - off) {
					break;
				}
				off += (size_t)w;
			}
			printf("%-6u %-7s %-8llu %-12llu %s\n", s->id, leader,
			       (unsigned long long)s->term,
			       (unsigned long long)s->commit_index, reps);
		}
	}
	rmq_cluster_info_free(ci);
	rmq_close(c, 0);
	return 0;
}

/* ---- queue declare / list / delete ---------------------------------------- */

static int cmd_queue_declare(const struct args *a, const char *name)
{
	struct rmq_queue_options qo;
	struct rmq_options o;
	struct rmq_client *c;
	char what[300];
	uint32_t shard = 0;
	bool created = false;
	uint64_t v;
	int rv;

	memset(&qo, 0, sizeof qo);
	if (a->max_length != NULL) {
		if (cliutil_parse_u64(a->max_length, 0, UINT64_MAX, &v) != 0) {
			return usage_error("bad --max-length");
		}
		qo.max_length = v;
	}
	if (a->max_message_size != NULL) {
		if (cliutil_parse_u64(a->max_message_size, 0, UINT32_MAX, &v) !=
		    0) {
			return usage_error("bad --max-message-size");
		}
		qo.max_message_size = (uint32_t)v;
	}
	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_queue_declare_ex(c, name, &qo, &created, &shard);
	if (rv != 0) {
		snprintf(what, sizeof what, "declare %s", name);
		print_error(what, rv);
		rmq_close(c, 0);
		return 1;
	}
	if (created) {
		printf("declared %s (shard %u)\n", name, shard);
	} else {
		printf("exists %s\n", name);
	}
	rmq_close(c, 0);
	return 0;
}

static int cmd_queue_list(const struct args *a)
{
	struct rmq_options o;
	struct rmq_client *c;
	struct rmq_queue_info *qs;
	size_t n;
	int rv;

	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_queue_list(c, &qs, &n);
	if (rv != 0) {
		print_error("queue list", rv);
		rmq_close(c, 0);
		return 1;
	}
	if (a->json) {
		cJSON *arr = cJSON_CreateArray();
		char *text;
		for (size_t i = 0; i < n; i++) {
			cJSON *q = cJSON_CreateObject();
			cJSON_AddStringToObject(q, "name", qs[i].name);
			cJSON_AddNumberToObject(q, "shard", qs[i].shard);
			if (qs[i].leader != 0) {
				cJSON_AddNumberToObject(q, "leader",
							(double)qs[i].leader);
			} else {
				cJSON_AddNullToObject(q, "leader");
			}
			cJSON_AddNumberToObject(q, "ready",
						(double)qs[i].ready);
			cJSON_AddNumberToObject(q, "unacked",
						(double)qs[i].unacked);
			cJSON_AddItemToArray(arr, q);
		}
		text = cJSON_PrintUnformatted(arr);
		if (text != NULL) {
			printf("%s\n", text);
			free(text);
		}
		cJSON_Delete(arr);
	} else {
		int w = 4;
		for (size_t i = 0; i < n; i++) {
			int l = (int)strlen(qs[i].name);
			w = l > w ? l : w;
		}
		printf("%-*s  %5s  %6s  %10s  %10s\n", w, "NAME", "SHARD",
		       "LEADER", "READY", "UNACKED");
		for (size_t i = 0; i < n; i++) {
			char leader[24] = "-";
			if (qs[i].leader != 0) {
				snprintf(leader, sizeof leader, "%llu",
					 (unsigned long long)qs[i].leader);
			}
			printf("%-*s  %5u  %6s  %10llu  %10llu\n", w,
			       qs[i].name, qs[i].shard, leader,
			       (unsigned long long)qs[i].ready,
			       (unsigned long long)qs[i].unacked);
		}
	}
	free(qs);
	rmq_close(c, 0);
	return 0;
}

static int cmd_queue_delete(const struct args *a, const char *name)
{
	struct rmq_options o;
	struct rmq_client *c;
	char what[300];
	int rv;

	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_queue_delete(c, name);
	if (rv != 0) {
		snprintf(what, sizeof what, "delete %s", name);
		print_error(what, rv);
		rmq_close(c, 0);
		return 1;
	}
	printf("deleted %s\n", name);
	rmq_close(c, 0);
	return 0;
}

/* ---- publish ------------------------------------------------------------- */

struct pub_run {
	const char *queue;
	atomic_ullong confirmed;
	atomic_ullong failed;
	atomic_bool not_found;
	atomic_int reported[32]; /* -err already printed */
};

static void report_once(struct pub_run *r, int status)
{
	int idx = -status;
	char what[300];

	if (idx > 0 && idx < 32 && atomic_exchange(&r->reported[idx], 1)) {
		return;
	}
	snprintf(what, sizeof what, "publish to %s", r->queue);
	print_error(what, status);
}

/* On the library's I/O thread. */
static void pub_confirm_cb(void *arg, int status, uint64_t seq)
{
	struct pub_run *r = arg;

	(void)seq;
	if (status == 0) {
		atomic_fetch_add(&r->confirmed, 1);
		return;
	}
	atomic_fetch_add(&r->failed, 1);
	if (status == RMQ_ENOTFOUND) {
		atomic_store(&r->not_found, true);
	}
	report_once(r, status);
}

static void random_prefix(char *out, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[8] = {0};
	FILE *f = fopen("/dev/urandom", "rb");
	size_t got = 0;

	if (f != NULL) {
		got = fread(raw, 1, sizeof raw, f);
		fclose(f);
	}
	if (got < sizeof raw) {
		uint64_t x = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20) ^
			     (uint64_t)(now_s() * 1e9);
		for (size_t i = 0; i < sizeof raw; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			raw[i] = (unsigned char)(x >> 56);
		}
	}
	for (size_t i = 0; i < n / 2 && i < sizeof raw; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[n] = '\0';
}

static int cmd_publish(const struct args *a, const char *queue)
{
	struct rmq_options o;
	struct rmq_client *c;
	struct pub_run run;
	uint64_t count = 1;
	uint64_t size = 0;
	uint64_t window = 1000;
	unsigned timeout_ms = 30000;
	char prefix_buf[16];
	const char *prefix;
	char *buf = NULL;
	size_t cap;
	uint64_t submitted = 0;
	double t0;
	double secs;
	int rv;

	if ((a->body == NULL) == (a->count == NULL)) {
		return usage_error("publish needs --body TEXT or --count N");
	}
	if (a->body != NULL && (a->size != NULL || a->prefix != NULL)) {
		return usage_error("--size and --prefix go with --count");
	}
	if (a->count != NULL &&
	    cliutil_parse_u64(a->count, 1, UINT64_MAX / 2, &count) != 0) {
		return usage_error("bad --count");
	}
	if (a->size != NULL &&
	    cliutil_parse_u64(a->size, 0, 1u << 30, &size) != 0) {
		return usage_error("bad --size");
	}
	if (a->window != NULL &&
	    cliutil_parse_u64(a->window, 1, 1000000, &window) != 0) {
		return usage_error("bad --window");
	}
	if (a->timeout != NULL &&
	    (cliutil_parse_seconds(a->timeout, &timeout_ms) != 0 ||
	     timeout_ms == 0)) {
		return usage_error("bad --timeout");
	}
	if (a->prefix != NULL) {
		prefix = a->prefix;
	} else {
		random_prefix(prefix_buf, 8);
		prefix = prefix_buf;
	}
	cap = strlen(prefix) + 32 + (size_t)size;
	if (a->count != NULL) {
		buf = malloc(cap);
		if (buf == NULL) {
			fprintf(stderr, "raftmq: out of memory\n");
			return 1;
		}
	}

	rmq_options_init(&o);
	o.publish_window = (unsigned)window;
	o.publish_timeout_ms = timeout_ms;
	if (connect_client(a, &o, &c) != 0) {
		free(buf);
		return 1;
	}
	memset(&run, 0, sizeof run);
	run.queue = queue;
	t0 = now_s();
	for (uint64_t i = 1; i <= count; i++) {
		const void *body;
		size_t len;
		if (atomic_load(&run.not_found)) {
			break; /* the queue does not exist: stop early */
		}
		if (a->body != NULL) {
			body = a->body;
			len = strlen(a->body);
		} else {
			len = cliutil_make_body(buf, cap, prefix, i,
						(size_t)size);
			body = buf;
		}
		rv = rmq_publish_async(c, queue, body, len, NULL, 0,
				       pub_confirm_cb, &run);
		if (rv != 0) {
			report_once(&run, rv);
			break;
		}
		submitted++;
	}
	rmq_flush(c, timeout_ms * 2 + 10000);
	secs = now_s() - t0;
	{
		unsigned long long ok = atomic_load(&run.confirmed);
		unsigned long long failed = count - ok;
		printf("confirmed=%llu failed=%llu seconds=%.3f rate=%llu\n",
		       ok, failed, secs,
		       secs > 0 ? (unsigned long long)((double)ok / secs) : ok);
		fflush(stdout);
		rmq_close(c, 1000);
		free(buf);
		(void)submitted;
		return ok == count ? 0 : 1;
	}
}

/* ---- consume ------------------------------------------------------------- */

/* Sequence numbers this run has handled: after a failover the new leader
 * delivers again what was unacked (or whose ack was lost), and a consumer
 * that already handled a seq acks it again instead of handling it twice. */
struct seen {
	uint64_t *slots; /* 0: empty */
	size_t cap, n;
};

static size_t seen_slot(uint64_t seq, size_t cap)
{
	return (size_t)((seq * 0x9e3779b97f4a7c15ULL) >> 17) & (cap - 1);
}

/* Add @seq; returns 1 if it was already there, 0 if added, -1 on ENOMEM. */
static int seen_add(struct seen *s, uint64_t seq)
{
	if ((s->n + 1) * 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 1024;
		uint64_t *slots = calloc(cap, sizeof *slots);
		if (slots == NULL) {
			return -1;
		}
		for (size_t i = 0; i < s->cap; i++) {
			if (s->slots[i] != 0) {
				size_t j = seen_slot(s->slots[i], cap);
				while (slots[j] != 0) {
					j = (j + 1) & (cap - 1);
				}
				slots[j] = s->slots[i];
			}
		}
		free(s->slots);
		s->slots = slots;
		s->cap = cap;
	}
	size_t i = seen_slot(seq, s->cap);
	while (s->slots[i] != 0) {
		if (s->slots[i] == seq) {
			return 1;
		}
		i = (i + 1) & (s->cap - 1);
	}
	s->slots[i] = seq;
	s->n++;
	return 0;
}

static int cmd_consume(const struct args *a, const char *queue)
{
	struct rmq_options o;
	struct rmq_client *c;
	struct rmq_consumer *k;
	uint64_t count = 0;
	uint64_t prefetch = 100;
	unsigned idle_ms = 2000;
	unsigned long long consumed = 0;
	unsigned long long redelivered = 0;
	struct seen seen = {0};
	char what[300];
	int status = 0;
	double t0;
	int rv;

	if (a->count != NULL &&
	    cliutil_parse_u64(a->count, 1, UINT64_MAX, &count) != 0) {
		return usage_error("bad --count");
	}
	if (a->prefetch != NULL &&
	    cliutil_parse_u64(a->prefetch, 1, 1000000, &prefetch) != 0) {
		return usage_error("bad --prefetch");
	}
	if (a->idle_timeout != NULL &&
	    cliutil_parse_seconds(a->idle_timeout, &idle_ms) != 0) {
		return usage_error("bad --idle-timeout");
	}
	if (count != 0 && count < prefetch) {
		prefetch = count; /* do not hold messages we will not use */
	}
	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	snprintf(what, sizeof what, "consume from %s", queue);
	t0 = now_s();
	rv = rmq_subscribe(c, queue, (unsigned)prefetch, NULL, NULL, &k);
	if (rv != 0) {
		print_error(what, rv);
		rmq_close(c, 0);
		return 1;
	}
	while (count == 0 || consumed < count) {
		struct rmq_delivery *d;
		rv = rmq_receive(k, idle_ms, &d);
		if (rv == RMQ_ETIMEDOUT) {
			break;
		}
		if (rv != 0) {
			print_error(what, rv);
			status = 1;
			break;
		}
		int again = seen_add(&seen, d->seq);
		if (again < 0) {
			print_error(what, RMQ_ENOMEM);
			rmq_delivery_free(d);
			status = 1;
			break;
		}
		if (d->redelivered) {
			redelivered++;
		}
		if (again == 0) {
			if (a->print) {
				fwrite(d->body, 1, d->len, stdout);
				fputc('\n', stdout);
				fflush(stdout);
			}
			consumed++;
		}
		rv = rmq_ack(k, d->seq);
		rmq_delivery_free(d);
		if (rv != 0) {
			print_error(what, rv);
			status = 1;
			break;
		}
	}
	rv = rmq_settle_flush(c, 10000);
	if (rv != 0) {
		snprintf(what, sizeof what, "ack on %s", queue);
		print_error(what, rv);
		status = 1;
	}
	rmq_unsubscribe(k);
	rmq_close(c, 1000);
	fprintf(stderr, "consumed=%llu redelivered=%llu seconds=%.3f\n",
		consumed, redelivered, now_s() - t0);
	free(seen.slots);
	return status;
}

/* ---- node and shard administration --------------------------------------- */

static bool parse_id(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0' || *s == '-') {
		return false;
	}
	v = strtoull(s, &end, 10);
	if (*end != '\0') {
		return false;
	}
	*out = v;
	return true;
}

static void print_shards(FILE *f, const struct rmq_member *m)
{
	for (size_t j = 0; j < m->n_shards; j++) {
		fprintf(f, "%s%u", j ? "," : "", m->shards[j]);
	}
	if (m->n_shards == 0) {
		fputc('-', f);
	}
}

static int cmd_node_list(const struct args *a)
{
	struct rmq_options o;
	struct rmq_client *c;
	struct rmq_member *m = NULL;
	size_t n = 0;
	int rv;

	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_node_list(c, &m, &n);
	rmq_close(c, 1000);
	if (rv != 0) {
		print_error("node list", rv);
		return 1;
	}
	if (a->json) {
		cJSON *arr = cJSON_CreateArray();
		char *text;
		for (size_t i = 0; i < n; i++) {
			cJSON *j = cJSON_CreateObject();
			cJSON *sh;
			cJSON_AddNumberToObject(j, "id", (double)m[i].id);
			cJSON_AddStringToObject(j, "client_address",
						m[i].client_address);
			cJSON_AddStringToObject(j, "peer_address",
						m[i].peer_address);
			cJSON_AddStringToObject(j, "role", m[i].role);
			sh = cJSON_AddArrayToObject(j, "shards");
			for (size_t k = 0; k < m[i].n_shards; k++) {
				cJSON_AddItemToArray(
					sh, cJSON_CreateNumber(m[i].shards[k]));
			}
			cJSON_AddItemToArray(arr, j);
		}
		text = cJSON_PrintUnformatted(arr);
		if (text != NULL) {
			puts(text);
		}
		cJSON_free(text);
		cJSON_Delete(arr);
	} else {
		printf("%-6s %-22s %-22s %-8s %s\n", "ID", "CLIENT", "PEER",
		       "ROLE", "SHARDS");
		for (size_t i = 0; i < n; i++) {
			printf("%-6llu %-22s %-22s %-8s ",
			       (unsigned long long)m[i].id, m[i].client_address,
			       m[i].peer_address, m[i].role);
			print_shards(stdout, &m[i]);
			putchar('\n');
		}
	}
	free(m);
	return 0;
}

/* Poll the node list until node @id has @role ("" : until it is gone),
 * for up to @timeout_s seconds. 0 when reached. */
static int wait_for_role(struct rmq_client *c, uint64_t id, const char *role,
			 double timeout_s)
{
	double t0 = now_s();
	char last[16] = "?";

	for (;;) {
		struct rmq_member *m = NULL;
		size_t n = 0;
		bool found = false;
		if (rmq_node_list(c, &m, &n) == 0) {
			for (size_t i = 0; i < n; i++) {
				if (m[i].id != id) {
					continue;
				}
				found = true;
				if (strcmp(last, m[i].role) != 0) {
					fprintf(stderr, "node %llu: %s\n",
						(unsigned long long)id,
						m[i].role);
					snprintf(last, sizeof last, "%s",
						 m[i].role);
				}
				if (strcmp(m[i].role, role) == 0) {
					free(m);
					return 0;
				}
			}
			free(m);
			if (!found && role[0] == '\0') {
				return 0;
			}
		}
		if (now_s() - t0 > timeout_s) {
			return 1;
		}
		usleep(500 * 1000);
	}
}

static double timeout_arg(const struct args *a, double def)
{
	return a->timeout != NULL ? atof(a->timeout) : def;
}

static int cmd_node_add(const struct args *a, const char *ids)
{
	struct rmq_options o;
	struct rmq_client *c;
	char what[64];
	uint64_t id;
	int rv;

	if (!parse_id(ids, &id) || id == 0) {
		return usage_error("node add: ID must be a positive integer");
	}
	snprintf(what, sizeof what, "node add %llu", (unsigned long long)id);
	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_node_add(c, id);
	if (rv != 0) {
		print_error(what, rv);
		rmq_close(c, 1000);
		return 1;
	}
	/* Replicas are added shard by shard, each catching up first. */
	rv = wait_for_role(c, id, "voter", timeout_arg(a, 180));
	rmq_close(c, 1000);
	if (rv != 0) {
		fprintf(stderr,
			"raftmq: %s: not a voter of its shards yet; it keeps "
			"catching up (see raftmq node list)\n",
			what);
		return 1;
	}
	printf("node %llu is a member; shard replicas move onto it in "
	       "the background (raftmq node list)\n",
	       (unsigned long long)id);
	return 0;
}

static int cmd_node_remove(const struct args *a, const char *ids)
{
	struct rmq_options o;
	struct rmq_client *c;
	char what[64];
	uint64_t id;
	int rv;

	if (!parse_id(ids, &id) || id == 0) {
		return usage_error(
			"node remove: ID must be a positive integer");
	}
	snprintf(what, sizeof what, "node remove %llu", (unsigned long long)id);
	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	rv = rmq_node_remove(c, id);
	if (rv != 0) {
		print_error(what, rv);
		rmq_close(c, 1000);
		return 1;
	}
	if (!a->wait) {
		rmq_close(c, 1000);
		printf("node %llu is leaving; `raftmq node remove %llu --wait` "
		       "says when it can be stopped\n",
		       (unsigned long long)id, (unsigned long long)id);
		return 0;
	}
	rv = wait_for_role(c, id, "", timeout_arg(a, 180));
	rmq_close(c, 1000);
	if (rv != 0) {
		fprintf(stderr,
			"raftmq: %s: still leaving (see raftmq node list)\n",
			what);
		return 1;
	}
	printf("node %llu is removed from every shard: it can be stopped "
	       "now\n",
	       (unsigned long long)id);
	return 0;
}

static int cmd_shard(const struct args *a)
{
	struct rmq_options o;
	struct rmq_client *c;
	char what[96];
	uint64_t shard, to = 0, from = 0;
	bool move = strcmp(a->pos[1], "move") == 0;
	int rv;

	if (!parse_id(a->pos[2], &shard) || shard > 32 ||
	    !parse_id(a->to, &to) || to == 0 ||
	    (move && (!parse_id(a->from, &from) || from == 0))) {
		return usage_error(move ? "expected: shard move SHARD --from "
					  "NODE --to NODE"
					: "expected: shard transfer SHARD "
					  "--to NODE");
	}
	snprintf(what, sizeof what, "shard %s %llu", a->pos[1],
		 (unsigned long long)shard);
	rmq_options_init(&o);
	if (connect_client(a, &o, &c) != 0) {
		return 1;
	}
	bool done = false;
	rv = move ? rmq_shard_move(c, (uint32_t)shard, from, to, &done)
		  : rmq_shard_transfer(c, (uint32_t)shard, to);
	if (rv == 0 && move && a->wait) {
		double deadline = now_s() + timeout_arg(a, 180);
		while (!done && now_s() < deadline) {
			usleep(250 * 1000);
			rv = rmq_shard_move(c, (uint32_t)shard, from, to,
					    &done);
			if (rv != 0) {
				break;
			}
		}
		if (rv == 0 && !done) {
			rmq_close(c, 1000);
			fprintf(stderr,
				"raftmq: %s: node %llu is still catching up "
				"(see raftmq cluster status)\n",
				what, (unsigned long long)to);
			return 1;
		}
	}
	rmq_close(c, 1000);
	if (rv != 0) {
		print_error(what, rv);
		return 1;
	}
	if (move && done) {
		printf("shard %llu: replica moved from node %llu to node "
		       "%llu\n",
		       (unsigned long long)shard, (unsigned long long)from,
		       (unsigned long long)to);
	} else if (move) {
		printf("shard %llu: moving its replica from node %llu to node "
		       "%llu; `raftmq shard move %llu --from %llu --to %llu "
		       "--wait` says when it is done\n",
		       (unsigned long long)shard, (unsigned long long)from,
		       (unsigned long long)to, (unsigned long long)shard,
		       (unsigned long long)from, (unsigned long long)to);
	} else {
		printf("shard %llu: node %llu leads it\n",
		       (unsigned long long)shard, (unsigned long long)to);
	}
	return 0;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct args a;
	int rv = parse_args(argc, argv, &a);

	if (rv == 1) {
		usage(stdout);
		return 0;
	}
	if (rv != 0) {
		usage(stderr);
		return 2;
	}
	if (a.npos == 0) {
		return usage_error(NULL);
	}
	if (strcmp(a.pos[0], "cluster") == 0) {
		if (a.npos != 2 || strcmp(a.pos[1], "status") != 0) {
			return usage_error("expected: cluster status");
		}
		return cmd_cluster_status(&a);
	}
	if (strcmp(a.pos[0], "queue") == 0) {
		if (a.npos >= 2 && strcmp(a.pos[1], "declare") == 0 &&
		    a.npos == 3) {
			return cmd_queue_declare(&a, a.pos[2]);
		}
		if (a.npos == 2 && strcmp(a.pos[1], "list") == 0) {
			return cmd_queue_list(&a);
		}
		if (a.npos == 3 && strcmp(a.pos[1], "delete") == 0) {
			return cmd_queue_delete(&a, a.pos[2]);
		}
		return usage_error(
			"expected: queue declare NAME | queue list | "
			"queue delete NAME");
	}
	if (strcmp(a.pos[0], "publish") == 0) {
		if (a.npos != 2) {
			return usage_error("expected: publish QUEUE");
		}
		return cmd_publish(&a, a.pos[1]);
	}
	if (strcmp(a.pos[0], "consume") == 0) {
		if (a.npos != 2) {
			return usage_error("expected: consume QUEUE");
		}
		return cmd_consume(&a, a.pos[1]);
	}
	if (strcmp(a.pos[0], "node") == 0) {
		if (a.npos == 2 && strcmp(a.pos[1], "list") == 0) {
			return cmd_node_list(&a);
		}
		if (a.npos == 3 && strcmp(a.pos[1], "add") == 0) {
			return cmd_node_add(&a, a.pos[2]);
		}
		if (a.npos == 3 && strcmp(a.pos[1], "remove") == 0) {
			return cmd_node_remove(&a, a.pos[2]);
		}
		return usage_error("expected: node list | node add ID | "
				   "node remove ID [--wait]");
	}
	if (strcmp(a.pos[0], "shard") == 0) {
		if (a.npos == 3 && (strcmp(a.pos[1], "transfer") == 0 ||
				    strcmp(a.pos[1], "move") == 0)) {
			return cmd_shard(&a);
		}
		return usage_error("expected: shard transfer SHARD --to NODE | "
				   "shard move SHARD --from NODE --to NODE");
	}
	fprintf(stderr, "raftmq: unknown command %s\n", a.pos[0]);
	usage(stderr);
	return 2;
}
