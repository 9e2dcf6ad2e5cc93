#!/usr/bin/env bash
# The README's test command: installs what the tests need that a fresh
# machine with Docker lacks, then runs every test against the real engine.
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

# The tests build their image from a static busybox, since nothing can be
# pulled; a dynamic one (package busybox) cannot run alone in an image.
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
    echo "installing busybox-static (the tests' image is made of it)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static
fi

if ! docker info >/dev/null 2>&1; then
    echo "error: the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} does not answer;" \
        "the tests need it (they never skip)" >&2
    exit 2
fi

# The compose test (tests/it/docker_proxy.rs) needs a compose tool.
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
    echo "installing docker-compose (the compose test needs a compose tool)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
fi

# The Python clients of the tests live in one virtualenv, target/py-venv: the
# docker-py test (tests/it/docker_proxy.rs) and the official Daytona SDK
# (`daytona`, tests/it/daytona_contract.rs and the Daytona proxy tests); quick
# when both are already there.
venv=target/py-venv
if ! "$venv/bin/python" -c 'import docker, daytona' >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        echo "installing python3-venv (for the tests' virtualenv)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    fi
    if [[ ! -x $venv/bin/pip ]]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    echo "installing docker-py and the Daytona SDK into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check daytona docker
fi

# The harness tests run the real Terminal-Bench and Harbor on the tasks of
# tests/harnesses: a cached virtualenv of their own (pinned by
# tests/harnesses/requirements.lock, Python 3.12), Compose v2 as a plugin in a
# private docker config dir, and the tasks' base image built with debootstrap
# (installed when missing). Minutes the first time, instant after.
scripts/harness-env.sh

exec cargo test --all-targets "$@"
