/* config: see config.h. */
#include "config.h"

#include <getopt.h>
#include <stdbool.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "raftmq_errors.h"
#include "transport.h"

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->data_dir, sizeof c->data_dir, "data");
	c->log_level = LOG_INFO;
	c->ready_max_lag = 100;
	snprintf(c->cluster_name, sizeof c->cluster_name, "raftmq");
	c->shards = 3;
	c->replication_factor = 3;
	c->max_frame = 16u * 1024 * 1024;
	c->max_message_size = 8u * 1024 * 1024;
	c->map_size = (size_t)8192 * 1024 * 1024;
	c->min_free_disk = (uint64_t)64 * 1024 * 1024;
	c->election_timeout_ms = 500;
	c->heartbeat_timeout_ms = 50;
	c->snapshot_threshold = 4096;
	c->snapshot_trailing = 1024;
	c->log_cache_bytes = (size_t)32 * 1024 * 1024;
	c->batch_max_messages = 1000;
	c->batch_max_bytes = 4u * 1024 * 1024;
}

static int parse_u64(const char *v, uint64_t *out)
{
	char *end;
	unsigned long long x = strtoull(v, &end, 10);
	if (*v == '\0' || *end != '\0' || *v == '-') {
		return -1;
	}
	*out = x;
	return 0;
}

#define COPY(field, v) snprintf(field, sizeof field, "%s", v)

/* Set one key; @section is "" for flags that name keys directly. */
static int set_key(struct config *c, const char *section, const char *key,
		   const char *v)
{
	uint64_t n = 0;
	bool numeric = parse_u64(v, &n) == 0;
	(void)section;

	if (strcmp(key, "id") == 0 && numeric && n > 0) {
		c->id = n;
	} else if (strcmp(key, "data_dir") == 0) {
		COPY(c->data_dir, v);
	} else if (strcmp(key, "client_address") == 0) {
		COPY(c->client_address, v);
	} else if (strcmp(key, "peer_address") == 0) {
		COPY(c->peer_address, v);
	} else if (strcmp(key, "http_address") == 0) {
		COPY(c->http_address, v);
	} else if (strcmp(key, "ready_max_lag") == 0 && numeric &&
		   n <= UINT32_MAX) {
		c->ready_max_lag = (unsigned)n;
	} else if (strcmp(key, "bind_address") == 0) {
		COPY(c->bind_address, v);
	} else if (strcmp(key, "log_level") == 0) {
		c->log_level = log_parse_level(v);
		if (c->log_level < 0) {
			return -1;
		}
	} else if (strcmp(key, "name") == 0 ||
		   strcmp(key, "cluster_name") == 0) {
		COPY(c->cluster_name, v);
	} else if (strcmp(key, "join") == 0) {
		COPY(c->join, v);
	} else if (strcmp(key, "initial_cluster") == 0) {
		COPY(c->initial_cluster, v);
	} else if (strcmp(key, "shards") == 0 && numeric && n >= 1 && n <= 32) {
		c->shards = (unsigned)n;
	} else if (strcmp(key, "replication_factor") == 0 && numeric &&
		   n >= 1 && n <= 15) {
		c->replication_factor = (unsigned)n;
	} else if (strcmp(key, "max_frame") == 0 && numeric && n >= 1024 &&
		   n <= 1u << 30) {
		c->max_frame = (uint32_t)n;
	} else if (strcmp(key, "max_message_size") == 0 && numeric && n >= 1 &&
		   n <= 1u << 30) {
		c->max_message_size = (uint32_t)n;
	} else if (strcmp(key, "map_size_mb") == 0 && numeric && n >= 1) {
		c->map_size = (size_t)n * 1024 * 1024;
	} else if (strcmp(key, "min_free_disk_mb") == 0 && numeric) {
		c->min_free_disk = (uint64_t)n * 1024 * 1024;
	} else if (strcmp(key, "election_timeout_ms") == 0 && numeric &&
		   n >= 50) {
		c->election_timeout_ms = (unsigned)n;
	} else if (strcmp(key, "heartbeat_timeout_ms") == 0 && numeric &&
		   n >= 10) {
		c->heartbeat_timeout_ms = (unsigned)n;
	} else if (strcmp(key, "snapshot_threshold") == 0 && numeric &&
		   n >= 16) {
		c->snapshot_threshold = (unsigned)n;
	} else if (strcmp(key, "snapshot_trailing") == 0 && numeric) {
		c->snapshot_trailing = (unsigned)n;
	} else if (strcmp(key, "raft_log_cache_mb") == 0 && numeric) {
		c->log_cache_bytes = (size_t)n * 1024 * 1024;
	} else if (strcmp(key, "snapshot_max_mb") == 0 && numeric) {
		/* Obsolete: snapshots are descriptors now. Accepted so that
		 * existing config files still load. */
	} else if (strcmp(key, "batch_max_messages") == 0 && numeric &&
		   n >= 1) {
		c->batch_max_messages = (unsigned)n;
	} else if (strcmp(key, "batch_max_bytes") == 0 && numeric &&
		   n >= 1024) {
		c->batch_max_bytes = (size_t)n;
	} else {
		return -1;
	}
	return 0;
}

