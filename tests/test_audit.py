"""The hash-chained audit log: chaining, tamper detection, concurrent writers."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from symbi_jupyter.audit import (
    GENESIS,
    AuditLog,
    VerifyReport,
    canonical_json,
    record_hash,
    sha256_text,
    verify,
)
from symbi_jupyter.limits import ResourceLimits
from symbi_jupyter.tiers import SecurityTier


def make_log(path: Path, n: int = 6) -> list[bytes]:
    log = AuditLog(path)
    for i in range(n):
        log.append({"event": "execute", "tier": "Tier1", "i": i, "code": sha256_text(str(i))})
    return path.read_bytes().splitlines(keepends=True)


def test_records_carry_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    written = [log.append({"event": "execute", "n": n}) for n in range(3)]

    lines = path.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == written
    assert [r["seq"] for r in written] == [1, 2, 3]
    assert written[0]["prev"] == GENESIS == "0" * 64
    for earlier, record in zip(lines, written[1:], strict=False):
        assert record["prev"] == hashlib.sha256(earlier).hexdigest()
    for record in written:
        body = {k: v for k, v in record.items() if k != "hash"}
        expected = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        assert record["hash"] == expected == record_hash(record)
        when = datetime.datetime.fromisoformat(record["time"])
        assert when.utcoffset() == datetime.timedelta(0)
        assert len(record["time"].split(".")[1].split("+")[0]) == 6  # microseconds
        assert record["user"] == pwd.getpwuid(os.getuid()).pw_name
        assert record["event"] == "execute"
    assert verify(path) == VerifyReport(ok=True, records=3)


def test_each_line_is_canonical_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    record = AuditLog(path).append({"z": 1, "a": "é"})
    assert path.read_bytes() == canonical_json(record).encode("utf-8") + b"\n"


def test_caller_fields_are_not_constrained_but_chain_fields_are_reserved(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    record = log.append(
        {
            "tier": SecurityTier.TIER2,
            "limits": ResourceLimits(max_memory_mb=256, timeout_seconds=5),
            "workdir": Path("/tmp/run"),
            "outcome": {"exit_code": -9, "killed_by": "memory", "durations": [0.5, 1.25]},
            "code": "print('\udcff')",  # lone surrogate from surrogateescape
        }
    )
    assert record["tier"] == "Tier2"
    assert record["limits"]["max_memory_mb"] == 256
    assert record["workdir"] == "/tmp/run"
    assert record["outcome"]["killed_by"] == "memory"
    assert verify(log.path).ok
    for reserved in ("time", "user", "seq", "prev", "hash"):
        with pytest.raises(ValueError, match=reserved):
            log.append({reserved: "forged"})
    assert verify(log.path).records == 1


def test_file_is_0600_and_new_parents_0700(tmp_path):
    path = tmp_path / "a" / "b" / "audit.jsonl"
    AuditLog(path).append({"event": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_sha256_text():
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_text("abc") == sha256_text(b"abc") == abc
    raw = b"\xff\xfeok"
    assert sha256_text(raw.decode("utf-8", "surrogateescape")) == sha256_text(raw)
    assert sha256_text("é") == hashlib.sha256("é".encode()).hexdigest()


# --- tampering --------------------------------------------------------------------------


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def check_broken(path: Path, line: int, reason: str) -> VerifyReport:
    report = verify(path)
    assert not report.ok
    assert report.broken_at == line
    assert reason in report.reason
    assert report.records == line - 1
    assert str(report).startswith(f"BROKEN at line {line}: ")
    return report


def test_editing_one_byte_of_a_middle_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    assert b'"i":2' in lines[2]
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')
    rewrite(path, lines)
    check_broken(path, 3, "hash mismatch")


def test_editing_a_record_and_recomputing_its_hash(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    record = json.loads(lines[2])
    record["tier"] = "Tier3"
    record["hash"] = record_hash(record)
    lines[2] = canonical_json(record).encode() + b"\n"
    rewrite(path, lines)
    check_broken(path, 4, "prev mismatch")


def test_editing_the_chain_fields(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    record = json.loads(lines[4])
    record["prev"] = GENESIS
    lines[4] = canonical_json(record).encode() + b"\n"
    rewrite(path, lines)
    check_broken(path, 5, "hash mismatch")


def test_deleting_a_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    del lines[3]
    rewrite(path, lines)
    check_broken(path, 4, "deleted")


def test_deleting_the_first_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    rewrite(path, lines[1:])
    check_broken(path, 1, "deleted")


def test_swapping_two_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    lines[2], lines[3] = lines[3], lines[2]
    rewrite(path, lines)
    check_broken(path, 3, "reordered")


def test_truncating_the_last_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    rewrite(path, [*lines[:-1], lines[-1][:-10]])
    check_broken(path, 6, "truncated")


def test_dropping_only_the_final_newline(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    rewrite(path, [*lines[:-1], lines[-1][:-1]])
    check_broken(path, 6, "incomplete")


def test_a_record_cut_short_in_the_middle(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    lines[2] = lines[2][: len(lines[2]) // 2] + b"\n"
    rewrite(path, lines)
    check_broken(path, 3, "not a JSON record")


def test_appending_garbage(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    rewrite(path, [*lines, b"rm -rf / # nothing to see\n"])
    check_broken(path, 7, "not a JSON record")


@pytest.mark.parametrize(
    "junk, reason",
    [
        (b"\n", "not a JSON record"),
        (b"[1, 2]\n", "not a JSON record"),
        (b"\xff\xfe\n", "not a JSON record"),
        (b'{"seq": 3, "prev": "x"}\n', "missing field 'hash'"),
    ],
)
def test_inserted_lines(tmp_path, junk, reason):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    lines.insert(2, junk)
    rewrite(path, lines)
    check_broken(path, 3, reason)


def test_inserting_a_forged_record_with_a_valid_hash(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    forged = {"event": "execute", "seq": 3, "prev": hashlib.sha256(lines[1][:-1]).hexdigest()}
    forged["hash"] = record_hash(forged)
    lines.insert(2, canonical_json(forged).encode() + b"\n")
    rewrite(path, lines)
    check_broken(path, 4, "seq 3, expected 4")


# --- the anchor: the end of the log and a rewritten chain ------------------------------


def check_unanchored(path: Path, reason: str) -> VerifyReport:
    report = verify(path)
    assert not report.ok and reason in report.reason, report
    return report


def test_cutting_whole_records_off_the_end(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path)
    rewrite(path, lines[:4])  # the chain that is left is intact
    report = check_unanchored(path, "cut off the end: the anchor names record 6, the log ends at 4")
    assert str(report).startswith("BROKEN: records were cut off")
    rewrite(path, [])
    check_unanchored(path, "the log ends at 0")


@pytest.mark.parametrize("n", [3, 6, 9])
def test_a_rewritten_chain(tmp_path, n):
    """A fresh, self-consistent chain in place of the log: shorter, as long, longer."""
    path = tmp_path / "audit.jsonl"
    make_log(path)
    forged = tmp_path / "forged" / "audit.jsonl"
    rewrite(path, make_log(forged, n))
    reason = "cut off the end" if n < 6 else "rewritten: this is not the record"
    check_unanchored(path, reason)


def test_a_forged_or_missing_anchor(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 6)
    head = Path(f"{path}.head")
    mine = json.loads(head.read_bytes())
    forged = tmp_path / "forged" / "audit.jsonl"
    lines = make_log(forged, 3)
    rewrite(path, lines)
    # Name the forged chain's last record, with the old MAC or one from another key.
    for mac in (mine["mac"], json.loads(Path(f"{forged}.head").read_bytes())["mac"]):
        head.write_text(
            json.dumps({"seq": 3, "hash": hashlib.sha256(lines[-1][:-1]).hexdigest(), "mac": mac})
        )
        check_unanchored(path, "forged or edited (MAC mismatch)")
    head.unlink()
    check_unanchored(path, "audit.jsonl.head is missing")
    Path(f"{path}.key").unlink()
    check_unanchored(path, "no anchor (audit.jsonl.head, audit.jsonl.key) beside the log")


def test_records_appended_without_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path, 4)
    forged = {"event": "execute", "seq": 5, "prev": hashlib.sha256(lines[-1][:-1]).hexdigest()}
    forged["hash"] = record_hash(forged)
    rewrite(path, [*lines, canonical_json(forged).encode() + b"\n"])
    report = check_unanchored(path, "1 record(s) after the anchor")
    assert report.broken_at == 5 and report.records == 4


def test_the_anchor_is_the_writers_alone(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, 2)
    for name in ("audit.jsonl.head", "audit.jsonl.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert len(bytes.fromhex(Path(f"{path}.key").read_text())) == 32


def test_missing_and_empty_files(tmp_path):
    missing = verify(tmp_path / "absent.jsonl")
    assert (missing.ok, missing.records, missing.broken_at, missing.reason) == (
        False,
        0,
        None,
        "no such file",
    )
    assert str(missing) == "BROKEN: no such file"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert verify(empty) == VerifyReport(ok=True, records=0)
    assert str(verify(empty)) == "intact: 0 records"


def test_report_strings(tmp_path):
    path = tmp_path / "audit.jsonl"
    make_log(path, n=1)
    assert str(verify(path)) == "intact: 1 record"
    make_log(path, n=11)
    assert str(verify(path)) == "intact: 12 records"
    report = VerifyReport(False, 4, 5, "record was edited (hash mismatch)")
    assert str(report) == "BROKEN at line 5: record was edited (hash mismatch)"


def test_append_after_a_torn_line_keeps_the_break_visible(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = make_log(path, n=3)
    with open(path, "ab") as f:
        f.write(b'{"event":"exec')  # a writer died mid-line
    record = AuditLog(path).append({"event": "after"})

    new_lines = path.read_bytes().splitlines()
    assert len(new_lines) == 5
    assert json.loads(new_lines[4]) == record
    assert record["seq"] == 5
    assert record["prev"] == hashlib.sha256(b'{"event":"exec').hexdigest()
    check_broken(path, 4, "not a JSON record")
    assert lines == path.read_bytes().splitlines(keepends=True)[:3]


def test_append_continues_a_long_log(tmp_path):
    # Longer than one read block, so the last line is found across block boundaries.
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    for i in range(40):
        log.append({"i": i, "blob": "x" * 700})
    assert log.append({"i": 40})["seq"] == 41
    assert verify(path) == VerifyReport(ok=True, records=41)


# --- concurrency ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from symbi_jupyter.audit import AuditLog

    path, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = AuditLog(path)
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go", so processes and threads write at once
    for i in range(count):
        log.append({"writer": writer, "i": i, "pid": __import__("os").getpid()})
    """
)


