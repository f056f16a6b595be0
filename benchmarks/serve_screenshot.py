"""A screenshot of `mobiforge serve` on a ship run, taken as the page test takes it: Debian's chromium driven by
Playwright, two photos uploaded, their top-5 shown by the artifact running in its runtime here.

    python -m benchmarks.serve_screenshot RUN_DIR PHOTO PHOTO --out /tmp/serve.png
"""

from __future__ import annotations

import argparse
import shutil
import threading
from pathlib import Path

from mobiforge.serve import make_server, served_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a ship run folder (or an artifact)")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("Debian's chromium is not installed: make browser")
    from playwright.sync_api import sync_playwright

    server = make_server(served_artifact(args.run))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(f"http://{host}:{port}")
        page.set_input_files("#files", args.photos)
        page.wait_for_function(
            f"document.querySelectorAll('.result .top1').length === {len(args.photos)}", timeout=60_000
        )
        page.screenshot(path=args.out, full_page=True)
        shown = page.eval_on_selector_all(".result .top1", "nodes => nodes.map(node => node.textContent)")
        browser.close()
    server.shutdown()
    print(f"{args.out}: top-1 shown {shown[::-1]} for {[Path(photo).name for photo in args.photos]}")


if __name__ == "__main__":
    main()
