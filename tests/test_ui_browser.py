"""The team stack as a user meets it, in a browser: open the Prefect UI, open the `pipeline`
deployment, start a custom run from its form with one setting changed
(`curate.language.threshold`), wait for it to complete, then find that run in the MLflow UI by the
setting's value. Playwright drives Debian's `chromium` (Playwright's own browser download needs the
internet); the `stack` fixture serves both UIs. The run starts from the session's cache, so only
curation's language step and what follows it run again. It registers new versions and moves the
registry's aliases in the session's folder, so this module sorts last: no test after it reads them.

Screenshots go to the test's tmp folder, or to the folder SMOLFORGE_SCREENSHOTS names
(`SMOLFORGE_SCREENSHOTS=docs` refreshes the README's two: the form and the MLflow run)."""

import copy
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
TERMINAL = ("Completed", "Failed", "Crashed", "Cancelled")


def _prefect(stack: dict, path: str) -> dict:
    with urllib.request.urlopen(f"{stack['prefect']}/api/{path}", timeout=30) as response:
        return json.load(response)


def _form_field(page, *path: str):
    """The input of a field of Prefect's parameter form, found by its section labels as a user
    reads them ("Curate" → "Language" → "Threshold"): the form is rendered from the JSON schema,
    one `.schema-form-property` per field, labelled with the field's title ("(Optional)" when it
    has a default). Each section is the innermost one that holds the rest of the path, so a
    source's own "Language" field is not mistaken for the language-identification section."""

    def label(text: str):
        title = re.compile(rf"^{re.escape(text)}( \(Optional\))?$")
        return page.locator(".schema-form-property__label", has_text=title)

    scope = page
    for depth, title in enumerate(path):
        section = scope.locator(".schema-form-property").filter(has=label(title))
        for rest in path[depth + 1:]:
            section = section.filter(has=label(rest))
        scope = section.last
    return scope.locator("input")


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` binary (Debian package `chromium`; .ci/run installs it)")
def test_a_custom_run_from_the_prefect_form_shows_up_in_mlflow_with_its_setting(stack, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from smolforge.flows.config import load_config

    shots = Path(os.environ.get("SMOLFORGE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    default = load_config("tiny").curate.language.threshold
    changed = round(default - 0.05, 2)
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(60_000)  # a loaded 2-core machine: servers answer slowly
            expect.set_options(timeout=60_000)

            # Prefect: Deployments → pipeline/smolforge → Run → Custom run
            page.goto(f"{stack['prefect']}/deployments")
            row = page.get_by_role("row").filter(has=page.get_by_role("link", name="pipeline", exact=True))
            row.get_by_role("link", name="smolforge", exact=True).click()
            expect(page).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+"))
            deployment_id = re.search(r"/deployment/([0-9a-f-]+)", page.url).group(1)
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("button", name="Custom run").click()
            expect(page).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+/run"))

            submit = page.get_by_role("button", name="Submit")
            expect(submit).to_be_enabled()  # the form has loaded its defaults
            run_name = page.locator(".flow-run-name-input input").input_value()
            assert run_name
            threshold = _form_field(page, "Curate", "Language", "Threshold")
            expect(threshold).to_have_count(1)
            expect(threshold).to_have_value(str(default))  # the form's defaults are the tiny preset
            threshold.fill(str(changed))
            _form_field(page, "Curate", "Language").last.scroll_into_view_if_needed()
            page.screenshot(path=shots / "prefect-custom-run.png")
            submit.click()

            # Back on the deployment's page; its Runs tab lists the new run under its name: open it
            expect(page).to_have_url(re.compile(rf"/deployments/deployment/{deployment_id}(\?|$)"))
            page.goto(f"{stack['prefect']}/deployments/deployment/{deployment_id}?tab=Runs")
            page.get_by_role("link", name=run_name, exact=True).click()
            expect(page).to_have_url(re.compile(r"/flow-run/[0-9a-f-]+"))
            flow_run_id = re.search(r"/flow-run/([0-9a-f-]+)", page.url).group(1)
            badge = page.locator(".state-badge").first
            deadline = time.monotonic() + 1500
            while (state := badge.inner_text().strip()) not in TERMINAL and time.monotonic() < deadline:
                page.wait_for_timeout(5000)
            page.screenshot(path=shots / "prefect-flow-run.png")
            assert state == "Completed", f"flow run {run_name} is {state!r} after {time.monotonic() - started:.0f} s"
            submitted = time.monotonic() - started

            # MLflow: the experiment's runs, searched by the setting's value → the curate run's page
            page.goto(f"{stack['mlflow']}/#/experiments")
            experiment = page.get_by_role("link", name="smolforge", exact=True).get_attribute("href")
            page.goto(f"{stack['mlflow']}/{experiment}/runs")
            assistant = page.get_by_role("button", name="Close")  # MLflow's assistant panel, open on a first visit
            if assistant.count():
                assistant.first.click()
            search = page.get_by_test_id("search-box")
            search.fill(f"params.`curate.language.threshold` = '{changed}'")
            search.press("Enter")
            # the match is the pipeline run's child: MLflow lists the parent, folded; unfold it
            parent = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name="pipeline", exact=True))
            parent.get_by_role("button").click()
            page.get_by_role("link", name="curate", exact=True).click()
            expect(page).to_have_url(re.compile(r"/runs/[0-9a-f]{32}"))
            mlflow_run_id = re.search(r"/runs/([0-9a-f]{32})", page.url).group(1)
            page.get_by_placeholder("Search parameters").fill("language.threshold")
            row = page.get_by_role("row").filter(has_text="curate.language.threshold")
            expect(row).to_have_count(1)
            expect(row).to_contain_text(str(changed))
            row.evaluate("element => element.scrollIntoView({block: 'center'})")
            page.screenshot(path=shots / "mlflow-run.png")
        finally:
            browser.close()

    # What the UIs showed is what the servers hold: the run carries the form's whole config with the
    # one setting changed, and the MLflow run found is its curation's
    deployment = _prefect(stack, f"deployments/{deployment_id}")
    flow_run = _prefect(stack, f"flow_runs/{flow_run_id}")
    expected = copy.deepcopy(deployment["parameters"])
    expected["config"]["curate"]["language"]["threshold"] = changed
    assert flow_run["parameters"] == expected
    client = MlflowClient(tracking_uri=stack["mlflow"])
    curate = client.get_run(mlflow_run_id)
    assert curate.data.tags["smolforge.stage"] == "curate"
    pipeline = client.get_run(curate.data.tags["mlflow.parentRunId"])
    assert pipeline.data.tags["prefect.flow_run_id"] == flow_run_id
    print(f"custom run completed {submitted:.0f} s after opening the UI; whole test {time.monotonic() - started:.0f} s")