static int config_ini_cb(void *arg, const char *section, const char *name,
			 const char *value)
{
	struct config *c = arg;
	if (set_key(c, section, name, value) != 0) {
		fprintf(stderr,
			"raftmqd: config: bad key or value [%s] %s = %s\n",
			section, name, value);
		return 0;
	}
	return 1;
}

int config_parse_members(struct config *c, const char *list)
{
	char buf[1024];
	char *save = NULL;
	COPY(buf, list);
	c->n_members = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok != NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		char *at = strchr(tok, '@');
		uint64_t id;
		if (at == NULL || c->n_members == CONFIG_MAX_MEMBERS) {
			return -1;
		}
		*at = '\0';
		if (parse_u64(tok, &id) != 0 || id == 0 ||
		    strchr(at + 1, ':') == NULL) {
			return -1;
		}
		c->members[c->n_members].id = id;
		COPY(c->members[c->n_members].peer_address, at + 1);
		c->n_members++;
	}
	return c->n_members > 0 ? 0 : -1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: raftmqd [--config FILE] [--id N] [--data-dir DIR]\n"
		"               [--client-address H:P] [--peer-address H:P]\n"
		"               [--http-address H:P] [--bind-address IP]\n"
		"               [--cluster-name NAME] [--initial-cluster "
		"1@H:P,2@H:P,...]\n"
		"               [--shards N] [--log-level debug|info|warn|error]\n"
		"               [--join H:P[,H:P...]]\n"
		"Flags override the INI file; see docs/operations.md.\n");
}

int config_load(struct config *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"id", required_argument, NULL, 'i'},
		{"data-dir", required_argument, NULL, 'd'},
		{"client-address", required_argument, NULL, 'C'},
		{"peer-address", required_argument, NULL, 'P'},
		{"http-address", required_argument, NULL, 'H'},
		{"bind-address", required_argument, NULL, 'b'},
		{"cluster-name", required_argument, NULL, 'n'},
		{"initial-cluster", required_argument, NULL, 'I'},
		{"shards", required_argument, NULL, 's'},
		{"log-level", required_argument, NULL, 'l'},
		{"join", required_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	static const char *const keys[128] = {
		['i'] = "id",
		['d'] = "data_dir",
		['C'] = "client_address",
		['P'] = "peer_address",
		['H'] = "http_address",
		['b'] = "bind_address",
		['n'] = "cluster_name",
		['I'] = "initial_cluster",
		['s'] = "shards",
		['l'] = "log_level",
		['j'] = "join",
	};
	struct sockaddr_storage ss;
	int ch;

	/* First pass: the config file, so that flags override it. */
	optind = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch == 'c') {
			int rv = ini_parse(optarg, config_ini_cb, c);
			if (rv != 0) {
				fprintf(stderr,
					"raftmqd: config %s: %s (line %d)\n",
					optarg,
					rv < 0 ? "cannot read" : "invalid", rv);
				return RMQ_EINVAL;
			}
		}
	}
	optind = 1;
	opterr = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch == 'h') {
			usage(stdout);
			return 1;
		}
		if (ch == 'c') {
			continue;
		}
		if (ch == '?' || ch < 0 || ch >= 128 || keys[ch] == NULL) {
			usage(stderr);
			return RMQ_EINVAL;
		}
		if (set_key(c, "", keys[ch], optarg) != 0) {
			fprintf(stderr, "raftmqd: bad value for --%s: %s\n",
				keys[ch], optarg);
			return RMQ_EINVAL;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return RMQ_EINVAL;
	}
	if (c->id == 0) {
		fprintf(stderr, "raftmqd: a node id is required (--id)\n");
		return RMQ_EINVAL;
	}
	/* A joining node learns its cluster from the nodes in join; it does
	 * not need (and ignores for bootstrap) an initial_cluster. */
	if ((c->join[0] == '\0' || c->initial_cluster[0] != '\0') &&
	    (c->initial_cluster[0] == '\0' ||
	     config_parse_members(c, c->initial_cluster) != 0)) {
		fprintf(stderr,
			"raftmqd: initial_cluster must be "
			"1@host:port,2@host:port,... (or give --join)\n");
		return RMQ_EINVAL;
	}
	if (c->peer_address[0] == '\0') {
		for (size_t i = 0; i < c->n_members; i++) {
			if (c->members[i].id == c->id) {
				COPY(c->peer_address,
				     c->members[i].peer_address);
			}
		}
	}
	if (c->peer_address[0] == '\0' || c->client_address[0] == '\0') {
		fprintf(stderr, "raftmqd: client_address and peer_address "
				"are required\n");
		return RMQ_EINVAL;
	}
	if (c->http_address[0] != '\0' &&
	    peer_net_parse_address(c->http_address, &ss) != 0) {
		fprintf(stderr,
			"raftmqd: bad http_address '%s': want ip:port or "
			"[ipv6]:port with a numeric IP (empty disables HTTP)\n",
			c->http_address);
		return RMQ_EINVAL;
	}
	if (c->max_message_size + 1024 > c->max_frame) {
		fprintf(stderr,
			"raftmqd: max_message_size must be smaller than "
			"max_frame - 1024\n");
		return RMQ_EINVAL;
	}
	return 0;
}
