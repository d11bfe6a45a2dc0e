"""The manufacturer's and publisher's commands end to end: format, burn, master, press, inspect."""

from __future__ import annotations

import json
import os

import pytest

from vhw.devices import card as card_dev
from vhw.formats.common import BLOCK_SIZE

from .conftest import source_files


def test_master_press_info_extract(cli, title_src, tmp_path):
    r = cli("disc", "master", title_src, "-o", tmp_path / "t.master", "--title-id", "vhw-00001")
    assert r.code == 0, r
    r = cli("disc", "press", tmp_path / "t.master", "--count", "2", "-o", tmp_path / "discs")
    assert r.code == 0, r
    discs = sorted((tmp_path / "discs").iterdir())
    assert len(discs) == 2
    infos = []
    for d in discs:
        r = cli("disc", "info", d, "--json")
        assert r.code == 0, r
        infos.append(json.loads(r.out))
    assert {i["title_id"] for i in infos} == {"VHW-00001"}
    assert all(i["mid"] and i["mid"].startswith("MD-") and i["pressing"] == "mid" for i in infos)
    assert infos[0]["mid"] != infos[1]["mid"]
    assert infos[0]["name"] == "Sample" and infos[0]["kind"] == "game"
    text = cli("disc", "info", discs[0])
    assert infos[0]["mid"] in text.out and "VHW-00001" in text.out
    # two pressed discs differ only in the MID area (block 1)
    a, b = discs[0].read_bytes(), discs[1].read_bytes()
    assert len(a) == len(b)
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    assert diff and BLOCK_SIZE <= diff[0] and diff[-1] < 2 * BLOCK_SIZE
    # and they verify; the publisher's extract gives the source back byte for byte
    assert cli("disc", "verify", discs[0]).code == 0
    assert cli("disc", "extract", discs[1], "-o", tmp_path / "out").code == 0
    assert source_files(tmp_path / "out") == source_files(title_src)


def test_master_refuses_a_second_master_of_one_title(cli, title_src, tmp_path):
    assert cli("disc", "master", title_src, "-o", tmp_path / "a", "--title-id", "T-1").code == 0
    r = cli("disc", "master", title_src, "-o", tmp_path / "b", "--title-id", "T-1")
    assert r.code == 9 and "already mastered" in r.err
    assert not (tmp_path / "b").exists()
    r = cli("disc", "master", title_src, "-o", tmp_path / "a", "--title-id", "T-2")
    assert r.code == 3 and "already exists" in r.err


def test_press_without_mid_and_bad_input(cli, title_src, tmp_path):
    assert cli("disc", "master", title_src, "-o", tmp_path / "m", "--title-id", "T-3").code == 0
    assert cli("disc", "press", tmp_path / "m", "--no-mid", "-o", tmp_path / "d").code == 0
    [disc] = (tmp_path / "d").iterdir()
    info = json.loads(cli("disc", "info", disc, "--json").out)
    assert info["mid"] is None and info["pressing"] == "no-mid"
    r = cli("disc", "press", disc, "-o", tmp_path / "d2")
    assert r.code == 3 and "not a master" in r.err
    r = cli("disc", "master", title_src, "-o", tmp_path / "x", "--title-id", "bad id!")
    assert r.code == 2 and "not a title ID" in r.err
    r = cli("disc", "press", tmp_path / "m", "-o", tmp_path / "d3", "--keystore", tmp_path / "elsewhere")
    assert r.code == 9 and "no keys for title" in r.err


def test_factory_commands(cli, tmp_path):
    r = cli("card", "format", tmp_path / "c.card")
    assert r.code == 0 and "MC-" in r.out
    card = card_dev.load(tmp_path / "c.card")
    assert oct((tmp_path / "c.card").stat().st_mode & 0o777) == "0o600"
    info = cli("card", "info", tmp_path / "c.card", "--json")
    assert info.code == 0 and json.loads(info.out)["mc_id"] == str(card.mc_id)
    for form in (card.mc_key.hex(), card.mc_key.hex().upper()):
        assert form not in info.out and form not in cli("card", "info", tmp_path / "c.card").out

    r = cli("hdd", "format", tmp_path / "h.hdd")
    assert r.code == 0 and "HD-" in r.out
    st = (tmp_path / "h.hdd").stat()
    assert st.st_size == 40 * 10**9 and st.st_blocks * 512 < 1024 * 1024  # sparse
    info = json.loads(cli("hdd", "info", tmp_path / "h.hdd", "--json").out)
    assert info["titles"] == [] and info["nominal_size"] == 40 * 10**9
    assert cli("hdd", "fsck", tmp_path / "h.hdd").code == 0
    r = cli("hdd", "format", tmp_path / "h.hdd", "--size", "1G")
    assert r.code == 3 and "already exists" in r.err
    r = cli("hdd", "format", tmp_path / "h2.hdd", "--size", "lots")
    assert r.code == 2 and "not a size" in r.err

    r = cli("console", "rom", tmp_path / "r.rom", "--server", "https://127.0.0.1:8443")
    assert r.code == 0 and "CL-" in r.out
    info = json.loads(cli("console", "info", tmp_path / "r.rom", "--json").out)
    assert info["client_id"] in r.out and info["server_url"] == "https://127.0.0.1:8443"
    r = cli("console", "rom", tmp_path / "r2.rom", "--ca", tmp_path / "c.card")
    assert r.code == 3 and "not an X.509 certificate" in r.err


