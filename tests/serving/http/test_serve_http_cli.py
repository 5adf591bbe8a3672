"""`netc serve`'s HTTP flags: a busy port is one line naming it; --no-http serves none."""

from __future__ import annotations

import socket

from netc.cli import build_parser, main


def test_a_busy_http_port_is_one_line_naming_it(http_repo, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(
            ["serve", "--repository", str(http_repo), "--host", "127.0.0.1", "--port", "0",
             "--no-metrics", "--http-port", str(port)]
        )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot start the server: cannot serve HTTP on 127.0.0.1:{port}: " + (
        "Address already in use"
    )


def test_http_flags():
    parse = build_parser().parse_args
    assert parse(["serve", "--repository", "r"]).http_port == 8000
    assert parse(["serve", "--repository", "r", "--no-http"]).no_http
