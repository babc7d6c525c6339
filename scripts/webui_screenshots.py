"""Screenshots of the web page's main states into docs/screenshots/ (linked from the README).

    python scripts/webui_screenshots.py [--out docs/screenshots]

Starts `streamlit run webui.py` on loopback with throwaway data folders and the fake OpenAI-compatible model of
tests/test_webui_browser.py (so the answers shown are known), drives it with Debian's chromium through Playwright,
and saves, in the order a new user meets them:
  empty-chat.png      the first load: no knowledge base yet
  upload-report.png   a knowledge base after an upload: the per-file report
  document-list.png   its documents with status and chunk counts, one document's chunks opened
  answer.png          a rendered Markdown answer with its citation and an opened source
  source-viewer.png   the source viewer: the passage with the question's terms highlighted, the download
  chinese.png         the same answer in the Chinese interface
Each PNG is reduced to a 256-colour palette (the page is flat colours), so each stays well under 300 KB.
Needs what the browser tests need (chromium, playwright); downloads nothing; fails if the page made any request
beyond its own server.
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

MAX_BYTES = 300 * 1024


def shoot(page, path: Path, *, full_page: bool = False) -> None:
    """A screenshot of the page, settled, as a palette PNG (a fraction of the size of a full-colour one)."""
    from PIL import Image

    ui.settle(page)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"),
                        help="folder for the PNG files (default: docs/screenshots/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kb_qa-shots-") as tmp_name:
        tmp = Path(tmp_name)
        docs = [tmp / "solar_kettle.md", tmp / "kettle_care.md"]
        docs[0].write_text(ui.GOOD_DOC, encoding="utf-8")
        docs[1].write_text("# Kettle care\n\nWipe the aluminium mirror with a dry cloth after each use; water "
                           "spots lower how much sunlight it reflects.\n", encoding="utf-8")
        with ui.running_page(tmp) as server, sync_playwright() as p, \
                ui.browser_context(p, tmp / "profile") as context:
            page = context.new_page()
            page.set_default_timeout(4 * ui.TIMEOUT_MS)
            ui.open_page(page, server["url"])
            shoot(page, out / "empty-chat.png")

            ui.create_kb(page, "kettles")
            ui.upload(page, "kettles", docs)
            page.get_by_text("Upload documents", exact=True).scroll_into_view_if_needed()
            shoot(page, out / "upload-report.png")
            page.get_by_text("Chunks of the selected document", exact=False).first.click()
            page.get_by_text("Documents", exact=True).scroll_into_view_if_needed()
            shoot(page, out / "document-list.png")

            ui.ask(page, "How long does the solar kettle take to boil water?")
            answer = page.locator("[data-testid=stChatMessage]").nth(1)
            answer.locator("[data-testid=stExpander] summary").first.click()
            shoot(page, out / "answer.png")
            answer.get_by_role("button", name="View source").first.click()
            page.locator("[data-testid=stDialog]").wait_for()
            shoot(page, out / "source-viewer.png")
            page.keyboard.press("Escape")
            page.locator("[data-testid=stDialog]").wait_for(state="detached")
            page.get_by_role("radio", name="中文").click()
            shoot(page, out / "chinese.png")

            leaks = [u for u in context.requests if not u.startswith(server["url"])
                     and not u.startswith(("data:", "blob:"))]
            if leaks:
                print(f"requests that left the machine: {leaks}", file=sys.stderr)
                return 1
    too_big = [p.name for p in sorted(out.glob("*.png")) if p.stat().st_size > MAX_BYTES]
    if too_big:
        print(f"over {MAX_BYTES // 1024} KB: {too_big}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
