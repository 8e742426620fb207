"""Build-time hooks for the docs site (registered under `hooks:` in mkdocs.yml).

1. `on_config` builds the navigation from the notebooks and pages that exist, in the book's order:
   Part I (chapters 1-3), Part II (4-6), Part III (7-10), Appendices, Exercises, Solutions,
   Workshop. A notebook's title is its first markdown heading; a new notebook appears in the
   navigation without editing mkdocs.yml.
2. `on_page_content` puts a header on every notebook page: the path to open in JupyterLab, the
   data it reads, whether a GPU helps, and the wall time of its stored (CI-size) run, read from
   the execution timestamps the notebook carries. Optional notes per notebook come from
   `site/notebooks.yml`.
3. `on_page_content` also drops the scripts nbconvert puts in a rendered notebook to fetch code
   from a CDN (the ipywidgets embed manager, Mermaid) and its empty MathJax `<script src="">`:
   the site must work offline. The theme draws Mermaid (`pre.mermaid`) with the local copy in
   `assets/vendor/`, and every widget in the course has a static table or picture beside it.
   It points links between notebooks (`ch05_2_errata.ipynb`) at the notebooks' pages, and
   aligns the table of contents with the headings' ids.
4. `on_page_markdown` replaces `{{ notebook_times }}` with a table of every notebook's stored run
   time (the workshop agenda uses it), and turns a code span naming an existing notebook (`chapters/x.ipynb`) on a
   Markdown page into a link, so pages such as the workshop agenda can name notebooks that are
   still being written without breaking `mkdocs build --strict`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import posixpath
import re
from pathlib import Path

import yaml

# The book's chapters (outline in shared/seeds/000_*), with the course's English titles.
CHAPTER_TITLES = {
    1: "The large-model era",
    2: "Foundations",
    3: "Technical principles",
    4: "Core algorithms",
    5: "Mathematics",
    6: "Projects",
    7: "Value",
    8: "Risks and how to meet them",
    9: "Outlook",
    10: "The future",
}
PARTS = [
    ("Part I - Background", range(1, 4)),
    ("Part II - Technical breakthroughs", range(4, 7)),
    ("Part III - Summary and outlook", range(7, 11)),
]
APPENDIX_TITLES = {
    "A": "Frameworks and environment",
    "B": "Founder resources",
    "C": "Literature",
    "D": "Diagrams",
    "E": "Code cases",
    "F": "Road map",
    "G": "References",
}
WORKSHOP_ORDER = ["index.md", "agenda.md", "setup.md", "facilitator.md"]

# What each `lm4f.data` loader reads, for the notebook header.
DATA_SOURCES = {
    "fashion_mnist": "Fashion-MNIST (70k images, about 30 MB)",
    "movielens_100k": "MovieLens-100K (100k ratings, about 5 MB)",
    "clothing_reviews": "Women's E-Commerce Clothing Reviews (23k reviews, about 8 MB)",
    "minilm_path": "pretrained all-MiniLM-L6-v2 (22.7 M parameters, about 90 MB)",
}

CHAPTER_FILE = re.compile(r"^ch(\d{2})(?:_(\d+))?_[a-z0-9_]+\.ipynb$")
APPENDIX_FILE = re.compile(r"^app([A-Z])_[a-z0-9_]+\.(ipynb|md)$")


# ---------------------------------------------------------------- notebook facts
def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def notebook_title(path: Path) -> str | None:
    """The first markdown heading of a notebook, without the leading #'s."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        for line in _cell_source(cell).splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return None


