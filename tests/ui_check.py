"""The browser check: what an operator sees in Prefect's UI, looked at in a real browser (Playwright driving the
Chromium Debian packages; `pip install -e .[ui]`, `apt-get install chromium`). Run before each release; it is not
part of the test suite (about two minutes, a browser):

    .venv/bin/python tests/ui_check.py [--out DIR] [--chromium /usr/bin/chromium]

It follows the README's server path on a throwaway Prefect server: a process work pool and worker, `prefect deploy`
of deployments/prefect.yaml, a served simulated cluster. It runs the rolling-upgrade deployment into a window that
is already over, then the full-upgrade deployment until its post-OS steps pause for the approval, and looks at:
the paused run's page and its approval form, the parent run that waits on it, the deployment's Runs tab (the
window-ended run listed under the UI's default filter) and the post-OS run's graph after the approval. Prints a
line per check and the screenshots' paths; exits 0 when every check passed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hciupgrade.sim.harness import PASSWORD_ENV  # noqa: E402
from hciupgrade.sim.scenario import make_scenario  # noqa: E402
from tests.conftest import serve_cluster  # noqa: E402
from tests.services import PREFECT, PrefectServer, stop  # noqa: E402

FAST = {"poll_seconds": 10, "retry_delay_seconds": 0.1, "FeatureUpdateRebootTimeoutMinutes": 600,
        "RebootTimeoutMinutes": 120, "install_timeout_minutes": 1200}
RESULTS: list[tuple[str, bool]] = []


def check(what: str, ok: bool) -> None:
    RESULTS.append((what, ok))
    print(f"{'ok    ' if ok else 'FAILED'} {what}", flush=True)


def run_deployment(api: str, name: str, parameters: dict) -> str:
    deployment = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
    created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters},
                         timeout=10)
    created.raise_for_status()
    return created.json()["id"]


def wait_for(api: str, flow_run_id: str, types: tuple[str, ...], timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state"]["type"] in types:
            return run
        time.sleep(1)
    raise SystemExit(f"flow run {flow_run_id} did not reach {types}: {run['state']}")


def paused_run(api: str, timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}},
                          timeout=10).json()
        if runs:
            return runs[0]
        time.sleep(1)
    raise SystemExit("no flow run paused for its approval")


def shows(page, text: str, shot: Path, timeout: float = 30_000) -> bool:  # noqa: ANN001 - a Playwright page
    """Whether `text` appears on the page within the timeout; the screenshot is taken either way."""
    from playwright.sync_api import TimeoutError as Timeout

    try:
        page.get_by_text(text).first.wait_for(timeout=timeout)
        return True
    except Timeout:
        return False
    finally:
        page.screenshot(path=str(shot), full_page=True)


def look(chromium: str, ui: str, api: str, out: Path, window_run: str, parent: str, paused: dict) -> None:
    """The paused run, its form and its parent, in the browser (before the approval)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{ui}/runs/flow-run/{paused['id']}")
        page.get_by_text("Paused").first.wait_for(timeout=30_000)
        page.screenshot(path=str(out / "paused-run.png"), full_page=True)
        check(f"the paused run's page ({paused['name']}) shows it Paused", True)
        page.get_by_role("button", name="Resume").first.click()
        page.get_by_text("Cannot be undone").first.wait_for(timeout=30_000)
        page.screenshot(path=str(out / "approval-form.png"), full_page=True)
        form = page.locator("body").inner_text()
        check("the approval form says each step cannot be undone", form.count("Cannot be undone") >= 2)
        switches = page.get_by_role("switch")
        on = [i for i in range(switches.count()) if switches.nth(i).is_checked()]
        check(f"the form's {switches.count()} toggles all start off", switches.count() >= 2 and not on)

        state = httpx.get(f"{api}/flow_runs/{parent}", timeout=10).json()["state"]
        check(f"the parent run is Running with what waits as its message ({state['message'][:70]}...)",
              state["type"] == "RUNNING" and state["message"].startswith("awaiting approval in post-upgrade-"))
        page.goto(f"{ui}/runs/flow-run/{parent}")
        page.get_by_text("Artifacts", exact=True).first.click()
        check("the parent run's artifacts say what waits", shows(page, "the paused run awaiting an approval",
                                                                 out / "parent-run-artifacts.png"))

        deployment = httpx.get(f"{api}/deployments/name/rolling-upgrade/rolling-upgrade-hci-demo", timeout=10).json()
        page.goto(f"{ui}/deployments/deployment/{deployment['id']}?tab=Runs")
        page.get_by_text("upgrade-hci-demo").first.wait_for(timeout=30_000)
        page.screenshot(path=str(out / "deployment-runs.png"), full_page=True)
        check("the deployment's Runs tab lists the window-ended run", "upgrade-hci-demo" in page.content())
        page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run")
        listed = shows(page, "PathToSetupMedia", out / "run-form.png")
        text = page.locator("body").inner_text()
        check("the Run form titles the options as CAU writes them and hides the engine's settings",
              listed and "MaxFailedNodes" in text and "Poll seconds" not in text and "Run id" not in text)
        browser.close()


