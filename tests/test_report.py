"""The run report: the library on hand-made manifests, and a real run's page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from colorize.manifest import ManifestRow, run_key, to_frame, write_csv
from colorize.report import LISTED_ROWS, THUMB_SIDE, build_report, latest_run_id, report_link, sample_rows, write_report
from colorize.storage.local import LocalStorage
from tests.helpers import colour_image, encode, gray_image, write

HOSTILE_SCRIPT = "<script>alert(1);window.__pwned=1</script>.png"  # a folder "<script>...<" and a file "script>.png"
HOSTILE_IMG = "<img src=x onerror=window.__pwned=1>.jpg"
RUN_ID = "20250101T000000Z-abcdef"


# --- hand-made runs ----------------------------------------------------------------------------------


def _row(src: Path, key: str, status: str, out: Path | None = None, **kw: Any) -> ManifestRow:
    output_uri = str(out / key) if out is not None and status in ("colorized", "skipped_done") else ""
    return ManifestRow(RUN_ID, str(src / key), 1, "", status, output_uri=output_uri, **kw)


def _gray_pair(src: Path, out: Path, key: str, height: int = 60, width: int = 80, seed: int = 0) -> None:
    """A gray source and a colour "output" of the same size, as a run would leave them."""
    write(src / key, encode(gray_image(height, width, seed=seed), "PNG"))
    write(out / key, encode(colour_image(height, width, seed=seed), "PNG"))


def _write_run(dest: Path, rows: list[ManifestRow], run_id: str = RUN_ID) -> LocalStorage:
    storage = LocalStorage(str(dest))
    write_csv(storage, run_key(run_id), to_frame(rows))
    return storage


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def _shown(page: str) -> list[str]:
    """The source URIs under the thumbnails of a page, in page order."""
    spans = [a for t, a in _tags(page) if t == "span" and a.get("class") == "path"]
    return [str(a["title"]) for a in spans if "/bad/" not in str(a["title"])]


def _data_uri_image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_names_reasons_and_model_ids_are_escaped(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    _gray_pair(src, dest, HOSTILE_SCRIPT)
    rows = [
        _row(src, HOSTILE_SCRIPT, "colorized", dest, width=80, height=60, model_id='m"><script>x()</script>@1'),
        _row(src, HOSTILE_IMG, "failed", reason="not an image: <marquee onmouseover=alert(1)>"),
        _row(src, "c.jpg", "skipped_color", reason="</td></table><script>alert(2)</script>"),
    ]
    page = build_report(_write_run(dest, rows), RUN_ID)

    tags = _tags(page)
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "marquee", "base", "link")]
    assert not [(t, a) for t, a in tags for name in a if name.startswith("on")]  # no event handler anywhere
    assert all((a.get("src") or "").startswith("data:image/jpeg;base64,") for t, a in tags if t == "img")
    assert "&lt;script&gt;alert(1);window.__pwned=1&lt;/script&gt;.png" in page
    assert "&lt;img src=x onerror=window.__pwned=1&gt;.jpg" in page
    assert "m&quot;&gt;&lt;script&gt;x()&lt;/script&gt;@1" in page
    csp = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert [a["content"] for a in csp] == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]
    assert "http://" not in page and "https://" not in page  # nothing to load from anywhere


def test_sample_caps_the_grid_but_not_the_failures(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    rows = []
    for i in range(30):
        _gray_pair(src, dest, f"ok/{i:03d}.png", 24, 32, seed=i)
        rows.append(_row(src, f"ok/{i:03d}.png", "colorized", dest, width=32, height=24, model_id="tiny@0123"))
    rows += [_row(src, f"bad/{i:03d}.jpg", "failed", reason=f"broken number {i}") for i in range(40)]
    rows += [_row(src, f"old/{i:03d}.png", "skipped_done", dest, reason="unchanged") for i in range(50)]
    storage = _write_run(dest, rows)

    page = build_report(storage, RUN_ID, sample=7)
    assert "Showing 7 of 30 colorized files" in page
    assert page.count('<figure class="pair">') == 7
    assert sum(1 for t, _ in _tags(page) if t == "img") == 14
    assert all(f"broken number {i}<" in page for i in range(40))  # every failure, whatever the cap
    assert "50 files were already colorized" in page and "old/000.png" not in page  # counted, not listed
    assert '<li class="st-failed" data-status="failed"><a href="#failed"><b>40</b>' in page

    figures = _shown(page)
    assert figures == _shown(build_report(storage, RUN_ID, sample=7))  # the same sample every time
    assert figures == sorted(figures) and len(figures) == 7 and all("/ok/" in f for f in figures)


def test_a_run_that_failed_everything_lists_the_first_failures_and_names_the_manifest(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    n = LISTED_ROWS + 5  # as when a moved archive's every scan is refused
    rows = [_row(src, f"box/{i:05d}.jpg", "failed", reason=f"owned elsewhere {i}") for i in range(n)]
    page = build_report(_write_run(dest, rows), RUN_ID)
    assert f"owned elsewhere {LISTED_ROWS - 1}<" in page and f"owned elsewhere {LISTED_ROWS}<" not in page
    assert f"The first {LISTED_ROWS:,} by path; <code>manifests/{RUN_ID}.csv</code> lists all {n:,}." in page
    assert f'<a href="#failed"><b>{n}</b>' in page


def test_a_scan_colorized_in_part_is_listed_with_its_note(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    for key in ("whole.png", "pages.tif"):
        _gray_pair(src, dest, key)
    note = "page 1 of 3 colorized; the other pages are not in the output"
    rows = [
        _row(src, "whole.png", "colorized", dest, width=80, height=60),
        _row(src, "pages.tif", "colorized", dest, reason=note, width=80, height=60, pages=3),
    ]
    page = build_report(_write_run(dest, rows), RUN_ID, sample=0)  # listed even when no pair is shown
    assert "Colorized in part (1)" in page and note in page
    listed = page.split('id="colorized-in-part"', 1)[1].split("</section>", 1)[0]
    assert "pages.tif" in listed and "whole.png" not in listed


def test_sample_is_fixed_by_the_uri_not_by_row_order():
    frame = pd.DataFrame({"source_uri": [f"s3://b/scans/{i:05d}.tif" for i in range(1000)]})
    chosen = sample_rows(frame, 120)
    shuffled = sample_rows(frame.sample(frac=1.0, random_state=1), 120)
    assert len(chosen) == 120 and list(chosen["source_uri"]) == list(shuffled["source_uri"])
    assert list(chosen["source_uri"]) == sorted(chosen["source_uri"])
    assert len(sample_rows(frame, 0)) == 0 and len(sample_rows(frame.head(5), 120)) == 5


def test_thumbnails_are_small_jpegs_and_a_missing_file_is_a_placeholder(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    write(src / "big16.tif", encode(gray_image(700, 1000, dtype=np.uint16), "TIFF"))
    write(dest / "big16.tif", encode(colour_image(700, 1000), "TIFF"))
    write(src / "tall.jpg", encode(gray_image(900, 300, seed=1), "JPEG"))
    write(dest / "tall.jpg", encode(colour_image(900, 300, seed=1), "JPEG"))
    _gray_pair(src, dest, "gone.png")
    rows = [
        _row(src, k, "colorized", dest, width=w, height=h)
        for k, w, h in [("big16.tif", 1000, 700), ("tall.jpg", 300, 900), ("gone.png", 80, 60)]
    ]
    storage = _write_run(dest, rows)
    (src / "gone.png").unlink()  # a source moved away since the run

    page = build_report(storage, RUN_ID)
    imgs = [a for t, a in _tags(page) if t == "img"]
    assert len(imgs) == 5  # both sides of two pairs, the output side of the third
    for attrs in imgs:
        img = _data_uri_image(attrs["src"])
        assert img.format == "JPEG" and max(img.size) <= THUMB_SIDE
        assert (str(img.width), str(img.height)) == (attrs["width"], attrs["height"])
    sizes = sorted(_data_uri_image(a["src"]).size for a in imgs)
    assert (320, 224) in sizes and (107, 320) in sizes
    assert "before: not readable" in page and "1000&#215;700" in page


def test_write_report_latest_run_link_and_missing_run(tmp_path):
    src, dest = tmp_path / "scans", tmp_path / "out"
    _gray_pair(src, dest, "a.png")
    storage = _write_run(dest, [_row(src, "a.png", "colorized", dest)], "20250101T000000Z-000001")
    _write_run(dest, [_row(src, "a.png", "skipped_done", dest)], "20250102T000000Z-000002")
    write_csv(storage, "manifests/20990101T000000Z-killed/shard-0.csv", to_frame([]))  # parts, not a run
    assert latest_run_id(storage) == "20250102T000000Z-000002"
    assert latest_run_id(LocalStorage(str(tmp_path / "empty"))) is None

    key = write_report(storage, "20250101T000000Z-000001")
    assert key == "reports/20250101T000000Z-000001.html"
    assert report_link(storage, key, 60) == (dest / key).as_uri()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        build_report(storage, "20240101T000000Z-nosuch")

    class Presigning(LocalStorage):
        def presign(self, key: str, expires_in: int) -> str:
            return f"https://example.invalid/{key}?expires={expires_in}"

    assert report_link(Presigning(str(dest)), key, 3600) == f"https://example.invalid/{key}?expires=3600"


def test_cli_report_rebuilds_the_latest_run(tmp_path):
    from colorize.cli import app

    src, dest = tmp_path / "scans", tmp_path / "out"
    _gray_pair(src, dest, "a.png")
    _write_run(dest, [_row(src, "a.png", "colorized", dest)], "20250101T000000Z-000001")
    _write_run(dest, [_row(src, "a.png", "skipped_done", dest)], "20250102T000000Z-000002")

    latest = CliRunner().invoke(app, ["report", str(dest)])
    assert latest.exit_code == 0, latest.output
    assert latest.output.strip() == str(dest / "reports/20250102T000000Z-000002.html")
    chosen = CliRunner().invoke(app, ["report", str(dest), "--run", "20250101T000000Z-000001", "--sample", "0"])
    assert chosen.exit_code == 0 and (dest / "reports/20250101T000000Z-000001.html").exists()
    assert CliRunner().invoke(app, ["report", str(dest), "--run", "nosuch"]).exit_code == 1
    assert CliRunner().invoke(app, ["report", str(dest), "--run", "../x"]).exit_code == 1
    assert CliRunner().invoke(app, ["report", str(tmp_path / "empty")]).exit_code == 1


# --- a real run, in a real browser -------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class Cdp:
    """A minimal Chrome DevTools Protocol client: one page, commands in order, events kept."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=timeout))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        return next(e for e in self.events if e.get("method") == event)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with a fresh profile; yields a CDP client attached to its page."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); .ci/run installs it")
    profile = tmp_path / "chromium-profile"
    with open(tmp_path / "chromium.log", "wb") as log:
        proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        port = _devtools_port(profile, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        cdp = Cdp(page["webSocketDebuggerUrl"])
        yield cdp
        cdp.ws.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The port Chromium chose (``--remote-debugging-port=0``), from the file it writes in its profile."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chromium exited with {proc.returncode}")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.05)
    pytest.fail("chromium did not open its DevTools port")


