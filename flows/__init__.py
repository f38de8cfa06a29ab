"""Prefect flows over the ``colorize`` library.

Prefect's ephemeral API server needs 26-29 s to start on a small 2-core machine, over its 20 s
default: without a longer timeout the very first ``colorize run`` on a fresh machine fails. Set it
here, before Prefect is imported, unless the user has chosen a value.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The ephemeral server's telemetry writes to its SQLite database while the first flow run starts,
# and then logs "database is locked"; a batch tool has no use for it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The library's own warnings (a scan's unreadable metadata, the memory budget reached, a file's
# traceback) go to the flow run's log in Prefect, beside the shard's.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "colorize")
# Outside a flow run (the library called directly) those records go to the console alone, quietly.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
