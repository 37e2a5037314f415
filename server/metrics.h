/* metrics: the node's counters and latency histograms, and a writer for
 * the Prometheus text exposition format (version 0.0.4).
 *
 * Counters are plain integers bumped on the loop thread where the event
 * happens (a few adds per request: no atomics, no locks). They are read
 * only on the loop thread too: http.c asks the loop to render a document
 * (admin.c), it never reads them itself.
 *
 * Latency histograms have fixed buckets, 1-2.5-5 per decade from 100 us to
 * 10 s, which is what Prometheus' histogram_quantile() needs; recording is
 * a short scan over 16 bounds.
 *
 * Threads: loop thread only. The sbuf helpers have no state of their own. */
#ifndef RMQ_METRICS_H
#define RMQ_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LAT_BUCKETS 16 /* finite upper bounds; +Inf is the total */

struct lat_hist {
	uint64_t counts[LAT_BUCKETS + 1]; /* not cumulative; last is > 10 s */
	uint64_t total;
	uint64_t sum_ns;
};

/* The upper bound of bucket @i (< LAT_BUCKETS), in nanoseconds. */
uint64_t lat_bound_ns(unsigned i);
void lat_record(struct lat_hist *h, uint64_t ns);

/* Node-wide counters; see docs/operations.md for each metric. */
struct metrics {
	uint64_t conns_accepted;
	uint64_t conns_open;
	uint64_t bytes_in;       /* client port, read */
	uint64_t bytes_out;      /* client port, written */
	uint64_t publishes;      /* publish requests received */
	uint64_t confirms;       /* publishes answered with a confirm */
	uint64_t duplicates;     /* ...of which were retries already stored */
	uint64_t publish_errors; /* publishes answered with an error */
	uint64_t deliveries;
	uint64_t redeliveries; /* ...flagged redelivered */
	uint64_t acks;         /* messages acked */
	uint64_t requeues;     /* messages nacked with requeue */
	uint64_t drops;        /* messages nacked without requeue */
};

/* A growable text buffer. On allocation failure it stops growing and
 * remembers it (@failed); the caller checks once at the end. */
struct sbuf {
	char *data; /* owned, NUL-terminated while !failed */
	size_t len, cap;
	bool failed;
};

void sbuf_init(struct sbuf *b);
void sbuf_free(struct sbuf *b);
void sbuf_printf(struct sbuf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Append @s escaped as a Prometheus label value (\\, \" and \n). */
void sbuf_label_value(struct sbuf *b, const char *s);
/* Hand the text over: returns it (the caller frees it) and resets @b;
 * NULL if an allocation failed. */
char *sbuf_take(struct sbuf *b, size_t *len);

/* Prometheus helpers. @labels is either "" or a complete label list
 * without braces, e.g. "shard=\"1\"" (already escaped). */
void prom_help(struct sbuf *b, const char *name, const char *type,
	       const char *help);
void prom_u64(struct sbuf *b, const char *name, const char *labels, uint64_t v);
void prom_double(struct sbuf *b, const char *name, const char *labels,
		 double v);
/* The _bucket, _sum (seconds) and _count series of @h. */
void prom_hist(struct sbuf *b, const char *name, const char *labels,
	       const struct lat_hist *h);

#endif /* RMQ_METRICS_H */