def _parse_time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def notebook_facts(path: Path) -> dict:
    """What a notebook page header shows, derived from the stored notebook itself."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join(_cell_source(c) for c in notebook.get("cells", []) if c.get("cell_type") == "code")
    starts, ends = [], []
    for cell in notebook.get("cells", []):
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing:
            starts.append(_parse_time(timing["iopub.execute_input"]))
        if "shell.execute_reply" in timing:
            ends.append(_parse_time(timing["shell.execute_reply"]))
    run_seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {
        "data": [label for name, label in DATA_SOURCES.items() if re.search(rf"\b{name}\s*\(", code)],
        "size_switch": "pick(" in code,
        "uses_torch": bool(re.search(r"^\s*(import torch|from torch)", code, re.MULTILINE)),
        "run_seconds": run_seconds,
        "has_outputs": any(c.get("outputs") for c in notebook.get("cells", []) if c.get("cell_type") == "code"),
    }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def notebook_header(src_path: str, facts: dict, notes: dict) -> str:
    """HTML for the box at the top of a notebook page."""
    name = posixpath.basename(src_path)
    rows = [
        ("Open in JupyterLab", f"<code>{html.escape(src_path)}</code> (after <code>make start</code>; "
         f'or <a href="{html.escape(name)}" download>download the notebook</a>)'),
        ("Data", html.escape(", ".join(facts["data"])) if facts["data"] else "none (generated in the notebook)"),
    ]
    if facts["run_seconds"] is not None:
        compute = (f"CPU only; the stored run (<code>LM4F_SIZE=ci</code>) took "
                   f"{_minutes(facts['run_seconds'])} wall time on a shared 2-core machine; "
                   f"CI allows 5 min")
    elif src_path.startswith("exercises/"):
        compute = ("CPU only; stored without outputs: run it yourself (the checks fail until you "
                   "solve the stubs); the solved twin in <code>solutions/</code> shows its run time")
    elif facts["has_outputs"]:
        compute = (f"CPU only; the stored notebook does not record its run time "
                   f"(<code>make execute NB={html.escape(src_path)}</code> records it); CI allows 5 min")
    else:
        compute = "CPU only; not executed yet"
    rows.append(("Compute", compute))
    if facts["size_switch"] and facts["uses_torch"]:
        gpu = "optional: <code>LM4F_SIZE=full</code> runs the full-size settings, where a CUDA GPU helps"
    elif facts["size_switch"]:
        gpu = "not needed (NumPy only); <code>LM4F_SIZE=full</code> runs the full-size settings on the CPU"
    else:
        gpu = "not needed"
    rows.append(("GPU", gpu))
    for label, text in (notes or {}).items():
        rows.append((html.escape(str(label).capitalize()), html.escape(str(text))))
    body = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows)
    return f'<div class="admonition info lm4f-notebook-header"><table>{body}</table></div>\n'


# ---------------------------------------------------------------- navigation
def _files(docs: Path, folder: str, pattern: str) -> list[Path]:
    base = docs / folder
    return sorted(base.glob(pattern)) if base.is_dir() else []


def _title_or_name(path: Path) -> str:
    return notebook_title(path) or path.stem


def _section_key(path: Path) -> tuple:
    section = CHAPTER_FILE.match(path.name).group(2)
    continued = "(continued)" in (notebook_title(path) or "").lower()
    return (int(section) if section else 0, continued, path.name)


def build_nav(docs: Path) -> list:
    nav: list = [{"Home": "index.md"}]

    # Chapters, grouped by book chapter; one notebook -> a page, several -> a section.
    chapters: dict[int, list[Path]] = {}
    for path in _files(docs, "chapters", "ch*.ipynb"):
        match = CHAPTER_FILE.match(path.name)
        if match:
            chapters.setdefault(int(match.group(1)), []).append(path)
    for part_title, numbers in PARTS:
        part = []
        for number in numbers:
            # Section order; a "(continued)" notebook follows the section it continues.
            notebooks = sorted(chapters.get(number, []), key=_section_key)
            if not notebooks:
                continue
            label = f"{number} {CHAPTER_TITLES[number]}"
            if all(p.name.startswith(f"ch{number:02d}_{number + 1:02d}_") for p in notebooks):
                # Book chapters taught together, e.g. ch09_10_*: "9-10 Outlook and the future".
                label = f"{number}-{number + 1} {CHAPTER_TITLES[number]} and {CHAPTER_TITLES[number + 1].lower()}"
            if len(notebooks) == 1:
                part.append({label: f"chapters/{notebooks[0].name}"})
            else:
                part.append({label: [{_title_or_name(p): f"chapters/{p.name}"} for p in notebooks]})
        if part:
            nav.append({part_title: part})

    # Appendices: notebooks in chapters/ and Markdown pages in site/appendix/, by letter.
    appendices = []
    for path in _files(docs, "chapters", "app*.ipynb") + _files(docs, "appendix", "app*.md"):
        match = APPENDIX_FILE.match(path.name)
        if match:
            letter = match.group(1)
            rel = path.relative_to(docs).as_posix()
            appendices.append((letter, rel, f"{letter} {APPENDIX_TITLES.get(letter, path.stem)}"))
    if appendices:
        nav.append({"Appendices": [{label: rel} for _, rel, label in sorted(appendices)]})

    for folder, title in (("exercises", "Exercises"), ("solutions", "Solutions")):
        pages = [{_title_or_name(p): f"{folder}/{p.name}"} for p in _files(docs, folder, "*.ipynb")]
        if pages:
            nav.append({title: pages})

    workshop = [n for n in WORKSHOP_ORDER if (docs / "workshop" / n).exists()]
    workshop += sorted(p.name for p in _files(docs, "workshop", "*.md") if p.name not in workshop)
    if workshop:
        nav.append({"Workshop": [f"workshop/{n}" for n in workshop]})
    return nav


# ---------------------------------------------------------------- mkdocs events
_notes: dict = {}


def on_config(config):
    docs = Path(config["docs_dir"])
    config["nav"] = build_nav(docs)
    notes_file = docs / "notebooks.yml"
    _notes.clear()
    if notes_file.exists():
        _notes.update(yaml.safe_load(notes_file.read_text(encoding="utf-8")) or {})
    return config


def notebook_times_table(docs: Path) -> str:
    """A Markdown table: each chapter and solution notebook with its stored run time."""
    rows = ["| notebook | title | stored run (wall, CI size) |", "|---|---|---|"]
    for folder in ("chapters", "solutions"):
        for path in _files(docs, folder, "*.ipynb"):
            seconds = notebook_facts(path)["run_seconds"]
            shown = _minutes(seconds) if seconds is not None else "not recorded"
            rows.append(f"| `{folder}/{path.name}` | {_title_or_name(path)} | {shown} |")
    if len(rows) == 2:
        return "No notebooks yet."
    return "\n".join(rows)


NOTEBOOK_PATH_SPAN = re.compile(r"`((?:chapters|exercises|solutions)/[A-Za-z0-9_]+\.ipynb)`")


def on_page_markdown(markdown, page, config, files):
    if not page.file.src_path.endswith(".md"):
        return markdown
    docs = Path(config["docs_dir"])
    here = posixpath.dirname(page.file.src_path)
    if "{{ notebook_times }}" in markdown:
        markdown = markdown.replace("{{ notebook_times }}", notebook_times_table(docs))

    def link(match):
        target = match.group(1)
        if files.get_file_from_path(target) is None:
            return match.group(0)  # not written yet: stays a plain path
        return f"[`{target}`]({posixpath.relpath(target, here or '.')})"

    return NOTEBOOK_PATH_SPAN.sub(link, markdown)


# A <script> element that loads code from elsewhere: src="http...", src="", or a body that
# imports / injects a https://....js file.
SCRIPT_ELEMENT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.IGNORECASE | re.DOTALL)
REMOTE_CODE = re.compile(r"""https?://[^"'\s]+\.m?js\b""")


