"""What commands say on stderr: notes unless quiet, and last words that a rank of
`netc train --nproc N` hands to its launcher instead."""

import json

from netc import console


def test_say_is_silent_when_quiet(capsys):
    console.say("note: something", quiet=True)
    assert capsys.readouterr().err == ""
    console.say("note: something")
    assert capsys.readouterr().err == "note: something\n"


def test_a_rank_writes_its_last_words_for_the_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.RANK_ERRORS_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    console.final_message("error: no such file", 2)
    assert capsys.readouterr().err == ""
    said = json.loads((tmp_path / "rank3.json").read_text())
    assert said == {"code": 2, "text": "error: no such file"}
    monkeypatch.delenv(console.RANK_ERRORS_ENV)
    console.final_message("error: plain", 2)
    assert capsys.readouterr().err == "error: plain\n"
