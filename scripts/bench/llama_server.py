"""llama-server, the anchor of the model benchmarks: built once, cached, started on demand.

The binary is built from the llama.cpp that the installed llama-cpp-python vendors (its sdist,
fetched with pip when not cached), with the instruction set ``scripts/setup`` gives the wheel
(``EDGED_LLAMA_CMAKE_ARGS`` overrides both), CPU only, no CURL/OpenSSL, no web UI, and lands
in ``~/.cache/edged/llama-server-<version>-<arch>/``. A build takes 20-30 minutes on 2 cores.

    .venv/bin/python scripts/bench/llama_server.py   # build (if needed) and print the path
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edged"

# The same options as the wheel's build in scripts/setup, plus what a lone server needs.
BASE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
              "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF",
              "-DLLAMA_USE_PREBUILT_UI=OFF"]
X86_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
             "-DGGML_F16C=ON"]


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def isa_flags() -> list[str]:
    if "EDGED_LLAMA_CMAKE_ARGS" in os.environ:
        return os.environ["EDGED_LLAMA_CMAKE_ARGS"].split()
    return X86_FLAGS if platform.machine() == "x86_64" else []


def binary() -> Path:
    """The cached llama-server for the installed llama-cpp-python; built when missing."""
    home = CACHE / f"llama-server-{version()}-{platform.machine()}"
    exe = home / "llama-server"
    if exe.is_file():
        return exe
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"llama-server: {tool} not found (apt-get install cmake g++)")
    with tempfile.TemporaryDirectory(prefix="llsrv-") as tmp:
        src = _sources(Path(tmp))
        build = Path(tmp) / "build"
        print(f"llama-server: building from {src} (20-30 min on 2 cores, once)", file=sys.stderr)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *generator, *BASE_FLAGS,
                        *isa_flags()], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j2"],
                       check=True, stdout=subprocess.DEVNULL)
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", home / "llama-server.tmp")
        (home / "build.json").write_text(json.dumps(
            {"llama_cpp_python": version(), "flags": BASE_FLAGS + isa_flags()}, indent=1))
        os.replace(home / "llama-server.tmp", exe)
    return exe


def _sources(tmp: Path) -> Path:
    """llama.cpp from the llama-cpp-python sdist (cached next to the binaries)."""
    name = f"llama_cpp_python-{version()}.tar.gz"
    sdist = CACHE / "sdist" / name
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"llama-cpp-python=={version()}", "-d",
                        str(sdist.parent)], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"


@contextmanager
def serve(model: Path, *, context: int, parallel: int, threads: int) -> Iterator[int]:
    """llama-server on a free loopback port: ``parallel`` slots in one unified KV cache of
    ``context * parallel`` cells, each slot capped at ``context`` (edged's layout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(binary()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(parallel), "-kvu", "-c", str(context * parallel),
           "--kv-unified-per-slot", str(context), "-t", str(threads), "-tb", str(threads),
           "--no-webui", "--log-disable", "-fit", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "/health", "llama-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(60)


def wait_ready(port: int, proc: subprocess.Popen[bytes], path: str, name: str) -> None:
    """Retry ``GET path`` until it answers 200: the model is loaded (these servers have no
    readiness signal; a benchmark, not a test)."""
    while proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
        except OSError:
            pass
        select.select([], [], [], 0.2)
    raise RuntimeError(f"{name} exited ({proc.returncode})")


if __name__ == "__main__":
    print(binary())
