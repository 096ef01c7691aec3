"""The board's /.edgekit-manifest.json is untrusted input (issue 25).

Whoever holds the board (or the drive) can write any manifest: deploy must never act on a path
edgekit could not have put there, never follow a symlink off a CIRCUITPY drive, never remove a
file it did not put there (or that was changed since), and never crash on a malformed manifest.
The drive is a real folder; the REPL path runs against the simulated board.
"""
import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from edgekit.boards import load_board
from edgekit.cli import main
from edgekit.deploy import MANIFEST, DeployError, deploy
from edgekit.sim import SimBoard
from test_deploy import make_bundle, make_firmware

CP_BOARD = "lolin-s2-mini"


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _add_to_manifest(root, entries):
    """Write entries into the manifest on a drive or the sim's flash folder, as an attacker would."""
    path = root / MANIFEST.lstrip("/")
    doc = json.loads(path.read_text())
    doc["files"].update(entries)
    path.write_text(json.dumps(doc))


def _victim(path, text="user data\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [_sha(text.encode()), len(text)]


@pytest.fixture
def drive_setup(tmp_path):
    """(drive, deploy-through-the-CLI) with a first deploy done: the drive sits in tmp/media/."""
    fw, bundles = make_firmware(tmp_path, "circuitpython"), make_bundle(tmp_path, "circuitpython")
    drive = tmp_path / "media" / "CIRCUITPY"
    drive.mkdir(parents=True)

    def run():
        result = CliRunner().invoke(main, ["deploy", CP_BOARD, "--device", "dev-7", "--drive", str(drive),
                                           "--firmware", str(fw), "--bundles", str(bundles)])
        assert "Traceback" not in result.output
        return result

    assert run().exit_code == 0
    return drive, run


def test_the_drive_manifest_cannot_delete_files_off_the_drive(tmp_path, drive_setup):
    # The attack of issue 25, as found: both files outside the drive were deleted, exit 0.
    drive, run = drive_setup
    victim = tmp_path / "media" / "victim.txt"
    victim2 = tmp_path / "victim2.txt"
    _add_to_manifest(drive, {"/../victim.txt": _victim(victim), "/lib/../../../victim2.txt": _victim(victim2)})
    result = run()
    assert victim.read_text() == "user data\n" and victim2.read_text() == "user data\n"
    named = [line for line in result.output.splitlines() if "not trusted" in line]
    assert len(named) == 2, result.output
    assert "'/../victim.txt'" in named[0] and "'/lib/../../../victim2.txt'" in named[1]
    # The poisoned entries are gone from the rewritten manifest: the next deploy is quiet.
    files = json.loads((drive / MANIFEST.lstrip("/")).read_text())["files"]
    assert not any(".." in p for p in files)


def test_a_symlink_on_the_drive_is_never_followed_to_remove(tmp_path, drive_setup):
    drive, run = drive_setup
    outside = tmp_path / "outside"
    entry = _victim(outside / "victim.py")
    (drive / "lib" / "gone").symlink_to(outside, target_is_directory=True)
    _add_to_manifest(drive, {"/lib/gone/victim.py": entry})  # its hash matches: only the symlink tells
    result = run()
    assert (outside / "victim.py").read_text() == "user data\n"
    line = next(line for line in result.output.splitlines() if "/lib/gone/victim.py" in line)
    assert "symlink" in line and "not trusted" in line, result.output


def test_a_symlink_on_the_drive_is_never_followed_to_write(tmp_path):
    fw, bundles = make_firmware(tmp_path, "circuitpython"), make_bundle(tmp_path, "circuitpython")
    drive = tmp_path / "CIRCUITPY"
    drive.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (drive / "lib").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DeployError, match=r"refusing /lib/.*symlink.*leads off the drive"):
        deploy(load_board(CP_BOARD), "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles)
    assert list(outside.iterdir()) == []


def test_a_planted_part_file_is_not_followed(tmp_path):
    fw, bundles = make_firmware(tmp_path, "circuitpython"), make_bundle(tmp_path, "circuitpython")
    drive = tmp_path / "CIRCUITPY"
    drive.mkdir()
    victim = tmp_path / "victim.txt"
    _victim(victim)
    (drive / "code.py.part").symlink_to(victim)  # deploy writes code.py.part, then renames it
    with pytest.raises(DeployError, match=r"refusing /code.py.part: .*symlink.*leads off the drive"):
        deploy(load_board(CP_BOARD), "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles)
    assert victim.read_text() == "user data\n"


def test_a_file_replaced_by_hand_is_not_removed(tmp_path, drive_setup):
    # The manifest says edgekit put /lib/old.py there; the file now holds the user's own code.
    drive, run = drive_setup
    entry = [_sha(b"edgekit's old module\n"), 21]
    _victim(drive / "lib" / "old.py", "# the user's own module\n")
    _victim(drive / "lib" / "older.py", "edgekit's old module\n")  # unchanged since: edgekit's to remove
    _add_to_manifest(drive, {"/lib/old.py": entry, "/lib/older.py": entry})
    result = run()
    assert result.exit_code == 0, result.output
    assert (drive / "lib" / "old.py").read_text() == "# the user's own module\n"
    assert not (drive / "lib" / "older.py").exists()
    assert "kept /lib/old.py" in result.output and "1 to remove" in result.output
    files = json.loads((drive / MANIFEST.lstrip("/")).read_text())["files"]
    assert "/lib/old.py" not in files and "/lib/older.py" not in files


MALFORMED = [
    ("[1, 2]", "not a JSON object"),
    ("{\"version\": 1, \"files\": [\"/code.py\"]}", "'files' is not an object"),
    ("{\"version\": 1, \"files\": {\"/code.py\": \"abc\"}}", "'/code.py' is not [sha256, size]"),
    ("{\"version\": 1, \"files\": {\"/code.py\": [1, 2, 3]}}", "'/code.py' is not [sha256, size]"),
    ("{\"version\": 1, \"files\": {\"/code.py\": [\"%s\", -1]}}" % ("0" * 64), "is not [sha256, size]"),
    ("{\"version\": \"1\", \"files\": {}}", "version"),
    ("{not json", "not a JSON object"),
]


@pytest.mark.parametrize("text, why", MALFORMED)
def test_a_malformed_drive_manifest_is_no_manifest(tmp_path, text, why):
    fw, bundles = make_firmware(tmp_path, "circuitpython"), make_bundle(tmp_path, "circuitpython")
    drive = tmp_path / "CIRCUITPY"
    drive.mkdir()
    (drive / MANIFEST.lstrip("/")).write_text(text)
    said = []
    result = deploy(load_board(CP_BOARD), "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles,
                    progress=said.append)
    line = next(s for s in said if "treated as no manifest" in s)
    assert why in line and "not trusted" in line
    assert "/code.py" in result.copied
    assert json.loads((drive / MANIFEST.lstrip("/")).read_text())["version"] == 1


# --- the REPL path, against the simulated board ---

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    # One board for the module: each test writes its own manifest first.
    board = SimBoard(tmp_path_factory.mktemp("sim") / "flash", heap="192K").start()
    yield board
    board.stop()


def _repl_deploy(tmp_path, sim, **kw):
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    said = []
    result = deploy(load_board("sim"), "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
                    build_dir=tmp_path / "build", reset=False, progress=said.append, **kw)
    return result, said


def test_the_boards_manifest_cannot_name_paths_edgekit_never_writes(tmp_path, sim):
    _repl_deploy(tmp_path, sim)
    beside = sim.flash.parent / "victim.txt"  # on the host, beside the sim's flash folder
    hostile = {"/../victim.txt": _victim(beside), "/lib/../../victim.txt": _victim(beside),
               "/etc/passwd": ["0" * 64, 1], "/lib/x\u0000.py": ["0" * 64, 1], "lib/rel.py": ["0" * 64, 1]}
    _victim(sim.flash / "etc" / "passwd")  # a file that exists, but not one deploy ever puts there
    _add_to_manifest(sim.flash, hostile)
    result, said = _repl_deploy(tmp_path / "again", sim)
    assert beside.read_text() == "user data\n" and (sim.flash / "etc" / "passwd").exists()
    assert result.removed == []
    ignored = [s for s in said if "not trusted" in s]
    assert len(ignored) == len(hostile), said
    for path in hostile:
        assert sum(repr(path) in s for s in ignored) == 1, (path, ignored)
    assert any("0 to remove" in s for s in said)


def test_the_boards_manifest_removes_only_what_edgekit_put_there_unchanged(tmp_path, sim):
    _repl_deploy(tmp_path, sim)
    entry = [_sha(b"edgekit's old module\n"), 21]
    _victim(sim.flash / "lib" / "old.py", "# mine, 21 bytes long\n"[:21])  # same size, other content
    _victim(sim.flash / "lib" / "older.py", "edgekit's old module\n")
    # A folder named as a file is nothing to hash or remove, not a failed deploy.
    _add_to_manifest(sim.flash, {"/lib/old.py": entry, "/lib/older.py": entry, "/lib/azure_edge": entry})
    result, said = _repl_deploy(tmp_path / "again", sim)
    assert (sim.flash / "lib" / "old.py").exists() and not (sim.flash / "lib" / "older.py").exists()
    assert (sim.flash / "lib" / "azure_edge" / "__init__.mpy").exists()
    assert result.removed == ["/lib/older.py"]
    assert any(s.startswith("kept /lib/old.py") for s in said), said


# The shapes that crashed the board's own helpers: the checks beyond are the drive's, shared.
@pytest.mark.parametrize("text, why", [MALFORMED[0], MALFORMED[1], MALFORMED[-1], (
    "{\"version\": 1, \"files\": {\"/main.py\": 7}}", "'/main.py' is not [sha256, size]")])
def test_a_malformed_board_manifest_is_no_manifest(tmp_path, sim, text, why):
    _repl_deploy(tmp_path, sim)
    (sim.flash / MANIFEST.lstrip("/")).write_text(text)
    result, said = _repl_deploy(tmp_path / "again", sim)
    line = next(s for s in said if "treated as no manifest" in s)
    assert why in line, line
    assert result.copied == []  # every file hashed on the board instead: all up to date
    files = json.loads((sim.flash / MANIFEST.lstrip("/")).read_text())["files"]
    assert "/main.py" in files and all(isinstance(v, list) for v in files.values())


def test_a_huge_board_manifest_is_no_manifest(tmp_path, sim):
    _repl_deploy(tmp_path, sim)
    with open(sim.flash / MANIFEST.lstrip("/"), "w") as f:
        f.write('{"version": 1, "files": {' + " " * (2 << 20) + "}}")
    result, said = _repl_deploy(tmp_path / "again", sim)
    assert any("treated as no manifest" in s for s in said), said
    assert os.path.getsize(sim.flash / MANIFEST.lstrip("/")) < 10000
