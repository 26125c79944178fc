"""Each kind of rule against real MIME messages: what hits, and what must not."""

from __future__ import annotations

import base64
from pathlib import Path

from filterd.message import Message
from filterd.rules.targets import normalise_url
from tests.rules_support import message, names, rules_from

# --- header ------------------------------------------------------------------------------------


def test_header_pattern_sees_rfc2047_decoded_text(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [SUBJ_WIN]
        kind = "header"
        header = "Subject"
        pattern = '(?i)you won'
        description = "won"
        """,
    )
    encoded = "=?utf-8?b?" + base64.b64encode(b"You WON a prize").decode() + "?="
    assert names(rs, message(subject="x", headers={"Subject": encoded})) == {"SUBJ_WIN"}
    assert names(rs, message(subject="you wonder")) == {"SUBJ_WIN"}  # no \b: a plain substring
    assert names(rs, message(subject="lunch")) == set()


def test_header_raw_8bit_gbk_is_decoded(tmp_path: Path) -> None:
    """Chinese mail often has raw GB2312 bytes in Subject, with no encoded words."""
    rs = rules_from(
        tmp_path,
        """
        [CN_SUBJ]
        kind = "header"
        header = "Subject"
        pattern = '代开发票'
        description = "invoice"
        """,
    )
    raw = (
        b"From: a@example.cn\r\nTo: b@example.cn\r\nSubject: "
        + "优惠代开发票".encode("gb2312")
        + b"\r\nContent-Type: text/plain; charset=gb2312\r\n\r\nhello\r\n"
    )
    assert names(rs, Message(raw)) == {"CN_SUBJ"}


def test_header_anchors_apply_to_each_value(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [RCVD_DYN]
        kind = "header"
        header = "Received"
        pattern = '^from dsl-'
        description = "second hop"
        """,
    )
    raw = (
        b"Received: from mx.example.org by us\r\nReceived: from dsl-1-2-3.example.net by them\r\n"
        b"From: a@example.com\r\n\r\nbody\r\n"
    )
    assert names(rs, Message(raw)) == {"RCVD_DYN"}


def test_header_exists_absent_negate_and_addr(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [HAS_XM]
        kind = "header"
        header = "X-Mailer"
        exists = true
        description = "has x-mailer"

        [NO_LIST]
        kind = "header"
        header = ["List-Id", "List-Unsubscribe"]
        exists = false
        description = "not a list"

        [MIME_BAD]
        kind = "header"
        header = "MIME-Version"
        pattern = '^1\\.0$'
        negate = true
        description = "mime version not 1.0"

        [FROM_FREE]
        kind = "header"
        header = "From:addr"
        pattern = '@example\\.com$'
        description = "from example.com"

        [FROM_NAME]
        kind = "header"
        header = "From:name"
        pattern = '^Alice$'
        description = "from alice"
        """,
    )
    plain = message()
    assert names(rs, plain) == {"NO_LIST", "FROM_FREE", "FROM_NAME"}
    odd = message(headers={"X-Mailer": "Foo 1", "MIME-Version": "2.0", "List-Id": "<l.example.org>"})
    assert names(rs, odd) == {"HAS_XM", "MIME_BAD", "FROM_FREE", "FROM_NAME"}
    no_mime = Message(b"From: Bob <bob@example.net>\r\n\r\nhi\r\n")
    assert names(rs, no_mime) == {"NO_LIST"}  # negate needs the header present; addr does not match


def test_all_headers(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [ANY_BULK]
        kind = "header"
        header = "ALL"
        pattern = '(?im)^x-[a-z-]*: .*massmailer'
        description = "any header"
        """,
    )
    assert names(rs, message(headers={"X-Sent-By": "MassMailer 2000"})) == {"ANY_BULK"}
    assert names(rs, message(subject="about massmailer")) == set()


# --- body, rawbody, full ------------------------------------------------------------------------


