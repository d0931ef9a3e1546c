#!/usr/bin/env bash
# Screenshots of the MLflow and Prefect UIs after a real `make run`, into docs/images/ (docs/ui.md shows them).
# Needs Debian's chromium (apt-get install chromium) and Playwright for Python (see below). After `make run`:
#   PW_PYTHON=/tmp/pw/bin/python bash docs/make_ui_screenshots.sh [PROJECT_DIR]
# It starts `mlflow ui` and `prefect server` on 127.0.0.1 over that project's mlflow.db and .prefect/, takes the
# pictures with headless Chromium, and stops both servers.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
proj="$(cd "${1:-$here}" && pwd)"
venv="$here/.venv/bin"
out="$here/docs/images"
mkdir -p "$out"
export PREFECT_HOME="$proj/.prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true
export MLFLOW_DISABLE_TELEMETRY=true

"$venv/mlflow" ui --backend-store-uri "sqlite:///$proj/mlflow.db" --host 127.0.0.1 --port 5055 >/tmp/ui-mlflow.log 2>&1 &
mlflow_pid=$!
PREFECT_UI_API_URL=http://127.0.0.1:4255/api "$venv/prefect" server start --host 127.0.0.1 --port 4255 \
  >/tmp/ui-prefect.log 2>&1 &
prefect_pid=$!
trap 'kill $mlflow_pid $prefect_pid 2>/dev/null || true' EXIT
for url in http://127.0.0.1:5055/health http://127.0.0.1:4255/api/health; do
  for _ in $(seq 120); do curl -sf "$url" >/dev/null && break; sleep 1; done
done

# The pictures: docs/make_ui_screenshots.py with Playwright's Python package (not a project dependency: any Python
# that has it, e.g. `python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright`; no browser download, it drives
# Debian's chromium) closes MLflow's assistant panel and any pop-up before each picture.
"${PW_PYTHON:-python3}" "$here/docs/make_ui_screenshots.py" --mlflow http://127.0.0.1:5055 \
  --prefect http://127.0.0.1:4255 --out "$out"
