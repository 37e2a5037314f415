/* Pure helpers of the raftmq CLI. See cli_util.h. */
#include "cli_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t cliutil_make_body(char *out, size_t cap, const char *prefix, uint64_t i,
			 size_t size)
{
	int n = snprintf(out, cap, "%s-%llu", prefix, (unsigned long long)i);
	size_t len;

	if (n < 0 || (size_t)n >= cap) {
		return 0;
	}
	len = (size_t)n;
	if (size > len) {
		if (size > cap) {
			return 0;
		}
		memset(out + len, '.', size - len);
		len = size;
		if (len < cap) {
			out[len] = '\0';
		}
	}
	return len;
}

int cliutil_parse_seconds(const char *s, unsigned *ms)
{
	char *end;
	double v;

	if (s == NULL || *s == '\0') {
		return -1;
	}
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !(v >= 0) || v > 4000000.0) {
		return -1;
	}
	*ms = (unsigned)(v * 1000.0 + 0.5);
	return 0;
}

int cliutil_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9') {
		return -1;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max) {
		return -1;
	}
	*out = v;
	return 0;
}