def test_body_sees_html_rendered_and_rawbody_sees_markup(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [B_WORDS]
        kind = "body"
        pattern = '(?i)free\\s+money'
        description = "words in text"

        [RAW_TAG]
        kind = "rawbody"
        pattern = '(?i)<font\\b[^>]*size=7'
        description = "markup"

        [FULL_HDR]
        kind = "full"
        pattern = '(?m)^X-Campaign: '
        description = "raw header line"
        """,
    )
    html = "<html><body><p>free <b>money</b> now</p><font size=7>BIG</font></body></html>"
    msg = message(html=html, plain=False, headers={"X-Campaign": "42"})
    assert names(rs, msg) == {"B_WORDS", "RAW_TAG", "FULL_HDR"}
    # "free <b>money" is not "free money" in the markup, and text has no tags
    rs2 = rules_from(
        tmp_path / "2",
        """
        [RAW_WORDS]
        kind = "rawbody"
        pattern = 'free money'
        description = "raw words"

        [BODY_TAG]
        kind = "body"
        pattern = '<font'
        description = "tag in text"
        """,
    )
    assert names(rs2, msg) == set()


def test_body_of_base64_part_is_decoded(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [B64]
        kind = "body"
        pattern = 'hidden words'
        description = "x"
        """,
    )
    payload = base64.b64encode(b"some hidden words here").decode()
    raw = (
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{payload}\r\n"
    ).encode()
    assert names(rs, Message(raw)) == {"B64"}


# --- uri ---------------------------------------------------------------------------------------


def test_url_normalisation() -> None:
    u = normalise_url("HTTP://WWW.Example.COM.:80/a/b?x=1#frag")
    assert u is not None and u.text == "http://www.example.com/a/b?x=1"
    u = normalise_url("www.example.com")
    assert u is not None and u.text == "http://www.example.com/"
    u = normalise_url("https://user:pw@host.example:8443/p")
    assert u is not None and u.text == "https://host.example:8443/p" and u.host == "host.example"
    u = normalise_url("http://bücher.example/")
    assert u is not None and u.host == "xn--bcher-kva.example"
    u = normalise_url("http://[2001:db8::1]:8080/")
    assert u is not None and u.text == "http://[2001:db8::1]:8080/"
    assert normalise_url("http://bad host/") is None
    assert normalise_url("http://example.com:99999/") is None


def test_uri_pattern_and_hosts(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [U_IP]
        kind = "uri"
        pattern = '^https?://\\d+\\.\\d+\\.\\d+\\.\\d+/'
        description = "ip"

        [U_SHORT]
        kind = "uri"
        hosts = ["bit.ly"]
        description = "shortener"

        [U_IDN]
        kind = "uri"
        pattern = '^[a-z]+://(?:[^/]*\\.)?xn--'
        description = "punycode"
        """,
    )
    assert names(rs, message(body="go to http://10.1.2.3/login now")) == {"U_IP"}
    assert names(rs, message(body="see https://WWW.Bit.Ly/abc")) == {"U_SHORT"}
    assert names(rs, message(body="see https://notbit.ly/abc")) == set()
    html = '<a href="http://pаypal.example/">pay</a>'  # Cyrillic a: an IDN look-alike
    assert names(rs, message(html=html, plain=False)) == {"U_IDN"}


# --- mime --------------------------------------------------------------------------------------


def test_mime_extensions_double_extension_type_and_count(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [EXE]
        kind = "mime"
        extensions = ["exe", "scr"]
        description = "program"

        [DOUBLE]
        kind = "mime"
        filename = '(?i)\\.(?:pdf|doc)\\s*\\.(?:exe|scr)$'
        description = "double extension"

        [MACRO]
        kind = "mime"
        content_type = '(?i)macroenabled'
        description = "macro type"

        [MANY]
        kind = "mime"
        min_parts = 3
        description = "three or more parts"
        """,
    )
    assert names(rs, message()) == set()
    exe = message(attachments=(("invoice.pdf.exe", "application/octet-stream", b"MZ"),))
    assert names(rs, exe) == {"EXE", "DOUBLE"}
    trailing = message(attachments=(("report.scr. ", "application/octet-stream", b"MZ"),))
    assert names(rs, trailing) == {"EXE"}  # Windows drops trailing dots and blanks
    macro = message(
        attachments=(
            ("a.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12", b"PK"),
            ("b.txt", "text/plain", b"hi"),
        )
    )
    assert names(rs, macro) == {"MACRO", "MANY"}


