/* config: raftmqd settings from an INI file (libinih) with command-line
 * overrides. Every key is documented in docs/operations.md and
 * deploy/raftmqd.example.ini. */
#ifndef RMQ_CONFIG_H
#define RMQ_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_MEMBERS 16
#define CONFIG_ADDR_LEN 64

struct config_member {
	uint64_t id;
	char peer_address[CONFIG_ADDR_LEN];
};

struct config {
	/* [node] */
	uint64_t id;
	char data_dir[1024];
	char client_address[CONFIG_ADDR_LEN];
	char peer_address[CONFIG_ADDR_LEN];
	char http_address[CONFIG_ADDR_LEN];
	unsigned ready_max_lag; /* /readyz: entries a shard may trail by */
	char bind_address[CONFIG_ADDR_LEN]; /* source IP for peer traffic */
	int log_level;
	/* [cluster] */
	char cluster_name[64];
	char initial_cluster[1024];
	struct config_member members[CONFIG_MAX_MEMBERS];
	size_t n_members;
	unsigned shards;             /* data shards */
	unsigned replication_factor; /* voters per data shard */
	char join[1024]; /* client addresses of existing nodes: join them */
	/* [limits] */
	uint32_t max_frame;
	uint32_t max_message_size;
	size_t map_size;
	uint64_t min_free_disk; /* bytes; the node stops below it (0: off) */
	/* [raft] */
	unsigned election_timeout_ms;
	unsigned heartbeat_timeout_ms;
	unsigned snapshot_threshold;
	unsigned snapshot_trailing;
	size_t log_cache_bytes; /* raft log kept in memory per shard */
	/* [server] */
	unsigned batch_max_messages;
	size_t batch_max_bytes;
};

void config_defaults(struct config *c);

/* Parse argv (and the --config file it names, read first, so flags win).
 * Returns 0, or prints the problem to stderr and returns RMQ_EINVAL.
 * Returns 1 when --help was printed. */
int config_load(struct config *c, int argc, char **argv);

/* Parse "1@h:p,2@h:p" into c->members. */
int config_parse_members(struct config *c, const char *list);

#endif /* RMQ_CONFIG_H */
