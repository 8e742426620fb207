"""The docs site: `mkdocs build --strict`, internal links, and every page in headless Chromium.

The site is built into build/site, served by `http.server` on 127.0.0.1 in a thread, and opened in
Debian's Chromium through Playwright (`make browser-deps` installs it). Every request that would
leave the loopback interface is blocked and counted as a failure: the published site must work
offline, so MathJax and Mermaid come from site/assets/vendor/, not from a CDN.
Screenshots of every page land in build/artifacts/screenshots/.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"
SCREENSHOTS = ROOT / "build" / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PAGE_TIMEOUT_MS = 60_000


# ---------------------------------------------------------------- build and serve
@pytest.fixture(scope="module")
def built_site() -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log[-5000:]}"
    assert "WARNING" not in log, f"mkdocs build printed warnings:\n{log[-5000:]}"
    assert (SITE / "index.html").exists()
    return SITE


def site_pages(site: Path) -> list[str]:
    """Every page of the built site as a URL path ('' for the home page)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        rel = index.parent.relative_to(site).as_posix()
        if rel.startswith(("assets", "search")):
            continue
        pages.append("" if rel == "." else rel + "/")
    return pages


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def server(built_site):
    handler = functools.partial(QuietHandler, directory=str(built_site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, a free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run `make browser-deps` (or `sudo apt-get install chromium`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageProblems:
    """Console errors, page errors, failed and off-site requests seen by one browser context."""

    def __init__(self, context, base_url: str):
        self.items: list[str] = []
        self.base_url = base_url
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base_url):
            route.continue_()
        else:
            self.items.append(f"request leaves the site (blocked): {url}")
            route.abort()

    def watch(self, page):
        page.on("console", lambda m: m.type == "error" and self.items.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: r.url.startswith(self.base_url)
                and self.items.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and self.items.append(f"HTTP {r.status}: {r.url}"))


@pytest.fixture()
def context(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context
    context.close()


def open_page(context, server, path: str):
    problems = PageProblems(context, server)
    page = context.new_page()
    problems.watch(page)
    page.goto(server + path, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, problems


def wait_for_math(page):
    """Wait until MathJax has finished its first typesetting pass."""
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")


def screenshot_name(path: str, suffix: str = "") -> Path:
    name = path.strip("/").replace("/", "__") or "home"
    return SCREENSHOTS / f"{name}{suffix}.png"


# ---------------------------------------------------------------- what the notebooks hold
def notebook_for(site_path: str) -> Path | None:
    """chapters/appA_environment/ -> the copy of chapters/appA_environment.ipynb the build put
    beside the page (the very version the page was rendered from), if it is a notebook page."""
    folder, _, rest = site_path.strip("/").partition("/")
    if folder not in ("chapters", "exercises", "solutions") or not rest:
        return None
    source = SITE / folder / rest / f"{rest}.ipynb"
    return source if source.exists() else None


def image_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(
        1
        for cell in cells
        for output in cell.get("outputs", [])
        if any(kind in output.get("data", {}) for kind in ("image/png", "image/jpeg", "image/svg+xml"))
    )


TEX_IN_DOLLARS = re.compile(r"\$\$|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")


def has_tex(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any(
        TEX_IN_DOLLARS.search("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
        for c in cells if c["cell_type"] == "markdown"
    )


def has_mermaid(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any("```mermaid" in "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


# ---------------------------------------------------------------- tests
def test_build_strict_lists_every_notebook(built_site):
    """Every chapter, exercise and solution notebook and every Markdown page becomes a page."""
    pages = set(site_pages(built_site))
    for folder in ("chapters", "exercises", "solutions"):
        for notebook in (ROOT / folder).glob("*.ipynb"):
            assert f"{folder}/{notebook.stem}/" in pages, f"{folder}/{notebook.name} has no page"
            assert (built_site / folder / notebook.stem / notebook.name).exists(), "notebook not downloadable"
    for markdown in (ROOT / "site").rglob("*.md"):
        rel = markdown.relative_to(ROOT / "site").with_suffix("")
        if rel.parts[:2] == ("assets", "vendor"):
            continue
        expected = "" if rel.as_posix() == "index" else (
            f"{rel.parent.as_posix()}/" if rel.name == "index" else f"{rel.as_posix()}/")
        assert expected in pages, f"site/{rel}.md has no page"
    # The navigation follows the book: parts in order, then appendices, exercises, solutions, workshop.
    home = (built_site / "index.html").read_text(encoding="utf-8")
    home = home[home.index("md-nav--primary"):home.index('class="md-content"')]  # the sidebar
    order = [home.find(title) for title in (
        "Part I - Background", "Part II - Technical breakthroughs", "Part III - Summary and outlook",
        "Appendices", "Exercises", "Solutions", "Workshop") if title in home]
    assert order == sorted(order) and len(order) >= 2


# Regular expressions rather than an HTML parser: notebook pages carry megabytes of inline images.
LINK_ATTRIBUTE = re.compile(r"""<(?:a|img|script|link)\b[^>]*?\s(?:href|src)=["']([^"']+)["']""", re.IGNORECASE)
ID_ATTRIBUTE = re.compile(r"""\sid=["']([^"']+)["']""")


def page_links(path: Path) -> list[str]:
    return [html.unescape(link) for link in LINK_ATTRIBUTE.findall(path.read_text(encoding="utf-8"))]


def page_ids(path: Path) -> set[str]:
    return {html.unescape(i) for i in ID_ATTRIBUTE.findall(path.read_text(encoding="utf-8"))}


def resolve(site: Path, url_path: str) -> Path:
    target = site / unquote(url_path).lstrip("/")
    return target / "index.html" if url_path.endswith("/") or target.is_dir() else target


def test_internal_links_resolve(built_site):
    """Every relative href/src in every page points to a file of the site, and every #anchor exists."""
    broken = []
    ids_cache: dict[Path, set[str]] = {}
    for page in site_pages(built_site):
        html_file = built_site / page / "index.html"
        base = "http://site/" + page
        for link in page_links(html_file):
            if link.startswith(("http://", "https://", "mailto:", "data:", "javascript:")):
                continue
            url = urlsplit(urljoin(base, link))
            target = resolve(built_site, url.path)
            if not target.exists():
                broken.append(f"{page or '/'}: {link} (no {target.relative_to(built_site)})")
                continue
            if url.fragment and target.suffix == ".html":
                ids = ids_cache.setdefault(target, page_ids(target))
                if unquote(url.fragment) not in ids:
                    broken.append(f"{page or '/'}: {link} (no #{url.fragment})")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


def test_every_page_loads_cleanly_with_its_images(built_site, server, context):
    """No console errors, no failed or off-site requests; notebook images are present and decoded."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    report = []
    for path in site_pages(built_site):
        page, problems = open_page(context, server, path)
        wait_for_math(page)
        notebook = notebook_for(path)
        if notebook is not None:
            expected = image_outputs(notebook)
            images = page.eval_on_selector_all(
                ".jupyter-wrapper img",
                "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
            if len(images) < expected or not all(images):
                problems.items.append(
                    f"{len(images)} notebook images on the page ({sum(images)} decoded), {expected} in the notebook")
            # The header box: where to open the notebook and what it needs.
            header = page.locator(".lm4f-notebook-header").first.inner_text()
            for needed in ("Open in JupyterLab", notebook.name, "Data", "Compute", "GPU"):
                if needed not in header:
                    problems.items.append(f"header box lacks {needed!r}")
            if has_tex(notebook) and page.locator("mjx-container").count() == 0:
                problems.items.append("formulas in markdown cells but no MathJax output")
        # Mermaid: the theme replaces each <pre class="mermaid"> once its SVG is drawn.
        try:
            page.wait_for_function("() => document.querySelectorAll('pre.mermaid').length === 0",
                                   timeout=30_000)
        except PlaywrightTimeout:
            problems.items.append(f"{page.locator('pre.mermaid').count()} Mermaid diagrams not drawn")
        if page.locator("mjx-merror").count():
            problems.items.append(f"{page.locator('mjx-merror').count()} formulas MathJax could not parse")
        page.screenshot(path=str(screenshot_name(path)))
        page.close()
        report += [f"{path or '/'}: {item}" for item in problems.items]
    assert not report, "problems in the browser:\n" + "\n".join(report[:60])


def shadow_svg_count(page) -> int:
    """SVG elements inside the (closed) shadow roots the theme draws Mermaid diagrams into."""
    session = page.context.new_cdp_session(page)
    root = session.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]

    def walk(node, in_shadow=False):
        count = 1 if in_shadow and node.get("localName") == "svg" else 0
        for child in node.get("children", []):
            count += walk(child, in_shadow)
        for shadow in node.get("shadowRoots", []):
            count += walk(shadow, True)
        return count

    return walk(root)


def test_math_and_mermaid_render_on_the_home_page(server, context):
    page, problems = open_page(context, server, "")
    wait_for_math(page)
    # MathJax output (SVG) for the inline and the display formula.
    assert page.locator(".arithmatex mjx-container svg").count() >= 2
    assert page.locator("mjx-container[display='true']").count() >= 1
    # Mermaid: the theme swaps <pre class="mermaid"> for a <div class="mermaid"> holding the SVG.
    page.wait_for_function("() => document.querySelectorAll('pre.mermaid').length === 0")
    diagram = page.locator("div.mermaid").first
    box = diagram.bounding_box()
    assert box is not None and box["height"] > 50, "the Mermaid diagram has no size"
    assert shadow_svg_count(page) >= 1, "no SVG drawn by Mermaid"
    page.screenshot(path=str(screenshot_name("", "-full")), full_page=True)
    assert not problems.items, problems.items


def test_notebook_mermaid_diagrams_render(built_site, server, context):
    pages = [p for p in site_pages(built_site) if notebook_for(p) and has_mermaid(notebook_for(p))]
    if not pages:
        pytest.skip("no notebook holds a Mermaid diagram yet")
    for path in pages:
        page, problems = open_page(context, server, path)
        page.wait_for_function("() => document.querySelectorAll('pre.mermaid').length === 0")
        assert shadow_svg_count(page) >= 1, f"{path}: no Mermaid SVG"
        assert not problems.items, problems.items
        page.close()


def test_search_dark_mode_and_copy_buttons(server, context):
    page, problems = open_page(context, server, "")
    # Code copy buttons on code blocks.
    assert page.locator("button[data-md-type='copy'], button.md-clipboard").count() >= 1
    # Search runs in a web worker served by the site.
    search = page.locator(".md-search__input")
    search.focus()
    page.keyboard.type("founders")
    page.wait_for_function("() => document.querySelectorAll('.md-search-result__item').length > 0")
    page.keyboard.press("Escape")
    # Light / dark toggle.
    scheme = page.evaluate("() => document.body.getAttribute('data-md-color-scheme')")
    page.locator("form[data-md-component='palette'] label:visible").first.click()
    page.wait_for_function(
        "s => document.body.getAttribute('data-md-color-scheme') !== s", arg=scheme)
    page.screenshot(path=str(screenshot_name("", "-dark")))
    assert not problems.items, problems.items


def test_vendored_scripts_are_local():
    """The configuration loads MathJax and Mermaid from the site, never from a CDN."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    settings = [line.split("#")[0] for line in config.splitlines()]  # without comments
    assert not [line for line in settings if "http://" in line or "https://" in line]
    for script in ("assets/vendor/mathjax/tex-svg.js", "assets/vendor/mermaid/mermaid.min.js"):
        assert script in config
        assert (ROOT / "site" / script).stat().st_size > 1_000_000

