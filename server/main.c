/* raftmqd: a raftmq node. See docs/operations.md. */
#include "config.h"
#include "server.h"

int main(int argc, char **argv)
{
	struct config cfg;
	config_defaults(&cfg);
	int rv = config_load(&cfg, argc, argv);
	if (rv == 1) {
		return 0;
	}
	if (rv != 0) {
		return 2;
	}
	return node_run(&cfg);
}
