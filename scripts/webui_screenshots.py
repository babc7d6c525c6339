"""Screenshots of the web page's main states into docs/ (linked from the README).

    python scripts/webui_screenshots.py [--out docs]

Starts `streamlit run webui.py` on loopback with throwaway data folders and the fake OpenAI-compatible model of
tests/test_webui_browser.py (so the answers shown are known), drives it with Debian's chromium through Playwright,
and saves: webui-kbs.png (a knowledge base after an upload: the per-file report, the document list),
webui-chat.png (a rendered Markdown answer with its citation and opened source), webui-zh.png (the Chinese
interface). Needs what the browser tests need (chromium, playwright); downloads nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import test_webui_browser as ui  # noqa: E402 - the page driver the browser tests use


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNG files (default: docs/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kb_qa-shots-") as tmp_name:
        tmp = Path(tmp_name)
        doc = tmp / "solar_kettle.md"
        doc.write_text(ui.GOOD_DOC, encoding="utf-8")
        with ui.running_page(tmp) as server, sync_playwright() as p, \
                ui.browser_context(p, tmp / "profile") as context:
            page = context.new_page()
            page.set_default_timeout(4 * ui.TIMEOUT_MS)
            ui.open_page(page, server["url"])
            ui.create_kb(page, "kettles")
            ui.upload(page, "kettles", [doc])
            page.screenshot(path=str(out / "webui-kbs.png"), full_page=True)
            ui.ask(page, "How long does the solar kettle take to boil water?")
            answer = page.locator("[data-testid=stChatMessage]").nth(1)
            answer.locator("[data-testid=stExpander] summary").first.click()
            ui.settle(page)
            page.screenshot(path=str(out / "webui-chat.png"), full_page=True)
            page.get_by_role("radio", name="中文").click()
            ui.settle(page)
            page.screenshot(path=str(out / "webui-zh.png"), full_page=True)
            leaks = [u for u in context.requests if not u.startswith(server["url"])
                     and not u.startswith(("data:", "blob:"))]
            if leaks:
                print(f"requests that left the machine: {leaks}", file=sys.stderr)
                return 1
    for name in ("webui-kbs.png", "webui-chat.png", "webui-zh.png"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