def test_every_command_has_help(cli):
    from vhw.cli import vhw

    vhw.load_all()

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            yield prefix + [name]
            if hasattr(cmd, "commands"):
                yield from walk(cmd, prefix + [name])

    for path in walk(vhw, []):
        r = cli(*path, "--help")
        assert r.code == 0 and "Usage:" in r.out, path
        assert len(r.out.split("\n\n")) >= 2, path  # a description, not just usage


def test_unexpected_errors_are_one_line(cli, tmp_path, monkeypatch):
    from vhw.publisher import mastering

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(mastering, "scan", boom)
    r = cli("disc", "master", tmp_path, "-o", tmp_path / "x", "--title-id", "T-9")
    assert r.code == 1 and r.err.count("\n") == 1 and "internal error" in r.err
    os.environ.pop("VHW_DEBUG", None)


def test_the_readmes_exit_codes_are_the_programs():
    """The README's exit-code table is vhw.errors.EXIT_CODES, row for row."""
    from pathlib import Path

    from vhw.errors import EXIT_CODES

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| code")]
    assert rows == [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES]


def test_every_group_says_all_it_does():
    """Each group's help names every command it has (a command added without a word in its
    group's help fails here)."""
    import click

    from vhw.cli import vhw

    vhw.load_all()

    def groups(g, path):
        if isinstance(g, click.Group):
            yield " ".join(path) or "vhw", g
            for name, c in g.commands.items():
                yield from groups(c, [*path, name])

    for name, g in groups(vhw, []):
        missing = [n for n, c in g.commands.items() if not c.hidden and f"`{n}`" not in (g.help or "")]
        assert not missing, f"`vhw {name} --help` does not say what {missing} do"


