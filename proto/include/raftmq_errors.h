/* raftmq error codes, shared by the server, the client library and the wire
 * protocol. Functions return 0 on success or one of these negative values
 * (libuv's convention). Values are append-only. */
#ifndef RAFTMQ_ERRORS_H
#define RAFTMQ_ERRORS_H

enum {
	RMQ_OK = 0,
	RMQ_ENOMEM = -1,      /* out of memory */
	RMQ_EINVAL = -2,      /* invalid argument or request */
	RMQ_ENOTFOUND = -3,   /* no such queue (or consumer) */
	RMQ_EEXISTS = -4,     /* queue exists with other settings */
	RMQ_ETOOLARGE = -5,   /* message or frame over the limit */
	RMQ_EFULL = -6,       /* queue full, store map full or disk full */
	RMQ_EIO = -7,         /* local I/O failure */
	RMQ_ENOTLEADER = -8,  /* this node does not lead the shard */
	RMQ_ELEADERLOST = -9, /* outcome unknown: it may still commit */
	RMQ_ESHUTDOWN = -10,  /* closing */
	RMQ_ETIMEDOUT = -11,  /* no answer within the timeout */
	RMQ_EPROTO = -12,     /* malformed frame or protocol violation */
	RMQ_ECONNECT = -13,   /* could not reach any server */
	RMQ_EUNAVAIL = -14,   /* no leader / not ready: retry later */
	RMQ_ECORRUPT = -15,   /* corrupt data on disk */
	RMQ_EINTERNAL = -16,  /* a bug or an unexpected library error */
};

#endif /* RAFTMQ_ERRORS_H */
