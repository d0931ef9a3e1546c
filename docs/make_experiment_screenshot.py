"""The MLflow compare view of an experiment's cells (docs/experiments.md), after `make experiment EXP=<name>`.

Starts nothing: point it at a running `make mlflow-ui` (or `mlflow ui` on the store the sweep logged to). Needs
Playwright's Python package and Debian's chromium, as docs/make_ui_screenshots.py (whose helpers it uses).

    python docs/make_experiment_screenshot.py --mlflow http://127.0.0.1:5055 --experiment derain_loss
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_ui_screenshots import _post, experiment_id, shoot  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlflow", default="http://127.0.0.1:5055")
    ap.add_argument("--experiment", default="derain_loss", help="the experiment file's name (MLflow: exp-<name>)")
    ap.add_argument("--out", type=Path, default=Path("docs/images/mlflow_experiment_compare.png"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exp = experiment_id(a.mlflow, f"exp-{a.experiment}")
    found = _post(
        f"{a.mlflow}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp], "filter": "tags.`ipt.role` = 'cell'", "max_results": 50},
    )
    ids = json.dumps([r["info"]["run_id"] for r in found.get("runs", [])])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1800, "height": 1400})
        page.add_init_script(
            'localStorage.setItem("mlflow.workflowType_v1", "\\"machine_learning\\"");'
            'localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");'
        )
        shoot(page, f'{a.mlflow}/#/compare-runs?runs={ids}&experiments=["{exp}"]', a.out, wait_ms=6000)
        browser.close()


if __name__ == "__main__":
    main()