def test_every_exit_path_is_in_the_table():
    """Walks every way the CLI can end: each error class anywhere in the package (every module
    imported), each number `run` returns itself, and any `exit(N)` a command calls. Every code is
    in `vhw.errors.EXIT_CODES` (the README's table, kept equal by the test above)."""
    import ast
    import importlib
    import inspect
    import pkgutil
    from pathlib import Path

    import vhw
    from vhw import cli
    from vhw.errors import EXIT_CODES, VhwError

    for module in pkgutil.walk_packages(vhw.__path__, "vhw."):
        if module.name != "vhw.__main__":  # (runs the CLI)
            importlib.import_module(module.name)
    documented = {code for code, _ in EXIT_CODES}

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    classes = [VhwError, *subclasses(VhwError)]
    assert len(classes) > 20
    for cls in classes:
        assert cls.exit_code in documented, f"{cls.__module__}.{cls.__name__} exits {cls.exit_code}, not in the table"
    returns = {
        n.value.value
        for n in ast.walk(ast.parse(inspect.getsource(cli.run)))
        if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant)
    }
    assert returns == {1, 130, 141} and returns <= documented
    for path in Path(vhw.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "exit" and node.args:
                arg = node.args[0]
                assert isinstance(arg, ast.Call) or (isinstance(arg, ast.Constant) and arg.value in documented), (
                    f"{path}:{node.lineno} exits with a code of its own"
                )


@pytest.mark.parametrize("option", ["--console", "--slot=2", "--save-slot"])
def test_play_refuses_its_own_options_after_the_title_id(cli, tmp_path, option):
    """Everything after the title ID goes to the title; one of play's own options there would have
    run another console's title, or the title with an option it does not know: refused, nothing run."""
    r = cli("console", "play", "VHW-GAME-1", "--moves", "dd", option, str(tmp_path))
    assert r.code == 2 and "comes after the title ID" in r.err and option.split("=")[0] in r.err, r
    assert "Traceback" not in r.err and r.out == ""


def _path_parameters():
    """(command, parameter) for every path a command takes."""
    import click

    from vhw.cli import vhw

    vhw.load_all()

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            for param in cmd.params:
                if isinstance(param.type, click.Path):
                    yield " ".join(path), cmd, param

    return list(walk(vhw, []))


def test_no_path_a_command_takes_is_a_fifo_or_a_link_to_nothing(tmp_path):
    """Reading or writing a FIFO waits for another program without a word (the same hangs for a
    device that never answers): every path parameter of every command refuses one, and a link to
    nothing, in click's one line, before the command runs. The control: a regular file and a
    folder pass the same check where the parameter takes them."""
    import click

    fifo, dangling, regular = tmp_path / "fifo", tmp_path / "dangling", tmp_path / "regular"
    os.mkfifo(fifo)
    dangling.symlink_to(tmp_path / "nowhere")
    regular.write_bytes(b"x")
    params = _path_parameters()
    assert len(params) > 60  # (every command's, not a few)
    for name, cmd, param in params:
        ctx = click.Context(cmd)
        for bad in (fifo, dangling):
            with pytest.raises(click.BadParameter):
                param.type.convert(str(bad), param, ctx)
        for good in (regular, tmp_path):
            ok = param.type.dir_okay if good.is_dir() else param.type.file_okay
            if ok and not param.type.exists:
                assert param.type.convert(str(good), param, ctx) == good, (name, param.name)


def test_a_fifo_is_refused_at_once_in_one_line(tmp_path):
    """End to end, in a child process with a deadline: what hung before (a card's saves, a ROM's
    CA, a backup to restore, the OpenAPI document written into a FIFO)."""
    from .conftest import vhw_subprocess

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (
        ("card", "saves", "ls", fifo),
        ("console", "rom", tmp_path / "r.rom", "--ca", fifo),
        ("server", "restore", fifo, "--home", tmp_path / "home"),
        ("server", "openapi", "-o", fifo),
    ):
        r = vhw_subprocess(*args, timeout=60)
        assert r.code == 2 and "neither a file nor a folder" in r.err, args
        assert r.err.strip().splitlines()[-1].startswith("Error: "), args


def test_devices_and_records_open_only_regular_files(tmp_path):
    """Below the command line too (a console folder's or a config's path is not a parameter):
    a device image or a JSON record that is a FIFO is refused on its descriptor, without waiting."""
    from vhw.broker.config import BrokerConfig
    from vhw.devices.card import CardImage
    from vhw.devices.disc import DiscImage
    from vhw.devices.hdd import HddImage
    from vhw.errors import FileError, ImageError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for open_ in (CardImage.open, DiscImage.open, HddImage.open):
        with pytest.raises(ImageError, match="not a regular file"):
            open_(fifo)
    with pytest.raises(FileError, match="not a regular file"):
        BrokerConfig.load(fifo)


def test_a_record_of_another_kind_is_named_in_its_own_words(tmp_path):
    """A JSON record with other keys (a server's config.json given to the broker) is refused
    naming the key, not the class that would not take it."""
    from vhw.broker.config import BrokerConfig
    from vhw.errors import FileError

    path = tmp_path / "config.json"
    for text, words in (
        ('{"server": "https://x", "url": "https://y"}', "a key 'url' it does not have"),
        ("{}", "without 'server'"),
        ("[1]", "not a JSON object"),
    ):
        path.write_text(text)
        with pytest.raises(FileError) as refused:
            BrokerConfig.load(path)
        assert words in str(refused.value) and "__init__" not in str(refused.value)


def test_a_password_not_given_is_read_from_a_pipe_or_refused_in_one_line(tmp_path):
    """Without --password and without a terminal: a password piped in is taken (the control: the
    command goes on to its next check, the missing broker), nothing to read is refused in click's
    one line, not a prompt on nothing or Python's warning that it cannot hide what is typed."""
    import subprocess
    import sys

    home = tmp_path / "none"
    for command in (("broker", "account", "add", "x", "--home", home), ("console", "account", "x", "--console", home)):
        run = [sys.executable, "-m", "vhw", *map(str, command)]
        nothing = subprocess.run(run, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert nothing.returncode == 2 and "'--password': not given" in nothing.stderr, nothing
        assert "Warning" not in nothing.stderr
        piped = subprocess.run(run, input="a piped passphrase\n", capture_output=True, text=True, timeout=60)
        assert piped.returncode != 2 and "--password" not in piped.stderr and "Warning" not in piped.stderr, piped
