"""The HTML report: offline, and every file it refers to exists."""

from __future__ import annotations

from html.parser import HTMLParser

from nets import make_run, write_picture

from netc.cli import main


class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.found += [value for key, value in attrs if key in ("src", "href") and value]


def references(page) -> References:
    parser = References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_report_refers_only_to_files_beside_it(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    pictures = [write_picture(tmp_path / f"p{i}.png", (8, 8 + i)) for i in range(3)]
    report = tmp_path / "report"
    args = ["inspect", str(run), "--report", str(report)]
    for p in pictures:
        args += ["--image", str(p)]
    assert main(args) == 0
    page = report / "index.html"
    assert f"wrote {page}" in capsys.readouterr().out
    parsed = references(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags
    assert "://" not in page.read_text(encoding="utf-8")  # nothing fetched from anywhere
    assert parsed.found, "the report shows no picture"
    for name in parsed.found:
        assert "/" not in name and (report / name).is_file(), name
    shown = set(parsed.found)
    assert {
        "curves.png",
        "filters_conv1.png",
        "features_conv2.png",
        "class_map.png",
        "receptive_field_conv2.png",
        "top_conv2.png",
    } <= shown
    assert sorted(p.name for p in report.iterdir()) == sorted(shown | {"index.html"})


def test_report_without_pictures_says_how_to_get_them(tmp_path):
    run = make_run(tmp_path / "run")
    assert main(["inspect", str(run), "--report", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "give --image FILE or --data DATASET" in text
    assert [name for name in references(tmp_path / "r" / "index.html").found] == [
        "curves.png",
        "filters_conv1.png",
    ]


def test_report_renders_in_a_headless_browser(tmp_path):
    """The page as a browser draws it, offline: its pictures load (a broken image would
    leave the page mostly white)."""
    import shutil
    import subprocess

    import numpy as np
    import pytest
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine")
    run = make_run(tmp_path / "run")
    picture = write_picture(tmp_path / "p.png")
    assert (
        main(["inspect", str(run), "--report", str(tmp_path / "r"), "--image", str(picture)]) == 0
    )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            (tmp_path / "r" / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 128).mean() > 0.03  # curves, tables and pictures, not an empty page
