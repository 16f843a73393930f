"""What the process pollster may say about a command line: pure functions, no I/O.

Samples travel to Kafka, ClickHouse and every subscriber, so a process's
command line must not carry its secrets there. ``poller.process_cmdline``:

* ``name`` (default): the executable's name only (psutil's ``name``), never an argument.
* ``full``: the whole command line through :func:`redact_argv`, which replaces
  the value of anything that looks like a credential by ``***``.

:func:`redact_argv` redacts, in any argument:

* ``--db-password=x``, ``--api-token x``, ``-password x``: options whose name
  holds a secret-looking word (password, passwd, pwd, secret, token, api key,
  access/private/secret key, key, credential, auth, cookie, session id, signature,
  passphrase...) or is ``--pass``/``--pw``, the value attached with ``=`` or given as the next argument;
  options naming a file or path (``--password-file /run/x``) keep their value;
* ``password=x``, ``PGPASSWORD=x``, ``"host=db password=x"``, ``?token=x&...``:
  ``key=value`` pairs with such a key, wherever they are in the argument;
* ``https://user:pass@host``: the password part of URL userinfo (all of it
  when it has no ``:``, since a lone user name is often a token);
* ``Authorization: Bearer x``, ``X-Api-Key: x``: HTTP headers with a secret-looking name (``curl -H``);
* per program, where the meaning is known: ``-pSECRET`` of the MySQL and
  MariaDB clients (``-p`` alone prompts; ``-p value`` is a database name there),
  ``sshpass -p x``, ``redis-cli -a x``, ``curl -u user:x`` / ``--user`` /
  ``--proxy-user`` / ``-U``.

It over-redacts rather than under-redacts (``--author=x`` loses ``x``): a
sample's command line is for recognising a process, not for replaying it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Literal

CmdlineMode = Literal["name", "full"]
MASK = "***"
MAX_LENGTH = 256
"""Characters of the joined command line kept in a sample's metadata (after redaction)."""

# Words that make an option or key secret, matched against the name with '-', '_' and '.' removed.
_SECRET_WORDS = ("password", "passwd", "passphrase", "pwd", "secret", "token", "apikey", "accesskey",
                 "privatekey", "secretkey", "credential", "cookie", "sessionid", "signature", "auth", "bearer",
                 "jwt", "sasl")
# Name components that are secret on their own (``--pass``, ``--db-pw``, ``-sig``, ``--key``).
_SECRET_PARTS = {"pass", "pw", "sig", "key", "sas"}
# A secret-looking name that ends like this names where the secret is, not the secret.
_NOT_SECRET_SUFFIXES = ("file", "path", "dir", "env", "length", "len", "type", "method", "mechanism")

_MYSQL = {"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck", "mysqlpump", "mariadb",
          "mariadb-dump", "mariadb-admin", "mariadb-import", "mariadb-show", "mariadb-check"}
# program -> short options whose next argument (or attached value) is a secret
_PROGRAM_SECRET_OPTIONS = {"sshpass": {"-p"}, "redis-cli": {"-a"}}
# program -> options whose value is "user:password"
_PROGRAM_USERPASS_OPTIONS = {"curl": {"-u", "--user", "-U", "--proxy-user"}}

# key=value where a key may start: the argument's start, a space, a query or list separator, a quote.
_KEY_VALUE = re.compile(r"(?P<pre>^|[\s?&;,\"'(])(?P<key>[A-Za-z0-9_.\-]+)=(?P<value>[^\s&;,]*)")
# scheme://userinfo@ (userinfo up to the last '@' of the authority)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s]*)@")
_AUTH_HEADER = re.compile(r"(?i)(?P<head>\b(?:proxy-)?authorization\s*:\s*)(?P<value>.+)")
_HEADER = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_\-]*)\s*:\s*(?P<value>.+)$")


