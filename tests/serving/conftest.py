"""Shared serving fixtures: a model repository exported with the real CLI."""

import pytest

from netc.cli import main


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    """REPO with lenet5 (classifier, fixed 1x32x32) and tinyseg (segmentation, open H/W)."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("lenet5", "tinyseg"):
        assert main(["export", name, "--repository", str(root), "--name", name, "--no-verify"]) == 0
    return root
