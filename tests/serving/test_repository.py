"""The model repository: only its own top-level folders are models, and loads and unloads
of one model take turns."""

import asyncio
import shutil

import pytest

from netc.errors import UserError
from netc.serving.errors import ModelNotFound, ModelUnavailable
from netc.serving.repository import ModelRepository, next_version_path


@pytest.fixture
def repo(repository, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(repository / "lenet5", root / "lenet5")
    outside = tmp_path / "outside"
    shutil.copytree(repository / "lenet5", outside / "lenet5")
    return root


@pytest.mark.parametrize(
    "name",
    ["../outside/lenet5", "./lenet5", "lenet5/1", "lenet5/", ".", "..", "", "x" * 300],
)
def test_only_a_top_level_folder_is_a_model(repo, tmp_path, name):
    async def scenario():
        repository = ModelRepository(repo)
        with pytest.raises(ModelNotFound, match="no model"):
            await repository.load(name)
        with pytest.raises(ModelNotFound):
            await repository.load(str(tmp_path / "outside" / "lenet5"))
        return repository

    repository = asyncio.run(scenario())
    assert repository.index() == [] or all(e.name == "lenet5" for e in repository.index())
    assert repository.states == {} and repository.ready()


def test_an_unload_sent_during_a_load_wins(repo):
    async def scenario():
        repository = ModelRepository(repo)
        loading = asyncio.create_task(repository.load("lenet5"))
        await asyncio.sleep(0)  # the load has begun
        await repository.unload("lenet5")
        await loading
        state = repository.states["lenet5"]
        await repository.close()
        return state, repository.models

    state, models = asyncio.run(scenario())
    assert (state.state, state.reason) == ("UNAVAILABLE", "unloaded") and models == {}


def test_an_unexpected_failure_leaves_the_model_unavailable_not_loading(repo, monkeypatch):
    from netc.serving import repository as module

    def broken(folder):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(module, "load_config", broken)

    async def scenario():
        repository = ModelRepository(repo)
        with pytest.raises(ModelUnavailable, match="disk on fire"):
            await repository.load("lenet5")
        return repository

    repository = asyncio.run(scenario())
    entry = repository.states["lenet5"]
    assert entry.state == "UNAVAILABLE" and "internal error: RuntimeError: disk on fire" in (
        entry.reason
    )
    assert not repository.loading


def test_export_writes_the_next_version_where_the_server_reads_it(repo):
    """`netc export --repository` and the server share one layout: REPO/NAME/N/model.onnx."""
    (repo / "lenet5" / "07").mkdir()  # a version folder without a model still counts
    target = next_version_path(repo, "lenet5")
    assert target == repo / "lenet5" / "8" / "model.onnx"
    target.parent.mkdir()
    shutil.copy(repo / "lenet5" / "1" / "model.onnx", target)
    repository = ModelRepository(repo)
    asyncio.run(repository.load("lenet5"))
    assert [e.version for e in repository.index()] == ["8"]  # the latest, by default
    assert next_version_path(repo, "digits") == repo / "digits" / "1" / "model.onnx"
    with pytest.raises(UserError, match=r"model name '\.\./x' must be letters"):
        next_version_path(repo, "../x")
