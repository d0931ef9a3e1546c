#!/usr/bin/env bash
# Screenshots of the MLflow and Prefect UIs after a real `make run`, into docs/images/ (docs/ui.md shows them).
# Needs Debian's chromium (apt-get install chromium). Run from the project root after `make run`:
#   bash docs/make_ui_screenshots.sh [PROJECT_DIR]
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

shot() {  # shot NAME URL
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
    --virtual-time-budget=15000 --screenshot="$out/$1.png" "$2" >/dev/null 2>&1
  echo "$out/$1.png <- $2"
}

api=http://127.0.0.1:4255/api
py="$venv/python"
exp_id() {  # the id of an MLflow experiment by name
  curl -sf "http://127.0.0.1:5055/api/2.0/mlflow/experiments/get-by-name?experiment_name=$1" |
    "$py" -c 'import json,sys; print(json.load(sys.stdin)["experiment"]["experiment_id"])'
}
pipeline=$(exp_id ipt-pipeline)
finetune=$(exp_id ipt-finetune)
benchmark=$(exp_id ipt-benchmark)
run_ids() {  # the run ids of an experiment, as a JSON list
  curl -sf -X POST http://127.0.0.1:5055/api/2.0/mlflow/runs/search -H 'Content-Type: application/json' \
    -d "{\"experiment_ids\": [\"$1\"], \"max_results\": 12}" |
    "$py" -c 'import json,sys; print(json.dumps([r["info"]["run_id"] for r in json.load(sys.stdin)["runs"]]))'
}
shot mlflow_pipeline_runs "http://127.0.0.1:5055/#/experiments/$pipeline/runs"
shot mlflow_finetune_runs "http://127.0.0.1:5055/#/experiments/$finetune/runs"
shot mlflow_benchmark_runs "http://127.0.0.1:5055/#/experiments/$benchmark/runs"
shot mlflow_compare_finetune "http://127.0.0.1:5055/#/compare-runs?runs=$(run_ids "$finetune")&experiments=[\"$finetune\"]"
shot mlflow_models "http://127.0.0.1:5055/#/models"
shot mlflow_model_sr_x2 "http://127.0.0.1:5055/#/models/ipt-sr_x2/versions/1"

flow_run=$(curl -sf -X POST "$api/flow_runs/filter" -H 'Content-Type: application/json' \
  -d '{"flows": {"name": {"any_": ["ipt-pipeline"]}}, "sort": "START_TIME_DESC", "limit": 20}' |
  "$py" -c 'import json,sys; runs=[r for r in json.load(sys.stdin) if r["state_type"]=="COMPLETED" and r["total_run_time"]>60]; print(runs[0]["id"])')
shot prefect_pipeline_run "http://127.0.0.1:4255/runs/flow-run/$flow_run"
shot prefect_runs "http://127.0.0.1:4255/runs"