# What the page shows, as the browser rendered it; each <img> decoded first.
_INSPECT = """(async () => {
  const imgs = [...document.images];
  const widths = await Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0)));
  const rows = sel => [...document.querySelectorAll(sel)].map(tr => [...tr.cells].map(c => c.innerText));
  return {
    counts: Object.fromEntries([...document.querySelectorAll('.counts li')].map(
      li => [li.dataset.status, li.querySelector('b').innerText])),
    countsTop: document.querySelector('.counts').getBoundingClientRect().top,
    failed: rows('#failed tbody tr'),
    skippedColor: rows('#skipped-color tbody tr'),
    captions: [...document.querySelectorAll('figcaption')].map(f => f.innerText),
    widths: widths,
    srcs: imgs.map(i => i.src.slice(0, 23)),
    scripts: document.getElementsByTagName('script').length,
    handlers: [...document.querySelectorAll('*')].flatMap(e => e.getAttributeNames().filter(n => n.startsWith('on'))),
    pwned: typeof window.__pwned,
    text: document.body.innerText,
  };
})()"""


def _screenshot_path(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("REPORT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "report-screenshot.png"


def _make_scans(src: Path) -> None:
    write(src / "harbour.png", encode(gray_image(240, 320, seed=1), "PNG"))
    write(src / "portraits/aunt.jpg", encode(gray_image(320, 240, seed=2), "JPEG", quality=90))
    write(src / "portraits/uncle.jpg", encode(gray_image(300, 300, seed=3), "JPEG", quality=90))
    write(src / HOSTILE_SCRIPT, encode(gray_image(200, 300, seed=4), "PNG"))
    write(src / HOSTILE_IMG, b"<img src=x onerror=window.__pwned=1> is not a picture\n")
    write(src / "bad/truncated.jpg", encode(gray_image(300, 300, seed=5), "JPEG")[:3000])
    write(src / "postcard.jpg", encode(colour_image(200, 300), "JPEG", quality=90))


def test_report_of_a_real_run_in_chromium(prefect_api_url, tiny_model, tmp_path, chromium):
    from flows.colorize_archive import colorize_archive

    src, dest = tmp_path / "scans", tmp_path / "colour"
    _make_scans(src)
    state = colorize_archive(source=str(src), dest=str(dest), model=str(tiny_model), return_state=True)
    summary = state.result()
    assert summary.counts == {"colorized": 4, "failed": 2, "skipped_color": 1}
    page = dest / "reports" / f"{summary.run_id}.html"
    assert summary.report_url == page.as_uri()
    assert summary.report_url in _summary_markdown(state.state_details.flow_run_id)

    for domain in ("Page", "Runtime", "Log", "Network"):
        chromium.send(f"{domain}.enable")
    chromium.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
    chromium.send("Page.navigate", url=page.as_uri())
    chromium.wait_for("Page.loadEventFired")
    seen = chromium.evaluate(_INSPECT)
    shot = chromium.send("Page.captureScreenshot", format="png")
    _screenshot_path(tmp_path).write_bytes(base64.b64decode(shot["data"]))

    # (a) the counts and every failure, as rendered
    assert seen["counts"] == {"colorized": "4", "skipped_done": "0", "skipped_color": "1", "failed": "2", "total": "7"}
    assert seen["countsTop"] < 200
    assert sorted(name for name, _ in seen["failed"]) == sorted([HOSTILE_IMG, "bad/truncated.jpg"])
    assert all(reason for _, reason in seen["failed"])
    assert seen["skippedColor"][0][0] == "postcard.jpg" and "colour" in seen["skippedColor"][0][1]
    # (b) every thumbnail decoded: 4 pairs, inlined
    assert len(seen["widths"]) == 8 and all(0 < w <= 320 for w in seen["widths"])
    assert set(seen["srcs"]) == {"data:image/jpeg;base64,"}
    # (c) hostile names are text, and nothing ran
    assert any(c.startswith(HOSTILE_SCRIPT) for c in seen["captions"])
    assert HOSTILE_SCRIPT in seen["text"] and HOSTILE_IMG in seen["text"]
    assert seen["scripts"] == 0 and seen["handlers"] == [] and seen["pwned"] == "undefined"
    assert "tiny@" in seen["captions"][0] and "320×240" in "".join(seen["captions"])
    assert not [e for e in chromium.events if e["method"] == "Page.javascriptDialogOpening"]
    assert not [e for e in chromium.events if e["method"] == "Runtime.exceptionThrown"]
    violations = [e for e in chromium.events if "Content Security Policy" in json.dumps(e)]
    assert not violations  # nothing on the page tried to load or run anything the policy forbids
    requested = [e["params"]["request"]["url"] for e in chromium.events if e["method"] == "Network.requestWillBeSent"]
    assert all(url.startswith(("file:", "data:")) for url in requested), requested


def _summary_markdown(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["colorize-run-summary"]),
            )
        )
    return str(artifacts[0].data)
