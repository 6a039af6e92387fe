"""Browser test of the web console (`/console`) in headless Chromium, driven by Playwright.

Usage: console_test.py BASE_URL PREDICT_KEY
Needs served california_housing and markup_probe models (tests/browser/markup_probe.schema.toml,
whose category values are HTML and script). Checks, as a user would see them:
  - a wrong key shows a clear message and no model;
  - the right key lists the model and a form generated from its schema, every input labelled;
  - an invalid field shows the API's message beside that field;
  - a valid record shows the prediction, a bar per feature contribution and the curl command;
  - category values containing <script> or an <img onerror> show as text and never run;
  - the page is readable at 360 px wide (nothing wider than the viewport);
  - no script error and no Content-Security-Policy violation on the way.
Exits 1 with the first failed check. Chromium: MLOPS_CHROMIUM, else /usr/bin/chromium, else
/usr/bin/google-chrome (launched with executable_path: Playwright downloads no browser).
"""

import os
import sys

from playwright.sync_api import expect, sync_playwright


def chromium_path():
    for path in (os.environ.get("MLOPS_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/google-chrome"):
        if path and os.path.exists(path):
            return path
    sys.exit("console_test: no Chromium (apt-get install chromium, or set MLOPS_CHROMIUM)")


def main():
    base, key = sys.argv[1].rstrip("/"), sys.argv[2]
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 360, "height": 800})
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        # Console errors count (a CSP violation is one), but not the browser's own line for a
        # response with an error status: this test asks for a 403 and a 400 on purpose.
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None,
        )
        page.goto(f"{base}/console")

        # A wrong key: a clear message, no model.
        page.get_by_label("API key").fill("mlk_000000000000_wrong")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#message")).to_contain_text("refused")
        expect(page.locator("#predict")).to_be_hidden()
        print("ok   a wrong key shows: " + page.locator("#message").inner_text())

        # The right key: the model and its form, every input labelled.
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

        # Readable at 360 px: nothing wider than the viewport.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            problems.append(f"the page is {overflow} px wider than a 360 px screen")
        else:
            print("ok   no horizontal scrolling at 360 px")
        browser.close()
    if problems:
        print("FAIL " + "\nFAIL ".join(problems))
        return 1
    print("console browser test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
