"""Fetch matrix-rust-sdk's Python build (PyPI `matrix-sdk-python`, UniFFI bindings of
matrix-sdk-ffi: Element X's engine) into tests/rust_sdk/lib for tests/test_sliding_sync_rust_sdk.py.

    python tests/rust_sdk/prepare.py      (tests/run.sh runs it; a no-op once done)

Why not `pip install`: the only Linux x86_64 wheels are tagged manylinux_2_38 (glibc >= 2.38) and
Debian 12 has glibc 2.36, so pip refuses them (`--only-binary=:all:` finds nothing) and the sdist
needs a full Rust build of matrix-sdk-ffi (far too long on a small machine). The wheel's library
needs only two glibc-2.38 symbols (__isoc23_sscanf, __isoc23_strtol); on an older glibc this
script marks its GLIBC_2.38 version need weak (ELF VER_FLG_WEAK, so the loader does not refuse
the file) and builds isoc23_shim.c, which client.py loads first to provide the two functions.
The wheel is kept unpacked in lib/, never installed into the venv.
"""
from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.18.0"
HERE = Path(__file__).resolve().parent
LIB = HERE / "lib"
STAMP = LIB / ".prepared"
FFI = LIB / "matrix_sdk_python" / "_generated" / "libmatrix_sdk_ffi.so"
SHIM = LIB / "libisoc23shim.so"
SHT_GNU_VERNEED = 0x6FFFFFFE
VER_FLG_WEAK = 0x2


def weaken_version_need(path: Path, version: bytes) -> int:
    """Set VER_FLG_WEAK on each `version` entry of the ELF64 file's version needs; how many."""
    data = bytearray(path.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    changed = 0
    for sec in sections:
        if sec[1] != SHT_GNU_VERNEED:
            continue
        strings = sections[sec[6]][4]
        off = sec[4]
        while True:
            _, count, _, aux_off, next_off = struct.unpack_from("<HHIII", data, off)
            aux = off + aux_off
            for _ in range(count):
                _, flags, _, name, aux_next = struct.unpack_from("<IHHII", data, aux)
                start = strings + name
                if bytes(data[start:data.index(0, start)]) == version:
                    struct.pack_into("<H", data, aux + 4, flags | VER_FLG_WEAK)
                    changed += 1
                aux += aux_next
            if not next_off:
                break
            off += next_off
    path.write_bytes(data)
    return changed


def glibc_older_than(major: int, minor: int) -> bool:
    name, found = platform.libc_ver()
    if name != "glibc" or not found:
        return False
    have = tuple(int(x) for x in found.split(".")[:2])
    return have < (major, minor)


def prepare() -> None:
    if STAMP.exists() and STAMP.read_text() == VERSION:
        return
    if platform.machine() != "x86_64":
        sys.exit("tests/rust_sdk/prepare.py knows the x86_64 wheel only")
    shutil.rmtree(LIB, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_38_x86_64", "--implementation", "cp",
                        "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
                        "-d", tmp, f"matrix-sdk-python=={VERSION}"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(LIB)
    if glibc_older_than(2, 38):
        if not weaken_version_need(FFI, b"GLIBC_2.38"):
            sys.exit(f"{FFI} has no GLIBC_2.38 need to weaken: look again at what it imports")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(SHIM), str(HERE / "isoc23_shim.c")], check=True)
    STAMP.write_text(VERSION)
    print(f"matrix-sdk-python {VERSION} ready in {LIB}", file=sys.stderr)


if __name__ == "__main__":
    os.chdir(HERE)
    prepare()