def look_after(chromium: str, ui: str, out: Path, post_run: dict) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{ui}/runs/flow-run/{post_run['id']}")
        page.get_by_text("Completed").first.wait_for(timeout=30_000)
        time.sleep(2)  # the graph draws after the page
        page.screenshot(path=str(out / "post-upgrade-run.png"), full_page=True)
        page.get_by_text("Task Runs", exact=True).first.click()
        check("the post-OS run lists a task run per step", shows(page, "functional-level",
                                                                 out / "post-upgrade-task-runs.png")
              and "test-cluster" in page.content())
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("ui-check"), help="where the screenshots go")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium's executable")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hci-ui-check-"))
    server = PrefectServer(tmp / "prefect")
    server.start()
    api, env = server.api, server.env
    ui = api.removesuffix("/api")
    worker = None
    try:
        import subprocess

        subprocess.run([*PREFECT, "work-pool", "create", "hci-upgrade-process", "--type", "process"], env=env,
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
        scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=5000, knobs={"second_hop": "allowed"})
        with serve_cluster(scenario, tmp, {}) as (inventory, sim_env, _):
            worker_env = {**sim_env, **env, PASSWORD_ENV: sim_env[PASSWORD_ENV], "HCI_UPGRADE_CHECKOUT": str(ROOT),
                          "HCI_UPGRADE_HOME": str(tmp / "records")}
            worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "hci-upgrade-process"],
                                      env=worker_env, cwd=tmp, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            window = run_deployment(api, "rolling-upgrade/rolling-upgrade-hci-demo",
                                    {"inventory": str(inventory), "options": {**FAST, "StopAfter": "00:00:01"}})
            ended = wait_for(api, window, ("COMPLETED", "FAILED", "CRASHED"))
            check(f"a run past its window ends Completed with 'window ended' ({ended['state']['message'][:60]})",
                  ended["state"]["type"] == "COMPLETED" and ended["state"]["message"].startswith("window ended"))
            parent = run_deployment(api, "full-upgrade/full-upgrade-hci-demo",
                                    {"inventory": str(inventory), "options": FAST})
            paused = paused_run(api)
            look(args.chromium, ui, api, args.out, window, parent, paused)
            httpx.post(f"{api}/flow_runs/{paused['id']}/resume", json={"run_input": {
                "approver": "ui-check", "reason": "release check", "functional_level": True,
                "storage_pool": True}}, timeout=10).raise_for_status()
            done = wait_for(api, parent, ("COMPLETED", "FAILED", "CRASHED"))
            check(f"after the approval the whole path completes ({done['state']['type']})",
                  done["state"]["type"] == "COMPLETED")
            look_after(args.chromium, ui, args.out, paused)
    finally:
        if worker is not None:
            stop(worker)
        server.stop()
    failed = [what for what, ok in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed; screenshots in {args.out.resolve()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
