"""kbguard: keep a RAG knowledge base recoverable."""

import os

# unstructured pings its servers when imported and on every partition call, and prints a sales
# notice (to stdout on a terminal, where it would corrupt `--json`) unless these are set. They
# must be in the environment before the first `import unstructured`, in every process, so they
# are set here, where every entry point and every spawned parse worker passes first.
OFFLINE_ENV = {"DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1", "UNSTRUCTURED_DISABLE_NOTICE": "1"}
os.environ.update(OFFLINE_ENV)
