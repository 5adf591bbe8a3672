"""The REST port's fixtures: a server with gRPC and HTTP on free ports, and its clients."""

from __future__ import annotations

import shutil

import pytest

from netc.serving.server import BackgroundServer, ServerOptions

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def http_options(**overrides) -> ServerOptions:
    settings = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "http_port": 0}
    return ServerOptions(**{**settings, **overrides})


@pytest.fixture(scope="session")
def http_repo(repository, tmp_path_factory):
    """The exported repository, lenet5 with class names and batching settings."""
    root = tmp_path_factory.mktemp("http") / "repo"
    shutil.copytree(repository, root)
    (root / "lenet5" / "config.yaml").write_text(
        f"labels: {LABELS}\ndynamic_batching: {{max_queue_delay_us: 300, "
        "preferred_batch_sizes: [4, 8]}\n"
    )
    return root


@pytest.fixture(scope="session")
def http_server(http_repo):
    running = BackgroundServer(http_repo, http_options())
    yield running
    running.stop()


@pytest.fixture(scope="session")
def http_url(http_server) -> str:
    return f"127.0.0.1:{http_server.running.http_port}"
