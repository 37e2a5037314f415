/* Pure helpers of the raftmq CLI (cli.c), unit-tested in test_client.
 * No I/O; callable from any thread. */
#ifndef RMQ_CLI_UTIL_H
#define RMQ_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Body of message @i of a `publish --count` run: "<prefix>-<i>", padded on
 * the right with '.' up to @size bytes when @size is longer. Writes at most
 * @cap bytes into @out (no terminating NUL needed by callers, but one is
 * added when there is room) and returns the body length, or 0 when @cap is
 * too small. */
size_t cliutil_make_body(char *out, size_t cap, const char *prefix, uint64_t i,
			 size_t size);

/* Parse a non-negative decimal number of seconds ("2", "0.5") into
 * milliseconds. 0 on success, -1 on a malformed value. */
int cliutil_parse_seconds(const char *s, unsigned *ms);

/* Parse an unsigned decimal integer in [min, max]. 0 or -1. */
int cliutil_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

#endif /* RMQ_CLI_UTIL_H */
