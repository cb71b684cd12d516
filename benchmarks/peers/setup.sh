#!/usr/bin/env bash
# The peers' own venv (LangChain's indexing API, LlamaIndex's IngestionPipeline, qdrant-client),
# kept apart from kbguard's so neither changes the other's dependencies. Idempotent.
#   bash benchmarks/peers/setup.sh            # -> benchmarks/data/peers-venv
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(realpath -m "${PEERS_VENV:-$here/../data/peers-venv}")
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -c "$here/constraints.txt" -r "$here/requirements.txt"
# a GPU stack would mean a dependency slipped past the constraint: refuse the venv
if "$venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(nvidia-|torch==)' ; then
  echo "setup.sh: torch or CUDA packages were installed into $venv; remove the venv" >&2
  exit 1
fi
"$venv/bin/python" -c "import langchain_core.indexing, langchain_classic.indexes, langchain_qdrant, llama_index.core.ingestion, llama_index.vector_stores.qdrant"
echo "$venv"
