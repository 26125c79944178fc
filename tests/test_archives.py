"""Names inside ZIP attachments (filterd/archives.py) and the attachment rules that read them."""

from __future__ import annotations

import base64
import io
import random
import struct
import zipfile

import pytest

from filterd.archives import MAX_MEMBERS, is_zip, member_names
from filterd.message import Message
from filterd.rules import shipped_dir
from filterd.rules.loader import load_rules
from filterd.rules.ruleset import RuleSet


def zip_of(*names: str, data: bytes = b"MZ\x90\x00") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, data)
    return out.getvalue()


def mail_with(attachment: bytes, filename: str, content_type: str = "application/zip") -> bytes:
    body = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (
        b"From: billing@example.org\r\nTo: a@example.net\r\nSubject: invoice\r\n"
        b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour invoice is attached.\r\n"
        b"--b\r\nContent-Type: " + content_type.encode() + b'; name="' + filename.encode() + b'"\r\n'
        b'Content-Disposition: attachment; filename="' + filename.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b--\r\n"
    )


def test_member_names_are_the_files_in_the_directory_without_folders() -> None:
    data = zip_of("docs/invoice.pdf.exe", "readme.txt")
    assert member_names(data) == ("invoice.pdf.exe", "readme.txt")


def test_a_crafted_directory_is_bounded() -> None:
    data = zip_of(*(f"f{i}.txt" for i in range(MAX_MEMBERS * 3)), data=b"")
    assert len(member_names(data)) == MAX_MEMBERS


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK",
        b"PK\x03\x04" + b"\x00" * 100,  # a local header and nothing else
        b"not a zip at all",
        zip_of("a.exe")[:-10],  # the end-of-directory record cut short
        zip_of("a.exe")[:40] + zip_of("a.exe")[60:],  # a hole in the middle
    ],
)
def test_damaged_archives_give_no_names_and_no_error(data: bytes) -> None:
    assert member_names(data) == () or all(isinstance(n, str) for n in member_names(data))


def test_random_damage_never_raises() -> None:
    good = zip_of("invoice.pdf.exe", "b.txt")
    rng = random.Random(17)
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        member_names(bytes(data))  # must return, whatever the bytes


def test_an_end_record_claiming_a_huge_directory_is_refused_quickly() -> None:
    # an end-of-central-directory record that claims 65535 entries at offset 0 of a tiny file
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 65535, 65535, 10**9, 0, 0)
    assert member_names(b"PK\x03\x04" + eocd) == ()


def test_office_documents_are_not_archives_to_us() -> None:
    assert is_zip("application/zip", "a.docx") and is_zip("application/octet-stream", "invoice.ZIP ")
    assert not is_zip("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "a.docx")


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return RuleSet(load_rules(shipped_dir()))


def test_a_program_inside_a_zip_attachment_hits_the_attachment_rules(ruleset: RuleSet) -> None:
    message = Message(mail_with(zip_of("Invoice_4471.pdf.exe"), "Invoice_4471.zip"))
    hits = {h.rule.name: h.detail for h in ruleset.explain(message)}
    assert "ATTACH_EXECUTABLE" in hits and "ATTACH_DOUBLE_EXTENSION" in hits
    assert hits["ATTACH_EXECUTABLE"] == "application/zip Invoice_4471.zip: Invoice_4471.pdf.exe"


def test_a_zip_of_documents_hits_nothing_and_a_broken_zip_is_only_a_zip(ruleset: RuleSet) -> None:
    for attachment in (zip_of("report.pdf", "photo.jpg", data=b"%PDF-1.4"), b"PK\x03\x04broken"):
        hits = {r.name for r in ruleset.match(Message(mail_with(attachment, "report.zip")))}
        assert "ATTACH_EXECUTABLE" not in hits and "ATTACH_DOUBLE_EXTENSION" not in hits
