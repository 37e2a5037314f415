/* Unit tests for server/config.c: the command line and INI keys of
 * raftmqd, here the rules for a node that joins a running cluster. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "raftmq_errors.h"

static int load(struct config *c, int argc, const char **argv)
{
	config_defaults(c);
	return config_load(c, argc, (char **)argv);
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
	assert_int_equal(load(&c, 9, argv), 0);
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
	assert_int_equal(load(&c, 7, argv), RMQ_EINVAL);
}

static void config_join_needs_peer_address(void **state)
{
	/* Without initial_cluster nothing names the peer address. */
	const char *argv[] = {"raftmqd",          "--id",           "4",
			      "--client-address", "127.0.0.1:7104", "--join",
			      "127.0.0.1:7101"};
	struct config c;
	(void)state;
	assert_int_equal(load(&c, 7, argv), RMQ_EINVAL);
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
	assert_int_equal(load(&c, 11, argv), RMQ_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(config_join_without_initial_cluster_accepted),
		cmocka_unit_test(config_no_join_no_initial_cluster_refused),
		cmocka_unit_test(config_join_needs_peer_address),
		cmocka_unit_test(config_bad_initial_cluster_with_join_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
