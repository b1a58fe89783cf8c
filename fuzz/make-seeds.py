#!/usr/bin/env python3
"""Writes the hostile seed samples of fuzz/corpus/ (run from fuzz/). The
charsets are those mail-parser 0.11 decodes, and some it does not."""
import base64, os

KNOWN = ['850', '866', 'arabic', 'ascii', 'asmo-708', 'big5', 'big5-hkscs', 'big5-hkscs', 'chinese', 'cn-big5', 'cn-big5', 'cp1250', 'cp1251', 'cp1252', 'cp1253', 'cp1254', 'cp1255', 'cp1256', 'cp1257', 'cp1258', 'cp819', 'cp850', 'cp866', 'cp936', 'csbig5', 'cseuckr', 'cseucpkdfmtjapanese', 'csgb18030', 'csgb2312', 'csgbk', 'csibm866', 'csiso2022jp', 'csiso2022kr', 'csiso58gb231280', 'csiso885913', 'csiso885914', 'csiso885915', 'csiso885916', 'csiso88596e', 'csiso88596i', 'csiso88598e', 'csiso88598i', 'csisolatin1', 'csisolatin2', 'csisolatin3', 'csisolatin4', 'csisolatin5', 'csisolatin6', 'csisolatin9', 'csisolatinarabic', 'csisolatincyrillic', 'csisolatingreek', 'csisolatinhebrew', 'cskoi8r', 'cskoi8u', 'csksc56011987', 'csmacintosh', 'cspc850multilingual', 'csshiftjis', 'cstis620', 'csunicode', 'csutf16', 'csutf16be', 'csutf16le', 'csutf7', 'cswindows1250', 'cswindows1251', 'cswindows1252', 'cswindows1253', 'cswindows1254', 'cswindows1255', 'cswindows1256', 'cswindows1257', 'cswindows1258', 'cswindows874', 'cyrillic', 'dos-874', 'dos-874', 'ecma-114', 'ecma-118', 'elot-928', 'euc-jp', 'euc-kr', 'extended-unix-code-packed-format-for-japanese', 'gb18030', 'gb2312', 'gb-2312', 'gb-2312-80', 'gb-2312-80', 'gbk', 'greek', 'greek8', 'hebrew', 'hz-gb-2312', 'hz-gb-2312', 'ibm819', 'ibm850', 'ibm866', 'iso-10646-ucs-2', 'iso-2022-cn', 'iso-2022-cn-ext', 'iso-2022-kr', 'iso-8859-6-e', 'iso-8859-6-i', 'iso-8859-8-e', 'iso-ir-149', 'iso-ir-58', 'iso8859-1', 'iso8859-10', 'iso8859-11', 'iso8859-13', 'iso8859-14', 'iso8859-15', 'iso8859-2', 'iso8859-3', 'iso8859-4', 'iso8859-5', 'iso8859-6', 'iso8859-7', 'iso8859-8', 'iso8859-9', 'iso88591', 'iso885910', 'iso885911', 'iso885913', 'iso885914', 'iso885915', 'iso88592', 'iso88593', 'iso88594', 'iso88595', 'iso88596', 'iso88597', 'iso88598', 'iso88599', 'iso8859-1', 'iso8859-10', 'iso8859-11', 'iso8859-13', 'iso8859-14', 'iso8859-15', 'iso8859-2', 'iso8859-3', 'iso8859-4', 'iso8859-5', 'iso8859-6', 'iso8859-7', 'iso8859-8', 'iso8859-9', 'iso-10646-ucs-2', 'iso-2022-cn', 'iso-2022-cn-ext', 'iso-2022-jp', 'iso-2022-kr', 'iso-8859-1', 'iso-8859-10', 'iso-8859-11', 'iso-8859-13', 'iso-8859-14', 'iso-8859-15', 'iso-8859-16', 'iso-8859-2', 'iso-8859-3', 'iso-8859-4', 'iso-8859-5', 'iso-8859-6', 'iso-8859-6-e', 'iso-8859-6-i', 'iso-8859-7', 'iso-8859-8', 'iso-8859-8-e', 'iso-8859-8-i', 'iso-8859-9', 'iso-celtic', 'iso-ir-100', 'iso-ir-101', 'iso-ir-109', 'iso-ir-110', 'iso-ir-126', 'iso-ir-127', 'iso-ir-138', 'iso-ir-144', 'iso-ir-148', 'iso-ir-149', 'iso-ir-157', 'iso-ir-199', 'iso-ir-226', 'iso-ir-58', 'koi', 'koi8', 'koi8-ru', 'koi8-r', 'koi8-ru', 'koi8-u', 'korean', 'ks-c-5601-1987', 'ks-c-5601-1989', 'ksc5601', 'ksc-5601', 'l1', 'l10', 'l2', 'l3', 'l4', 'l5', 'l6', 'l8', 'l9', 'latin1', 'latin10', 'latin2', 'latin3', 'latin4', 'latin5', 'latin6', 'latin8', 'latin-9', 'logical', 'mac', 'macintosh', 'ms932', 'ms936', 'ms-kanji', 'replacement', 'shift-jis', 'sjis', 'sun-eu-greek', 'tis-620', 'ucs-2', 'ucs-2', 'unicode', 'unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'unicodefeff', 'unicodefffe', 'us-ascii', 'us-ascii', 'utf-8', 'utf8', 'utf-16', 'utf-16be', 'utf-16le', 'utf-7', 'visual', 'windows-31j', 'windows-949', 'windows-1250', 'windows-1251', 'windows-1252', 'windows-1253', 'windows-1254', 'windows-1255', 'windows-1256', 'windows-1257', 'windows-1258', 'windows-31j', 'windows-874', 'windows-936', 'windows-949', 'x-cp1250', 'x-cp1251', 'x-cp1252', 'x-cp1253', 'x-cp1254', 'x-cp1255', 'x-cp1256', 'x-cp1257', 'x-cp1258', 'x-euc-jp', 'x-gbk', 'x-mac-cyrillic', 'x-mac-roman', 'x-mac-ukrainian', 'x-sjis', 'x-unicode20utf8', 'x-user-defined', 'x-x-big5', 'x-cp1250', 'x-cp1251', 'x-cp1252', 'x-cp1253', 'x-cp1254', 'x-cp1255', 'x-cp1256', 'x-cp1257', 'x-cp1258', 'x-euc-jp', 'x-gbk', 'x-mac-cyrillic', 'x-mac-roman', 'x-mac-ukrainian', 'x-sjis', 'x-user-defined', 'x-x-big5']
UNKNOWN = ['x-unknown-charset', 'klingon', 'utf-9', 'iso-8859-99', '', 'x-é', 'ebcdic-cp-us']


def put(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


HEAD = "From: Customer <c@example.org>\r\nTo: support@example.org\r\nMessage-ID: <{}@example.org>\r\n"


def mail():
    put("mail", "plain", HEAD.format("plain") + "Subject: printer [#12]\r\n\r\nIt is on fire.\r\n")
    # Deep MIME nesting: 300 multiparts inside each other.
    depth = 300
    body = "innermost\r\n"
    for i in reversed(range(depth)):
        body = (f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
                + body + f"\r\n--b{i}--\r\n")
    put("mail", "deep-nesting", HEAD.format("deep") + "Subject: deep\r\nMIME-Version: 1.0\r\n" + body)
    # 10,000 headers.
    put("mail", "ten-thousand-headers", HEAD.format("many") +
        "".join(f"X-Header-{i}: value {i}\r\n" for i in range(10000)) + "Subject: many\r\n\r\nbody\r\n")
    # A 1 MB header line.
    put("mail", "one-megabyte-header", HEAD.format("long") + "Subject: " + "A" * (1 << 20) + "\r\n\r\nbody\r\n")
    # Encoded words in every charset mail-parser knows, and some it does not.
    encoded = base64.b64encode(b"caf\xe9 \x80\xff").decode()
    words = " ".join(f"=?{c}?B?{encoded}?=" for c in KNOWN + UNKNOWN)
    qwords = " ".join(f"=?{c}?Q?caf=E9_=80=FF?=" for c in KNOWN + UNKNOWN)
    put("mail", "encoded-words", HEAD.format("charsets") + f"Subject: {words}\r\nFrom: {qwords} <x@example.org>\r\n\r\nbody\r\n")
    every_byte = base64.b64encode(bytes(range(256))).decode()
    parts = "".join(f"--b\r\nContent-Type: text/plain; charset={c}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    f"{every_byte}\r\n" for c in KNOWN + UNKNOWN)
    put("mail", "body-charsets", HEAD.format("bodies") + "Subject: bodies\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + "--b--\r\n")
    # NUL bytes in headers and body.
    put("mail", "nul-bytes", (HEAD.format("nul") + "Subject: a\0b\r\nX-\0: \0\r\n\r\nbo\0dy\0\r\n"))
    # Unterminated boundaries.
    put("mail", "unterminated-boundary", HEAD.format("open") + "Subject: open\r\nContent-Type: multipart/mixed; boundary=never\r\n\r\n--never\r\nContent-Type: text/plain\r\n\r\nno end\r\n--never\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\n")
    # Zip-bomb-like nesting: attached messages, each carrying the one before it three times.
    msg = HEAD.format("bomb0") + "Subject: bomb\r\n\r\nx\r\n"
    for i in range(1, 6):
        msg = (HEAD.format(f"bomb{i}") + f"Subject: bomb {i}\r\nContent-Type: multipart/mixed; boundary=z{i}\r\n\r\n"
               + "".join(f"--z{i}\r\nContent-Type: message/rfc822\r\n\r\n{msg}\r\n" for _ in range(3)) + f"--z{i}--\r\n")
    put("mail", "nested-messages", msg)
    put("mail", "auto-reply", HEAD.format("ooo") + "Subject: Out of office\r\nAuto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\nPrecedence: bulk\r\n\r\naway\r\n")
    put("mail", "no-headers", "\r\n\r\njust a body")
    put("mail", "binary", bytes(range(256)) * 16)


def manifest():
    put("manifest", "incoming", """apiVersion: mailroom.dev/v1alpha1
kind: IncomingEmailServer
metadata: {name: support, namespace: helpdesk}
spec:
  email: support@example.com
  provider: Gmail
  auth: {passwordSecretRef: {name: gmail, key: password}}
  filter: {type: Ignore, domains: ["*.example.net"], keywords: [unsubscribe]}
  ticket: {referencePattern: '\\[#(\\d+)\\]'}
---
apiVersion: v1
kind: Secret
metadata: {name: gmail, namespace: helpdesk}
stringData: {password: abcd efgh ijkl mnop}
""")
    put("manifest", "outgoing", """apiVersion: mailroom.dev/v1alpha1
kind: OutgoingEmailServer
metadata: {name: helpdesk}
spec: {email: helpdesk@example.com, provider: Other, server: smtp.example.com, port: 587, securityType: TLS, primary: true,
  authentication: {passwordSecretRef: {name: s, key: p}}}
""")
    put("manifest", "anchors", "a: &a [*a, *a]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b, *b]\n")
    put("manifest", "deep", "x: " + "[" * 5000 + "]" * 5000 + "\n")
    put("manifest", "bad-regex", "apiVersion: mailroom.dev/v1alpha1\nkind: IncomingEmailServer\nmetadata: {name: r}\nspec: {email: a@b.c, provider: Gmail, auth: {passwordSecretRef: {name: s, key: p}}, ticket: {referencePattern: '(((((a*)*)*)*)*'}}\n")


def submission():
    put("submission", "plain", '{"to": ["a@example.org"], "subject": "hello", "text": "body"}')
    put("submission", "full", '{"to": ["A <a@example.org>"], "cc": ["b@example.org"], "bcc": ["c@example.org"], "subject": "=?utf-8?Q?x?=\\r\\nBcc: evil@example.org", "text": "t", "html": "<p>h</p>", "inReplyTo": "<x@y>", "attachments": [{"filename": "a\\"b.txt", "contentType": "text/plain", "content": "aGVsbG8="}]}')
    put("submission", "header-injection", '{"to": ["a@example.org\\r\\nBcc: evil@example.org"], "subject": "s\\nX-Injected: 1", "text": "t"}')
    put("submission", "nul", '{"to": ["a\\u0000@example.org"], "subject": "\\u0000", "text": "\\u0000"}')


def pop3():
    put("pop3", "uidl", b"+OK\r\n1 abc\r\n2 def\r\n..stuffed\r\n.\r\n")
    put("pop3", "list", b"+OK 2 messages\r\n1 120\r\n2 99999999999999999999\r\n.\r\n")
    put("pop3", "capa", b"+OK\r\nUSER\r\nSASL PLAIN XOAUTH2\r\nSTLS\r\n.\r\n")
    put("pop3", "garbage", b"* OK imap?\r\n\xff\xfe\x00\r\n")


def imap():
    put("imap", "greeting", b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] ready\r\n")
    put("imap", "fetch", b"* 1 FETCH (UID 7 RFC822.SIZE 42 INTERNALDATE \"01-Dec-2026 10:00:00 +0000\" BODY[] {5}\r\nhello)\r\nA1 OK done\r\n")
    put("imap", "refused", b"A1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
    put("imap", "throttled", b"A1 NO [UNAVAILABLE] Too many simultaneous connections. (Failure)\r\n")
    put("imap", "literal-bomb", b"* 1 FETCH (BODY[] {4294967295}\r\n")


mail(); manifest(); submission(); pop3(); imap()
