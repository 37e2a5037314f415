/* join: a new node registers itself with a running cluster (--join).
 *
 * Runs once, before the node's loop starts, on a node whose data dir has
 * no cluster id yet: it sends JoinReq (its id and addresses) over the
 * client protocol to the nodes in `join`, follows NOT_LEADER to the meta
 * leader, which records the node as a spare in the meta shard and answers
 * with the cluster id and the number of data shards. The node then starts
 * its shards empty (not bootstrapped): they get the log, or a snapshot,
 * from their leaders once `raftmq node add` makes the node a member.
 *
 * The happy path is one round trip to the meta leader. Failure modes:
 * a node is unreachable, silent (5 s) or answers UNAVAILABLE: the next
 * address is tried, passes repeat for up to two minutes; a refusal (an id
 * that is still a member, another cluster name) ends the join at once.
 *
 * Blocking sockets: this runs on the main thread before anything else.
 * node_rpc() is the same exchange for any request; the reporter thread of
 * members.c uses it too. */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "log.h"

#define JOIN_TIMEOUT_MS 120000
#define JOIN_IO_TIMEOUT_S 5

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			return RMQ_EIO;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			return RMQ_EIO;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int node_rpc(const char *addr, const Rmq__Request *req, unsigned timeout_s,
	     Rmq__Response **resp)
{
	struct sockaddr_storage sa;
	struct timeval tv = {.tv_sec = timeout_s};
	Rmq__ServerFrame *f = NULL;
	uint8_t hdr[RMQ_FRAME_HEADER];
	uint8_t *buf = NULL;
	size_t len;
	int fd, rv;

	if (peer_net_parse_address(addr, &sa) != 0) {
		return RMQ_EINVAL;
	}
	fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return RMQ_EIO;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&sa,
		    sa.ss_family == AF_INET6
			    ? sizeof(struct sockaddr_in6)
			    : sizeof(struct sockaddr_in)) != 0) {
		rv = RMQ_ECONNECT;
		goto out;
	}
	rv = codec_pack_request(req, &buf, &len);
	if (rv != 0) {
		goto out;
	}
	rv = send_all(fd, buf, len);
	free(buf);
	buf = NULL;
	if (rv == 0) {
		rv = recv_all(fd, hdr, sizeof hdr);
	}
	if (rv != 0) {
		goto out;
	}
	len = codec_get_u32be(hdr);
	if (len == 0 || len > RMQ_DEFAULT_MAX_FRAME) {
		rv = RMQ_EPROTO;
		goto out;
	}
	buf = malloc(len);
	if (buf == NULL) {
		rv = RMQ_ENOMEM;
		goto out;
	}
	rv = recv_all(fd, buf, len);
	if (rv != 0) {
		goto out;
	}
	f = rmq__server_frame__unpack(NULL, len, buf);
	if (f == NULL || f->kind_case != RMQ__SERVER_FRAME__KIND_RESPONSE ||
	    f->response == NULL) {
		rv = RMQ_EPROTO;
		goto out;
	}
	*resp = f->response;
	f->response = NULL;
	f->kind_case = RMQ__SERVER_FRAME__KIND__NOT_SET;
out:
	if (f != NULL) {
		rmq__server_frame__free_unpacked(f, NULL);
	}
	free(buf);
	close(fd);
	return rv;
}

/* One JoinReq to @addr. On 0, *resp (owned by the caller) is the answer. */
static int join_once(const struct config *cfg, const char *addr,
		     Rmq__Response **resp)
{
	Rmq__Request req = RMQ__REQUEST__INIT;
	Rmq__JoinReq j = RMQ__JOIN_REQ__INIT;

	j.node_id = cfg->id;
	j.cluster_name = (char *)cfg->cluster_name;
	j.peer_address = (char *)cfg->peer_address;
	j.client_address = (char *)cfg->client_address;
	j.http_address = (char *)cfg->http_address;
	req.id = 1;
	req.body_case = RMQ__REQUEST__BODY_JOIN;
	req.join = &j;
	return node_rpc(addr, &req, JOIN_IO_TIMEOUT_S, resp);
}

int join_cluster(const struct config *cfg, uint64_t *cluster_id,
		 unsigned *shards)
{
	char list[sizeof cfg->join];
	char *addrs[CONFIG_MAX_MEMBERS];
	char leader[CONFIG_ADDR_LEN] = "";
	size_t n = 0;
	char *save = NULL;
	uint64_t deadline = uv_hrtime() / 1000000 + JOIN_TIMEOUT_MS;

	snprintf(list, sizeof list, "%s", cfg->join);
	for (char *t = strtok_r(list, ",", &save);
	     t != NULL && n < CONFIG_MAX_MEMBERS;
	     t = strtok_r(NULL, ",", &save)) {
		addrs[n++] = t;
	}
	if (n == 0) {
		LOGE("join: no address in %s", cfg->join);
		return RMQ_EINVAL;
	}
	for (size_t i = 0;; i++) {
		const char *addr = leader[0] != '\0' ? leader : addrs[i % n];
		Rmq__Response *resp = NULL;
		char copy[CONFIG_ADDR_LEN];
		int rv;

		snprintf(copy, sizeof copy, "%s", addr);
		leader[0] = '\0';
		rv = join_once(cfg, copy, &resp);
		if (rv == 0 && resp->error == NULL &&
		    resp->body_case == RMQ__RESPONSE__BODY_JOIN) {
			*cluster_id = resp->join->cluster_id;
			*shards = resp->join->shards;
			rmq__response__free_unpacked(resp, NULL);
			if (*shards < 1 || *shards + 1 > NODE_MAX_SHARDS) {
				LOGE("join: bad shard count %u", *shards);
				return RMQ_EPROTO;
			}
			LOGI("node %" PRIu64 ": registered with the cluster "
			     "through %s as a spare; %u data shards",
			     cfg->id, copy, *shards);
			return 0;
		}
		if (rv == 0 && resp->error != NULL) {
			Rmq__Error *e = resp->error;
			if (e->code == RMQ__CODE__NOT_LEADER &&
			    e->leader_address != NULL &&
			    e->leader_address[0] != '\0') {
				snprintf(leader, sizeof leader, "%s",
					 e->leader_address);
			} else if (e->code != RMQ__CODE__NOT_LEADER &&
				   e->code != RMQ__CODE__UNAVAILABLE &&
				   e->code != RMQ__CODE__TIMEOUT &&
				   e->code != RMQ__CODE__UNKNOWN_OUTCOME) {
				LOGE("join: %s refused: %s", copy,
				     e->message != NULL ? e->message : "");
				rmq__response__free_unpacked(resp, NULL);
				return RMQ_EINVAL;
			}
		}
		if (resp != NULL) {
			rmq__response__free_unpacked(resp, NULL);
		}
		if (uv_hrtime() / 1000000 > deadline) {
			LOGE("join: no meta leader answered through %s",
			     cfg->join);
			return RMQ_EUNAVAIL;
		}
		if (leader[0] == '\0' && (i + 1) % n == 0) {
			usleep(500 * 1000);
		}
	}
}
