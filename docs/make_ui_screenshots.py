"""Screenshots of the MLflow and Prefect UIs over a project's mlflow.db and .prefect/, for docs/ui.md.

Called by docs/make_ui_screenshots.sh once both servers answer. Needs Playwright's Python package (any venv: it is
not a dependency of the project) and Debian's chromium; no browser is downloaded. Every page is loaded, MLflow's
assistant side panel is closed and any pop-up dismissed before the picture, so nothing covers the content.

    python docs/make_ui_screenshots.py --mlflow http://127.0.0.1:5055 --prefect http://127.0.0.1:4255 --out docs/images
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

CLOSE_PANELS = [  # MLflow 3's assistant panel and its other closable overlays, by the UI's component ids
    '[data-component-id="mlflow.assistant.chat_panel.close"]',
    '[data-component-id*="close"][aria-label*="lose"]',
]


def _post(url: str, body: dict) -> dict | list:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def experiment_id(mlflow: str, name: str) -> str:
    found = _get(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
    return found["experiment"]["experiment_id"]


def run_ids(mlflow: str, exp: str, n: int = 12) -> list[str]:
    runs = _post(f"{mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp], "max_results": n})
    return [r["info"]["run_id"] for r in runs.get("runs", [])]


# The columns each experiment's runs table shows (what a user would pick in "Columns"): the comparison at a glance.
COLUMNS = {
    "ipt-pipeline": [
        f"metrics.`{t}/{d}/gain_db`"
        for t, ds in (
            ("sr_x2", "Set5 Set14 B100"),
            ("sr_x3", "Set5 Set14 B100"),
            ("sr_x4", "Set5 Set14 B100"),
            ("denoise_s30", "CBSD68 McMaster"),
            ("denoise_s50", "CBSD68 McMaster"),
            ("derain", "Rain100L"),
        )
        for d in ds.split()
    ],
    "ipt-finetune": [
        "params.`finetune.task`",
        "params.`finetune.steps`",
        "params.`finetune.lr`",
        "params.`finetune.precision`",
        "metrics.`loss`",
        "metrics.`l1`",
        "metrics.`samples_per_s`",
    ],
    "ipt-benchmark": [
        "params.`benchmark.model`",
        "params.`benchmark.tiling`",
        "params.`benchmark.precision`",
        "params.`benchmark.limit`",
        *(f"metrics.`{d}/psnr_y`" for d in ("Set5", "Set14", "B100", "CBSD68", "McMaster", "Rain100L")),
    ],
}


def _table_state(columns: list[str]) -> str:
    return json.dumps(
        {
            "searchFilter": "",
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
            "startTime": "ALL",
            "lifecycleFilter": "Active",
            "datasetsFilter": [],
            "modelVersionFilter": "All Runs",
            "selectedColumns": columns,
            "columnOrder": [],
            "columnWidths": {},
            "runsExpanded": {},
            "runsPinned": [],
            "runsHidden": [],
            "runsVisibilityMap": {},
            "runsHiddenMode": "FIRST_10_RUNS",
            "viewMaximized": False,
            "runListHidden": False,
            "isAccordionReordered": False,
            "useGroupedValuesInCharts": True,
            "hideEmptyCharts": True,
            "groupBy": None,
            "groupsExpanded": {},
            "autoRefreshEnabled": False,
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        }
    )


def init_script(experiments: dict[str, str]) -> str:
    """localStorage before any page script: the classic model-training workflow, the assistant panel closed, each
    experiment's runs table with its comparison columns."""
    items = {"mlflow.workflowType_v1": '"machine_learning"', "mlflow.assistant.panelOpen_v1": "false"}
    items["mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"] = "true"
    for name, exp in experiments.items():
        items[f'MLflowLocalStorage-1.1-ExperimentPage-["{exp}"]-ReactComponentState'] = _table_state(COLUMNS[name])
    return "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items())


def shoot(page, url: str, path: Path, wait_ms: int = 4000) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_timeout(wait_ms)
    for sel in CLOSE_PANELS:
        for el in page.locator(sel).all():
            if el.is_visible():
                el.click()
                page.wait_for_timeout(500)
    page.keyboard.press("Escape")
    page.mouse.move(0, 0)  # no hover tooltip
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    print(f"{path} <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlflow", default="http://127.0.0.1:5055")
    ap.add_argument("--prefect", default="http://127.0.0.1:4255")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    m, p, out = args.mlflow, args.prefect, args.out
    out.mkdir(parents=True, exist_ok=True)
    pipeline, finetune, benchmark = (experiment_id(m, n) for n in ("ipt-pipeline", "ipt-finetune", "ipt-benchmark"))
    flow_runs = _post(
        f"{p}/api/flow_runs/filter",
        {"flows": {"name": {"any_": ["ipt-pipeline"]}}, "sort": "START_TIME_DESC", "limit": 20},
    )
    done = [r for r in flow_runs if r["state_type"] == "COMPLETED" and r["total_run_time"] > 60]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 2000, "height": 1000})
        page.add_init_script(
            init_script({"ipt-pipeline": pipeline, "ipt-finetune": finetune, "ipt-benchmark": benchmark})
        )
        shoot(page, f"{m}/#/experiments/{pipeline}/runs", out / "mlflow_pipeline_runs.png")
        (run,) = run_ids(m, pipeline, 1)
        shoot(page, f"{m}/#/experiments/{pipeline}/runs/{run}", out / "mlflow_pipeline_run.png")
        shoot(page, f"{m}/#/experiments/{finetune}/runs", out / "mlflow_finetune_runs.png")
        shoot(page, f"{m}/#/experiments/{benchmark}/runs", out / "mlflow_benchmark_runs.png")
        ids = json.dumps(run_ids(m, finetune))
        shoot(page, f'{m}/#/compare-runs?runs={ids}&experiments=["{finetune}"]', out / "mlflow_compare_finetune.png")
        shoot(page, f"{m}/#/models", out / "mlflow_models.png")
        shoot(page, f"{m}/#/models/ipt-sr_x2/versions/1", out / "mlflow_model_sr_x2.png")
        if done:
            shoot(page, f"{p}/runs/flow-run/{done[0]['id']}", out / "prefect_pipeline_run.png", wait_ms=6000)
        shoot(page, f"{p}/runs", out / "prefect_runs.png")
        browser.close()


if __name__ == "__main__":
    main()
