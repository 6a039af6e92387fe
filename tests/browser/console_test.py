"""Browser test of the web console (`/console`) in headless Chromium, driven by Playwright.

Usage: console_test.py BASE_URL --predict-key KEY --admin-key KEY --data california_housing.csv
           --mlops "MLOPS --home HOME" --store HOME/store [--screenshots DIR]
Needs served california_housing and markup_probe models (tests/browser/markup_probe.schema.toml,
whose category values are HTML and script), the admin key's name `console-admin`, and the
server's prediction log on. Checks, as a user would see them:
  - a wrong key shows a clear message and no page;
  - the predict key lists the model and a form generated from its schema, every input labelled;
    an invalid field shows the API's message beside it; a valid record shows the prediction, a
    bar per feature contribution and the curl command;
  - category values containing <script> or an <img onerror> show as text and never run;
  - with the admin key, after a window of 300 predictions whose median_income is shifted and a
    monitor run: the history page lists them, and its CSV export equals the API's pages for the
    same filter, row for row; the monitoring page flags median_income with its histograms;
  - promoting from the models page (after the confirmation) adds the audit entry, under the
    key's name; the training, A/B and batch-job pages show their data (a batch job submitted
    from the page runs to success);
  - keyboard: the pages are reached from the navigation with Tab and Enter; the first page is
    under 150 KB; nothing is wider than a 360 px screen; no script error and no CSP violation.
Exits 1 with the failed checks. Screenshots of each page go to --screenshots (docs/console when
refreshing the README's). Chromium: MLOPS_CHROMIUM, else /usr/bin/chromium, else
/usr/bin/google-chrome (launched with executable_path: Playwright downloads no browser).
"""

import argparse
import csv
import io
import json
import os
import random
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright


def chromium_path():
    for path in (os.environ.get("MLOPS_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/google-chrome"):
        if path and os.path.exists(path):
            return path
    sys.exit("console_test: no Chromium (apt-get install chromium, or set MLOPS_CHROMIUM)")


def call(base, key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                     headers={"x-api-key": key, "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def shifted_window(base, key, data):
    """Sends 300 real rows with median_income doubled (capped inside the schema's range)."""
    with open(data, newline="") as f:
        rows = list(csv.DictReader(f))
    random.seed(7)
    records = []
    for row in random.sample(rows, 300):
        record = {k: (v if k == "ocean_proximity" else float(v)) for k, v in row.items()
                  if k != "median_house_value" and v != ""}
        record["median_income"] = min(record["median_income"] * 2 + 3, 14.9)
        records.append(record)
    answer = call(base, key, "POST", "/v1/models/california_housing/predict", records)
    return answer["request_id"]


def api_pages(base, key, query):
    """Every row the page route returns for a filter, following the cursors."""
    rows, cursor = [], None
    while True:
        q = dict(query, limit="1000")
        if cursor:
            q["cursor"] = cursor
        page = call(base, key, "GET", "/v1/models/california_housing/predictions?" + urllib.parse.urlencode(q))
        rows += page["predictions"]
        cursor = page.get("next_cursor")
        if not cursor:
            return rows


def same_row(api, exported):
    """Whether a CSV row holds exactly the API row's values."""
    def value(v):
        return "" if v is None else (v if isinstance(v, str) else json.dumps(v))
    expected = {k: value(api.get(k)) for k in
                ["at", "request_id", "record", "model", "version", "variant", "output", "latency_us", "actual"]}
    expected.update({k: value(v) for k, v in api["input"].items()})
    for k, v in expected.items():
        got = exported.get(k, "")
        numeric = k not in ("at", "request_id", "model", "variant", "ocean_proximity")
        if numeric and v and got:
            if float(v) != float(got):
                return f"{k}: API {v}, CSV {got}"
        elif v != got:
            return f"{k}: API {v!r}, CSV {got!r}"
    return None


def snap(page, directory, name):
    """A screenshot of the page at a laptop's width (the test itself runs at 360 px)."""
    if directory:
        os.makedirs(directory, exist_ok=True)
        page.set_viewport_size({"width": 1100, "height": 900})
        page.wait_for_timeout(200)
        page.screenshot(path=os.path.join(directory, f"{name}.png"))
        page.set_viewport_size({"width": 360, "height": 800})


def goto(page, name, link):
    """Opens a page from the navigation with the keyboard."""
    page.get_by_role("link", name=link, exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.locator(f"#{name}")).to_be_visible()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--predict-key", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--mlops", required=True)
    parser.add_argument("--store", required=True, help="the server's store directory (batch inputs go under it)")
    parser.add_argument("--screenshots")
    args = parser.parse_args()
    base, key, admin, shots = args.base.rstrip("/"), args.predict_key, args.admin_key, args.screenshots
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 360, "height": 800}, accept_downloads=True)
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        # Console errors count (a CSP violation is one), but not the browser's own line for a
        # response with an error status: this test asks for a 403 and a 400 on purpose.
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None,
        )
        first_page = []
        page.on("response", lambda r: first_page.append(len(r.body())) if r.url.startswith(f"{base}/console") else None)
        page.goto(f"{base}/console")
        page.wait_for_load_state("networkidle")
        size = sum(first_page)
        if size >= 150_000:
            problems.append(f"the first page is {size} bytes, over 150 KB")
        else:
            print(f"ok   the first page (HTML, script, style) is {size} bytes")

        # A wrong key: a clear message, no page.
        page.get_by_label("API key").fill("mlk_000000000000_wrong")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#message")).to_contain_text("refused")
        expect(page.locator("#predict")).to_be_hidden()
        print("ok   a wrong key shows: " + page.locator("#message").inner_text())

        # The predict key: the model and its form, every input labelled.
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#model")).to_have_value("california_housing")
        inputs = page.locator("#fields [data-field]")
        expect(inputs.first).to_be_visible()
        count = inputs.count()
        for i in range(count):
            field = inputs.nth(i).get_attribute("data-field")
            expect(page.get_by_label(field, exact=True)).to_have_count(1)
        print(f"ok   the form has {count} labelled fields from the schema")

        # An invalid field: the API's message beside it.
        page.get_by_label("median_income", exact=True).fill("not a number")
        page.get_by_role("button", name="Predict").click()
        income = page.get_by_label("median_income", exact=True)
        expect(income).to_have_attribute("aria-invalid", "true")
        error_id = income.get_attribute("aria-describedby")
        expect(page.locator(f"#{error_id}")).not_to_be_empty()
        print("ok   an invalid field shows beside it: " + page.locator(f"#{error_id}").inner_text())

        # A valid record: the prediction, its contributions, the curl command.
        income.fill("8.3252")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#prediction")).to_contain_text("california_housing v")
        bars = page.locator("#contributions svg rect")
        expect(bars.first).to_be_visible()
        if bars.count() < 9:
            problems.append(f"{bars.count()} contribution bars, expected one per feature (>= 9)")
        expect(page.locator("#curl")).to_contain_text("curl -s")
        expect(income).not_to_have_attribute("aria-invalid", "true")
        print(f"ok   predicted {page.locator('#prediction').inner_text()!r} with {bars.count()} contribution bars")
        snap(page, shots, "predict")

        # Category values that are markup (the markup_probe model) show as text and never run.
        page.locator("#model").select_option("markup_probe")
        kind = page.get_by_label("kind", exact=True)
        expect(kind).to_be_visible()
        options = kind.locator("option").all_inner_texts()
        expected = ["plain", "<script>window.__mlopsXss = 1</script>", '<img src=x onerror="window.__mlopsXss = 2">']
        if options != expected:
            problems.append(f"the categories show as {options}, not as the text {expected}")
        for value in expected[1:]:
            kind.select_option(value)
            page.get_by_role("button", name="Predict").click()
            expect(page.locator("#prediction")).to_contain_text("markup_probe v")
            expect(page.locator("#curl")).to_contain_text("__mlopsXss")
        ran = page.evaluate("window.__mlopsXss")
        injected = page.locator("#fields img, #result img, #fields script").count()
        if ran is not None or injected:
            problems.append(f"markup from the API ran or was parsed (marker {ran}, {injected} elements)")
        else:
            print("ok   category values with <script> and <img onerror> show as text; nothing ran")

        # The admin key from here on, on the housing model.
        page.locator("#model").select_option("california_housing")
        page.get_by_label("API key").fill(admin)
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#message")).to_contain_text("Key accepted")

        # A shifted window: 300 predictions, flushed to the log, then a monitor run.
        request_id = shifted_window(base, admin, args.data)
        deadline = time.time() + 60
        while time.time() < deadline:
            logged = call(base, admin, "GET", "/v1/models/california_housing/predictions?limit=1000")
            if sum(r["request_id"] == request_id for r in logged["predictions"]) == 300:
                break
            time.sleep(1)
        else:
            problems.append("the 300 shifted predictions did not reach the log within 60 s")
        monitor = subprocess.run(shlex.split(args.mlops) + ["monitor", "--model", "california_housing", "--hours", "1"],
                                 capture_output=True, text=True)
        if monitor.returncode not in (0, 1):
            problems.append(f"mlops monitor failed: {monitor.stderr[-500:]}")

        # History: the predictions just made, and an export equal to the API's pages.
        goto(page, "history", "History")
        expect(page.locator("#history-table")).to_contain_text(request_id)
        print(f"ok   the history page lists request {request_id}: " + page.locator("#history-summary").inner_text())
        page.get_by_label("Variant").fill("champion")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#history-summary")).to_contain_text("Page 1")
        snap(page, shots, "history")
        with page.expect_request("**/predictions/export?**") as asked, page.expect_download() as got:
            page.get_by_role("button", name="Export CSV").click()
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(asked.value.url).query))
        query.pop("format")
        with open(got.value.path(), newline="", encoding="utf-8") as f:
            exported = list(csv.DictReader(f))
        expected = api_pages(base, admin, query)
        mismatch = next((f"row {i}: {d}" for i, (a, e) in enumerate(zip(expected, exported))
                         if (d := same_row(a, e))), None)
        if len(exported) != len(expected) or mismatch or len(expected) < 300:
            problems.append(f"the CSV export ({len(exported)} rows) differs from the API ({len(expected)} rows): {mismatch}")
        else:
            print(f"ok   the CSV export equals the API's {len(expected)} rows for the same filter ({query})")

        # Monitoring: median_income flagged, with its histograms.
        goto(page, "monitoring", "Monitoring")
        income_row = page.locator("#drift tr", has_text="median_income").first
        expect(income_row).to_contain_text("DRIFTED")
        expect(page.locator("#histograms figure", has_text="median_income — drifted")).to_have_count(1)
        print("ok   the monitoring page flags median_income: " + page.locator("#monitoring-summary").inner_text())
        snap(page, shots, "monitoring")

        # Models: promote after the confirmation; the audit entry names the key.
        goto(page, "models", "Models")
        page.locator("#models").get_by_label("Alias", exact=True).fill("console-check")
        page.get_by_label("Reason or note").fill("promoted from the console test")
        page.get_by_role("button", name="Review the change").click()
        expect(page.locator("#confirm-text")).to_contain_text("Point alias 'console-check'")
        page.get_by_role("button", name="Confirm").click()
        entry = page.locator("#audit tbody tr").first
        expect(entry).to_contain_text("console-check")
        expect(entry).to_contain_text("console-admin (key")
        expect(entry).to_contain_text("promoted from the console test")
        print("ok   promoted from the console; audit entry: " + entry.inner_text().replace("\t", " | "))
        snap(page, shots, "models")

        # Training: the quickstart's runs, one opened.
        goto(page, "training", "Training")
        first_run = page.locator("#runs tbody button").first
        expect(first_run).to_be_visible()
        first_run.click()
        expect(page.locator("#run-detail")).to_be_visible()
        print(f"ok   the training page lists {page.locator('#runs tbody tr').count()} runs; opened {page.locator('#run-title').inner_text()!r}")
        snap(page, shots, "training")

        # A/B: the served variants and the split editor.
        goto(page, "ab", "A/B")
        expect(page.locator("#variants")).to_contain_text("champion")
        weight = page.get_by_label("champion (v", exact=False)
        expect(weight).to_have_value("100")
        page.get_by_role("button", name="Review the split").click()
        expect(page.locator("#traffic-confirm-text")).to_contain_text("would not change")
        page.locator("#traffic-no").click()
        weight.fill("90")
        page.get_by_role("button", name="Review the split").click()
        expect(page.locator("#traffic-confirm-text")).to_contain_text("champion 100% → 90%")
        page.locator("#traffic-yes").click()
        # 90 alone does not add up to 100: the API's message, and nothing stored.
        expect(page.locator("#message")).to_contain_text("refused")
        print("ok   the A/B page shows the variants; the split editor confirms and shows the API's refusal: "
              + page.locator("#message").inner_text())
        snap(page, shots, "ab")

        # Batch jobs: submit a store file, run to success.
        goto(page, "batch", "Batch jobs")
        store = call(base, admin, "GET", "/v1/batch-jobs")  # reachable with the admin key
        inputs_dir = os.path.join(args.store, "batch-inputs")
        os.makedirs(inputs_dir, exist_ok=True)
        batch_input = os.path.join(inputs_dir, "console.csv")
        with open(args.data) as src, open(batch_input, "w") as dst:
            for i, line in enumerate(src):
                if i > 500:
                    break
                dst.write(line)
        page.get_by_label("Input (S3 URI or store path)").fill(batch_input)
        # Over two containers: the local queue runs the array job's two children side by side.
        page.get_by_label("Containers").fill("2")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#message")).to_contain_text("succeeded", timeout=120_000)
        expect(page.locator("#message")).to_contain_text("500 rows of 500")
        expect(page.locator("#jobs tbody tr").first).to_contain_text("succeeded")
        sharded = [j for j in call(base, admin, "GET", "/v1/batch-jobs")["jobs"] if j.get("shards") == 2]
        assert sharded, "the job was not recorded with 2 shards"
        outputs = sorted(os.listdir(os.path.join(args.store, "batch-jobs", sharded[0]["id"], "output")))
        assert "_shards.json" in outputs and "_checkpoint-00001.json" in outputs, outputs
        print(f"ok   a batch job submitted from the page ran: {page.locator('#message').inner_text()} ({len(store['jobs'])} job(s) before)")
        snap(page, shots, "batch")

        # Readable at 360 px: no page wider than the viewport.
        for name, link in [("predict", "Predict"), ("models", "Models"), ("history", "History"),
                           ("monitoring", "Monitoring"), ("training", "Training"), ("ab", "A/B"),
                           ("batch", "Batch jobs")]:
            goto(page, name, link)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                problems.append(f"the {link} page is {overflow} px wider than a 360 px screen")
        print("ok   every page checked for horizontal scrolling at 360 px")
        browser.close()
    if problems:
        print("FAIL " + "\nFAIL ".join(problems))
        return 1
    print("console browser test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
