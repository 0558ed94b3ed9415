"""Adapter directories: `--adapters` repeats (and so does UNITRANS_ADAPTERS), the shipped
directory stays served beside the user's, and a name in two directories is refused at
start with both paths named (and per request with a 409 if such a file appears later)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from client import Client, ConflictError, NotFoundError
from server import __main__ as server_main
from server import settings as settings_mod
from server.registry import AdapterDirError, find_adapter_files
from server.settings import DEFAULT_ADAPTERS, Settings
from tests.test_server_harness import images, running_server, tiny_world

IMG = images(1, seed=3)[0]


def test_flag_repeats_and_the_shipped_directory_comes_last():
    s = Settings(**server_main.parse(["--adapters", "/a", "--adapters", "/b"]))
    assert s.adapters == [Path("/a"), Path("/b")]
    assert s.adapter_dirs() == [Path("/a"), Path("/b"), DEFAULT_ADAPTERS]
    s = Settings(**server_main.parse(["--adapters", "/a", "--no-shipped-adapters"]))
    assert s.adapter_dirs() == [Path("/a")]
    # the shipped directory given again is served once
    assert Settings(adapters=[DEFAULT_ADAPTERS]).adapter_dirs() == [DEFAULT_ADAPTERS]


def test_environment_form(monkeypatch):
    monkeypatch.setenv("UNITRANS_ADAPTERS", '["/x", "/y"]')
    assert Settings().adapters == [Path("/x"), Path("/y")]
    monkeypatch.setenv("UNITRANS_ADAPTERS", "/x,/y")
    assert Settings().adapters == [Path("/x"), Path("/y")]
    monkeypatch.setenv("UNITRANS_SHIPPED_ADAPTERS", "false")
    assert Settings().adapter_dirs() == [Path("/x"), Path("/y")]


def _dir(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir()
    for new, old in files.items():
        shutil.copy(tiny_world() / "adapters" / f"{old}.safetensors", d / f"{new}.safetensors")
    return d


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's startup exit
def test_a_name_in_two_directories_is_refused_at_start_naming_both(tmp_path, capsys):
    a = _dir(tmp_path, "a", {"mine": "vqa", "other": "caption"})
    b = _dir(tmp_path, "b", {"mine": "vqa-b"})
    with pytest.raises(AdapterDirError) as err:
        find_adapter_files([a, b])
    assert str(a / "mine.safetensors") in str(err.value) and str(b / "mine.safetensors") in str(err.value)
    world = tiny_world()
    argv = ["--backbone", str(world / "backbone"), "--adapters", str(a), "--adapters", str(b), "--port", "0"]
    assert server_main.main(argv) == 2
    out = capsys.readouterr().err
    assert "mine" in out and str(a / "mine.safetensors") in out and str(b / "mine.safetensors") in out
    assert server_main.main(["--backbone", str(world / "backbone"), "--adapters", str(tmp_path / "nope")]) == 2
    assert "adapter directory not found" in capsys.readouterr().err
    # the app refuses too (create_app used without python -m server): the lifespan fails to start
    with pytest.raises(RuntimeError):
        with running_server(adapters=[a, b]):
            pass


def test_shipped_defaults_stay_served_beside_a_users_directory(tmp_path, monkeypatch):
    # the tiny world's adapters stand in for models/adapters (they fit the tiny backbone)
    monkeypatch.setattr(settings_mod, "DEFAULT_ADAPTERS", tiny_world() / "adapters")
    mine = _dir(tmp_path, "mine", {"my-vqa": "vqa-b"})
    later = _dir(tmp_path, "later", {})
    with running_server(adapters=[mine, later], shipped_adapters=True) as url, Client(url) as c:
        listed = {a["name"] for a in c.adapters()["adapters"]}
        assert {"my-vqa", "vqa", "caption", "retrieval"} <= listed
        assert c.ready()["defaults"] == {"caption": "caption", "retrieve": "retrieval", "vqa": "vqa",
                                          "video-retrieve": "retrieval", "video-vqa": "vqa"}
        assert c.vqa(IMG, "is there a star ?")["adapter"] == "vqa"
        assert c.vqa(IMG, "is there a star ?", adapter="vqa")["adapter"] == "vqa"
        assert c.vqa(IMG, "is there a star ?", adapter="my-vqa")["adapter"] == "my-vqa"
        with pytest.raises(NotFoundError):
            c.vqa(IMG, "is there a star ?", adapter="missing")
        # a clashing file dropped in after start: refused per request, the paths only in the log
        c.unload_adapter("my-vqa")
        shutil.copy(mine / "my-vqa.safetensors", later / "my-vqa.safetensors")
        with pytest.raises(ConflictError) as err:
            c.vqa(IMG, "is there a star ?", adapter="my-vqa")
        assert "2 adapter directories" in err.value.message and str(tmp_path) not in err.value.message