def test_threads_and_processes_lose_nothing(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    threads_n, per_thread, procs_n, per_proc = 16, 50, 4, 100

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), f"proc{p}", str(per_proc)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(procs_n)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"

    barrier = threading.Barrier(threads_n + 1)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        log = AuditLog(path)
        barrier.wait()
        try:
            for i in range(per_thread):
                log.append({"writer": f"thread{t}", "i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    barrier.wait()
    for thread in threads:
        thread.join()
    for proc in procs:
        proc.stdin.close()
        assert proc.wait() == 0
        proc.stdout.close()
    assert errors == []

    total = threads_n * per_thread + procs_n * per_proc
    report = verify(path)
    assert report == VerifyReport(ok=True, records=total), str(report)

    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    seen = {(r["writer"], r["i"]) for r in records}
    expected = {(f"thread{t}", i) for t in range(threads_n) for i in range(per_thread)}
    expected |= {(f"proc{p}", i) for p in range(procs_n) for i in range(per_proc)}
    assert seen == expected
    assert [r["seq"] for r in records] == list(range(1, total + 1))
    assert len({r["pid"] for r in records if "pid" in r}) == procs_n
    assert AuditLog(path).append({"writer": "last"})["seq"] == total + 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("planted", ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.key"])
def test_the_writer_follows_no_link_planted_beside_the_log(tmp_path, planted):
    """Where others may make links (a log path in /tmp), a link in place of the log,
    its head or its key is refused: the writer, often root, writes through none."""
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / planted).symlink_to(target)
    with pytest.raises(OSError):
        AuditLog(tmp_path / "audit.jsonl").append({"event": "x"})
    assert target.read_text() == "keep"
