#!/usr/bin/env bash
# Build the HTML docs into docs/_build/html (entry page: docs/_build/html/index.html).
#
#   pip install -e ".[docs]"
#   bash docs/build.sh              # sphinx-build -W: any warning fails the build
#   bash docs/build.sh --execute    # first re-run the tutorials (tutorials/*.md, jupytext) into
#                                   # docs/tutorials/*.ipynb; needs $PERTX_DATA_DIR, trains models
#   bash docs/build.sh --execute papalexi   # only the named tutorial(s)
#
# The build itself never executes notebooks (conf.py: nb_execution_mode = "off"): it renders the
# outputs stored in docs/tutorials/*.ipynb, so it needs neither the data nor a model.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--execute" ]]; then
    shift
    names=("$@")
    if [[ ${#names[@]} -eq 0 ]]; then
        for src in tutorials/*.md; do
            grep -q '^  jupytext:' "$src" && names+=("$(basename "$src" .md)")
        done
    fi
    for name in "${names[@]}"; do
        echo "executing tutorials/$name.md -> docs/tutorials/$name.ipynb"
        started=$(date +%s)
        jupytext --quiet --to ipynb "tutorials/$name.md" -o "docs/tutorials/$name.ipynb"
        # nbclient (a myst-nb dependency) runs it in place, from docs/tutorials/. The kernel draws
        # figures inline only when MPLBACKEND does not force another backend.
        MPLBACKEND=module://matplotlib_inline.backend_inline python - "docs/tutorials/$name.ipynb" <<'PY'
import sys

import nbclient
import nbformat

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
client = nbclient.NotebookClient(
    nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": "docs/tutorials"}}
)
client.execute()
nbformat.write(nb, path)
PY
        echo "  $(( $(date +%s) - started )) s"
    done
fi

started=$(date +%s)
sphinx-build -W --keep-going -q -b html docs docs/_build/html
echo "docs built in $(( $(date +%s) - started )) s: docs/_build/html/index.html"