# --- helpers -----------------------------------------------------------------------------------

_HELPERS = """
[CAPS]
kind = "helper"
test = "subject_caps"
min_letters = 10
min_ratio = 0.8
description = "caps"

[IMG]
kind = "helper"
test = "image_text_ratio"
min_images = 1
max_text_chars = 40
description = "image, little text"

[MISMATCH]
kind = "helper"
test = "link_domain_mismatch"
description = "link text vs href"

[B64TEXT]
kind = "helper"
test = "base64_plain_text"
min_bytes = 10
description = "needless base64"
"""


def test_helper_subject_caps(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, _HELPERS)
    assert "CAPS" in names(rs, message(subject="CHEAP PILLS FOR YOU NOW"))
    assert "CAPS" not in names(rs, message(subject="Cheap pills for you now"))
    assert "CAPS" not in names(rs, message(subject="ACK"))  # too few letters to judge
    assert "CAPS" not in names(rs, message(subject="会议通知 明天上午"))  # no cased letters


def test_helper_image_text_ratio(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, _HELPERS)
    img = '<html><body><img src="http://x.example/a.gif"><p>Buy</p></body></html>'
    assert "IMG" in names(rs, message(html=img, plain=False))
    long = img.replace("Buy", "A real letter with enough words to read like one. " * 3)
    assert "IMG" not in names(rs, message(html=long, plain=False))
    assert "IMG" not in names(rs, message(body="Buy"))  # no image


def test_helper_link_domain_mismatch(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, _HELPERS)
    phish = '<p>Log in at <a href="http://203.0.113.9/x">https://www.mybank.com/login</a></p>'
    assert "MISMATCH" in names(rs, message(html=phish, plain=False))
    same = '<a href="https://secure.mybank.com/login">www.mybank.com</a>'
    assert "MISMATCH" not in names(rs, message(html=same, plain=False))
    sister = '<a href="http://click.example.net/r?1">www.example.com</a>'
    assert "MISMATCH" not in names(rs, message(html=sister, plain=False))  # same name, other TLD
    named = '<a href="http://clickthru.online.com/x">News.com</a>'
    assert "MISMATCH" not in names(rs, message(html=named, plain=False))  # a site's name, not a URL


def test_helper_base64_plain_text(tmp_path: Path) -> None:
    rs = rules_from(tmp_path, _HELPERS)

    def b64_message(text: str, charset: str) -> Message:
        payload = base64.b64encode(text.encode(charset)).decode()
        return Message(
            (
                f"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n{payload}\r\n"
            ).encode()
        )

    assert "B64TEXT" in names(rs, b64_message("Plain English words that need no encoding.", "us-ascii"))
    assert "B64TEXT" not in names(rs, b64_message("中文邮件需要编码，这很正常。", "utf-8"))


# --- meta --------------------------------------------------------------------------------------


def test_meta_combines_and_hidden_rules_feed_it(tmp_path: Path) -> None:
    rs = rules_from(
        tmp_path,
        """
        [__A]
        kind = "body"
        pattern = 'alpha'

        [__B]
        kind = "body"
        pattern = 'beta'

        [__C]
        kind = "body"
        pattern = 'gamma'

        [COMBO]
        kind = "meta"
        expression = "__A && (__B || !__C)"
        description = "combo"

        [COMBO2]
        kind = "meta"
        expression = "COMBO && __C"
        description = "meta of a meta"
        """,
    )

    def scored(body: str) -> set[str]:
        return {r.name for r in rs.match(message(body=body)) if not r.hidden}

    assert scored("alpha") == {"COMBO"}
    assert scored("alpha gamma") == set()
    assert scored("alpha beta gamma") == {"COMBO", "COMBO2"}
    assert scored("beta") == set()