def _drop_remote_script(match: re.Match) -> str:
    attributes, body = match.group(1), match.group(2)
    src = re.search(r"""\ssrc=["']([^"']*)["']""", attributes)
    if src and (src.group(1) == "" or src.group(1).startswith(("http://", "https://"))):
        return ""
    if REMOTE_CODE.search(body):
        return ""
    return match.group(0)


NOTEBOOK_HREF = re.compile(r'href="([^":#?]+\.ipynb)(#[^"]*)?"')


def _link_notebooks(content: str, page, files) -> str:
    """A link from one notebook to another (`ch05_2_errata.ipynb`, right in JupyterLab) points to
    that notebook's page on the site (`../ch05_2_errata/`)."""
    here = posixpath.dirname(page.file.src_path)

    def fix(match):
        target = files.get_file_from_path(posixpath.normpath(posixpath.join(here, match.group(1))))
        if target is None:
            return match.group(0)  # left as written; the site test reports it if it is broken
        return f'href="{target.url_relative_to(page.file)}{match.group(2) or ""}"'

    return NOTEBOOK_HREF.sub(fix, content)


HEADING = re.compile(r'<h([1-6]) id="([^"]+)"[^>]*>(.*?)</h\1>', re.DOTALL)


def _heading_text(inner_html: str) -> str:
    inner_html = re.sub(r'<a class="anchor-link".*?</a>', "", inner_html, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", inner_html)).strip()


def _align_toc(page, content: str) -> None:
    """mkdocs-jupyter makes the table of contents with its own slugs and drops code spans from
    titles ("From scalars to arrays" for "From scalars to arrays: `lm4f.tensor.Tensor`"), so
    its links miss the headings' ids. Point each entry at the heading it stands for, in order."""
    headings = [(int(level), anchor, _heading_text(inner)) for level, anchor, inner in HEADING.findall(content)]
    position = 0

    def visit(items):
        nonlocal position
        for item in items:
            for index in range(position, len(headings)):
                level, anchor, text = headings[index]
                if level == item.level:
                    item.id, item.title, position = anchor, text, index + 1
                    break
            visit(item.children)

    visit(page.toc)


def on_page_content(content, page, config, files):
    if not page.file.src_path.endswith(".ipynb"):
        return content
    content = SCRIPT_ELEMENT.sub(_drop_remote_script, content)
    content = _link_notebooks(content, page, files)
    _align_toc(page, content)
    path = Path(page.file.abs_src_path)
    header = notebook_header(page.file.src_path, notebook_facts(path), _notes.get(page.file.src_path))
    # After the page's first heading, if the notebook starts with one.
    first_heading_end = re.search(r"</h1>", content)
    if first_heading_end:
        cut = first_heading_end.end()
        return content[:cut] + header + content[cut:]
    return header + content
