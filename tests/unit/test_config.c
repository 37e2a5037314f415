/* Tests of server/config.c: the example configuration shipped in deploy/
 * loads as it is, the admin HTTP keys are checked at start-up, flags win
 * over the file, the rules for a node that joins a running cluster.
 * (That every key config.c parses is documented in the
 * example is checked by tests/deploy/check_config_keys.py.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "raftmq_errors.h"

#define EXAMPLE RAFTMQ_SOURCE_DIR "/deploy/raftmqd.example.ini"

static int load(struct config *c, int argc, char **argv)
{
	config_defaults(c);
	return config_load(c, argc, argv);
}

static void example_ini_loads_with_every_key(void **state)
{
	struct config c;
	char *argv[] = {"raftmqd", "--config", EXAMPLE, NULL};
	(void)state;

	assert_int_equal(load(&c, 3, argv), 0);
	assert_int_equal(c.id, 1);
	assert_string_equal(c.http_address, "10.0.0.1:7301");
	assert_int_equal(c.ready_max_lag, 100);
	assert_int_equal(c.n_members, 3);
}

static void http_address_bad_fails_start(void **state)
{
	struct config c;
	char *bad[] = {"localhost:7301", "10.0.0.1", "10.0.0.1:0",
		       "10.0.0.1:70000", "10.0.0.1:http"};
	(void)state;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char *argv[] = {"raftmqd",        "--config", EXAMPLE,
				"--http-address", bad[i],     NULL};
		assert_int_equal(load(&c, 5, argv), RMQ_EINVAL);
	}
}

static void http_address_empty_disables_http(void **state)
{
	struct config c;
	char *argv[] = {"raftmqd",        "--config", EXAMPLE,
			"--http-address", "",         NULL};
	(void)state;

	assert_int_equal(load(&c, 5, argv), 0);
	assert_string_equal(c.http_address, "");
}

static void ready_max_lag_from_file(void **state)
{
	struct config c;
	char path[] = "/tmp/raftmq-test-config-XXXXXX";
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");
	char *argv[] = {"raftmqd", "--config", path, NULL};
	(void)state;

	assert_non_null(f);
	fprintf(f, "[node]\nid = 2\nclient_address = 127.0.0.1:1\n"
		   "ready_max_lag = 0\n[cluster]\n"
		   "initial_cluster = 2@127.0.0.1:2\n");
	fclose(f);
	assert_int_equal(load(&c, 3, argv), 0);
	assert_int_equal(c.ready_max_lag, 0);
	assert_string_equal(c.http_address, "");
	remove(path);
}

static int load_c(struct config *c, int argc, const char **argv)
{
	return load(c, argc, (char **)argv);
}

static void config_join_without_initial_cluster_accepted(void **state)
{
	const char *argv[] = {"raftmqd",
			      "--id",
			      "4",
			      "--client-address",
			      "127.0.0.1:7104",
			      "--peer-address",
			      "127.0.0.1:7204",
			      "--join",
			      "127.0.0.1:7101,127.0.0.1:7102"};
	struct config c;
	(void)state;
	assert_int_equal(load_c(&c, 9, argv), 0);
	assert_string_equal(c.join, "127.0.0.1:7101,127.0.0.1:7102");
	assert_int_equal(c.n_members, 0);
}

static void config_no_join_no_initial_cluster_refused(void **state)
{
	const char *argv[] = {
		"raftmqd",          "--id",           "4",
		"--client-address", "127.0.0.1:7104", "--peer-address",
		"127.0.0.1:7204"};
	struct config c;
	(void)state;
	assert_int_equal(load_c(&c, 7, argv), RMQ_EINVAL);
}

static void config_join_needs_peer_address(void **state)
{
	/* Without initial_cluster nothing names the peer address. */
	const char *argv[] = {"raftmqd",          "--id",           "4",
			      "--client-address", "127.0.0.1:7104", "--join",
			      "127.0.0.1:7101"};
	struct config c;
	(void)state;
	assert_int_equal(load_c(&c, 7, argv), RMQ_EINVAL);
}

static void config_bad_initial_cluster_with_join_refused(void **state)
{
	const char *argv[] = {
		"raftmqd",           "--id",           "4",
		"--client-address",  "127.0.0.1:7104", "--peer-address",
		"127.0.0.1:7204",    "--join",         "127.0.0.1:7101",
		"--initial-cluster", "garbage"};
	struct config c;
	(void)state;
	assert_int_equal(load_c(&c, 11, argv), RMQ_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(example_ini_loads_with_every_key),
		cmocka_unit_test(http_address_bad_fails_start),
		cmocka_unit_test(http_address_empty_disables_http),
		cmocka_unit_test(ready_max_lag_from_file),
		cmocka_unit_test(config_join_without_initial_cluster_accepted),
		cmocka_unit_test(config_no_join_no_initial_cluster_refused),
		cmocka_unit_test(config_join_needs_peer_address),
		cmocka_unit_test(config_bad_initial_cluster_with_join_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