def is_secret_name(name: str) -> bool:
    """Whether an option, key or header name (``--db-password``, ``PGPASSWORD``, ``api_key``,
    ``X-Auth-Token``) names a secret."""
    bare = name.lstrip("-").lower()
    parts = [p for p in re.split(r"[-_.]", bare) if p]
    compact = "".join(parts)
    if not compact or (compact.endswith(_NOT_SECRET_SUFFIXES) and compact not in _SECRET_WORDS):
        return False
    if any(w in compact for w in _SECRET_WORDS):
        return True
    return any(p in _SECRET_PARTS or p.endswith("pass") for p in parts)


def _userinfo(m: re.Match) -> str:
    user, sep, _ = m["userinfo"].partition(":")
    return f"{m['scheme']}{user}:{MASK}@" if sep else f"{m['scheme']}{MASK}@"  # a lone user may be a token


def _pairs(text: str) -> str:
    def repl(m: re.Match) -> str:
        if is_secret_name(m["key"]):
            return f"{m['pre']}{m['key']}={MASK}" if m["value"] else m[0]
        return f"{m['pre']}{m['key']}={_pairs(m['value'])}"  # a value may hold pairs: --url=...?token=x
    return _KEY_VALUE.sub(repl, text)


def _redact_text(arg: str) -> str:
    """Secrets inside one argument: URL userinfo, authorization and secret headers, secret ``key=value`` pairs."""
    header = _HEADER.match(arg)
    if header and is_secret_name(header["name"]):
        return f"{header['name']}: {MASK}"
    arg = _URL_USERINFO.sub(_userinfo, arg)
    arg = _AUTH_HEADER.sub(lambda m: f"{m['head']}{MASK}", arg)
    return _pairs(arg)


def _userpass(value: str) -> str:
    user, sep, _ = value.partition(":")
    return f"{user}:{MASK}" if sep else value


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with every secret-looking value replaced by ``***`` (see the module docstring).

    The program is ``argv[0]`` (its base name picks the per-program rules).
    Pure: same input, same output; the input is not changed.
    """
    if not argv:
        return []
    program = os.path.basename(argv[0])
    secret_opts = _PROGRAM_SECRET_OPTIONS.get(program, set())
    userpass_opts = _PROGRAM_USERPASS_OPTIONS.get(program, set())
    out = [_redact_text(argv[0])]
    pending: str | None = None  # how to redact the next argument: "all" or "userpass"
    for arg in argv[1:]:
        if pending is not None:
            out.append(MASK if pending == "all" else _userpass(arg))
            pending = None
            continue
        if arg.startswith("-") and len(arg) > 1 and arg != "--":
            name, eq, value = arg.partition("=")
            if program in _MYSQL and arg.startswith("-p") and not arg.startswith("--") and len(arg) > 2:
                out.append(f"-p{MASK}")
                continue
            short = arg[:2]
            if not arg.startswith("--") and short in secret_opts:
                if len(arg) > 2:
                    out.append(f"{short}{MASK}")
                else:
                    out.append(arg)
                    pending = "all"
                continue
            if name in userpass_opts or (not arg.startswith("--") and short in userpass_opts):
                if eq:
                    out.append(f"{name}={_userpass(value)}")
                elif name in userpass_opts:
                    out.append(arg)
                    pending = "userpass"
                else:
                    out.append(f"{short}{_userpass(arg[2:])}")
                continue
            if is_secret_name(name):
                if eq:
                    out.append(f"{name}={MASK}" if value else arg)
                else:
                    out.append(arg)
                    pending = "all"
                continue
        out.append(_redact_text(arg))
    # A secret option as the last argument has no value to hide: nothing pending is left out.
    return out


def describe_cmdline(name: str, argv: Sequence[str] | None, mode: CmdlineMode) -> str:
    """The ``cmdline`` metadata of a process: its ``name`` (mode ``name``), or its redacted command line
    (mode ``full``; ``name`` when the command line is empty, e.g. a kernel thread), at most
    :data:`MAX_LENGTH` characters. Redaction happens before truncation, so a cut never exposes part of a secret.
    """
    if mode == "name" or not argv:
        return name[:MAX_LENGTH]
    return " ".join(redact_argv(argv))[:MAX_LENGTH]
