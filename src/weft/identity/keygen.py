"""A proxy's private key and CSR, made in a short-lived child process.

``cryptography`` costs a sidecar about 8.5 MB of resident memory for the life of the process, and
the proxy needs it only to make a key and a CSR. So the proxy runs ``python -m
weft.identity.keygen IDENTITY SPIFFE``, which makes an ECDSA P-256 key and a CSR naming both
identities (:func:`weft.identity.ca.new_key`, :func:`weft.identity.ca.make_csr`), writes
``{"key": PEM, "csr": PEM}`` to its stdout pipe and exits. The key never touches disk: it
exists in the child's memory, the pipe, and then only in the proxy's memory.

:func:`generate` is the proxy's side: it runs the child, reads the pipe, and raises
:class:`KeygenError` saying what went wrong. This module imports ``cryptography`` only in the
child (:func:`main`).

Not for: checking CSRs or signing (:mod:`weft.identity.ca`), or TLS contexts
(:mod:`weft.proxy.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass

KEYGEN_TIMEOUT = 30.0
MAX_OUTPUT = 64 * 1024
_KEY_HEADER = "-----BEGIN PRIVATE KEY-----"
_CSR_HEADER = "-----BEGIN CERTIFICATE REQUEST-----"


class KeygenError(Exception):
    """The key generator failed; the message says how."""


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    """A private key (unencrypted PKCS#8 PEM) and a CSR for it (PEM)."""

    key_pem: bytes
    csr_pem: str

    def __repr__(self) -> str:  # never the key, in a log or a traceback
        return "<KeyAndCsr>"


def parse_output(data: bytes) -> KeyAndCsr:
    """The child's stdout as a :class:`KeyAndCsr`; KeygenError when it is not one."""
    if len(data) > MAX_OUTPUT:
        raise KeygenError(f"key generator wrote more than {MAX_OUTPUT} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeygenError("key generator wrote something other than JSON") from None
    key = doc.get("key") if isinstance(doc, dict) else None
    csr = doc.get("csr") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not key.startswith(_KEY_HEADER):
        raise KeygenError("key generator wrote no PEM private key")
    if not isinstance(csr, str) or not csr.startswith(_CSR_HEADER):
        raise KeygenError("key generator wrote no PEM certificate request")
    return KeyAndCsr(key.encode("ascii", errors="replace"), csr)


async def generate(identity: str, spiffe: str, timeout: float = KEYGEN_TIMEOUT) -> KeyAndCsr:
    """A new key and a CSR for ``identity`` (DNS form) and ``spiffe``, made by a child process;
    KeygenError when the child cannot start, fails, or takes longer than ``timeout``. The child
    is killed if this is cancelled."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "weft.identity.keygen", identity, spiffe,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        raise KeygenError(f"cannot start the key generator: {exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise KeygenError(f"key generator did not finish within {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
    if proc.returncode != 0:
        lines = err.decode("utf-8", errors="replace").strip().splitlines()
        reason = lines[-1] if lines else "no message"
        raise KeygenError(f"key generator exited with status {proc.returncode}: {reason}")
    return parse_output(out)


def main(argv: list[str]) -> int:
    """``keygen IDENTITY SPIFFE``: the JSON on stdout; status 2 and a message on bad use."""
    if len(argv) != 2:
        print("usage: python -m weft.identity.keygen IDENTITY SPIFFE", file=sys.stderr)
        return 2
    from weft.identity.ca import key_pem, make_csr, new_key

    identity, spiffe = argv
    key = new_key()
    try:
        csr = make_csr(key, identity, spiffe)
    except ValueError as exc:
        print(f"keygen: cannot make a CSR for {identity!r}: {exc}", file=sys.stderr)
        return 2
    json.dump({"key": key_pem(key).decode(), "csr": csr.decode()}, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
