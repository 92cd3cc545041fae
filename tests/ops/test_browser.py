"""The UI in a real browser (headless Chromium from the system packages, driven by
Playwright): find the pipeline deployment, open its custom-run form, change a parameter
(one more override), submit; the flow run it creates completes with that parameter."""

from __future__ import annotations

import polars as pl

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]  # fmt: skip
OVERRIDE = "tag.escape_brackets=true"


def test_custom_run_from_the_form_completes(ops_api):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            _submit_custom_run(browser.new_page(), ops_api.url)
            flow_run_id = _created_run()  # the browser stays open until the request is made
        finally:
            browser.close()
    flow_run = _wait(flow_run_id)
    assert flow_run.state.is_completed(), flow_run.state.message
    assert flow_run.parameters["overrides"] == [*ops_api.overrides, OVERRIDE]
    captions = pl.read_parquet(ops_api.demo / "run" / "tag" / "captions.parquet")
    assert captions["caption"].str.contains(r"\(", literal=True).any()  # escaped brackets


def _submit_custom_run(page, url: str) -> None:
    """Deployments -> the pipeline's deployment -> Run -> Custom run -> one more override
    -> Submit. Prefect's server on SQLite answers 503 now and then while other writers
    hold the database (SQLITE_BUSY_SNAPSHOT): its Python client retries, the UI shows
    "Something went wrong" and the user submits again, as this does (3 tries)."""
    from playwright.sync_api import expect

    page.set_default_timeout(30_000)
    for _ in range(3):
        page.goto(f"{url}/deployments")
        page.locator("tr", has_text="pipeline").get_by_role("link", name="kohaku").click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()
        form = page.get_by_text("overrides (Optional)")
        form.wait_for()
        items = page.locator("textarea")
        before = items.count()
        page.get_by_role("button", name="Add item").click()
        expect(items).to_have_count(before + 1)  # the new, empty item
        items.last.fill(OVERRIDE)
        expect(items.last).to_have_value(OVERRIDE)
        page.get_by_role("button", name="Submit").click()
        failed = page.get_by_text("Something went wrong trying to create a flow run")
        expect(failed.or_(page.get_by_text("Upcoming")).first).to_be_visible()
        if not failed.count():
            return  # back on the deployment's page: created
    raise AssertionError("the form could not create the flow run")


def _created_run(timeout: float = 30):
    """The flow run the form created: the pipeline deployment's run with the override."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from tests.prefect_server import deployment

    # the session's other flow tests share this server: ask for this deployment's runs
    ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment("pipeline/kohaku").id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            made = [r for r in client.read_flow_runs(deployment_filter=ours)
                    if OVERRIDE in (r.parameters.get("overrides") or [])]  # fmt: skip
            if made:
                assert len(made) == 1, made
                return made[0].id
            time.sleep(0.5)
    raise TimeoutError("the form created no flow run")


def _wait(flow_run_id, timeout: float = 180):
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not finish")
