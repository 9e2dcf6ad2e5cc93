#!/usr/bin/env bash
# Prepares what the harness integration tests run, offline after the first
# time: the real Terminal-Bench (`tb`) and Harbor (`harbor`) in a cached
# virtualenv, Compose v2 as a docker CLI plugin in a private docker config
# dir, and the base image the fixture tasks of tests/harnesses build FROM.
#
#   scripts/harness-env.sh                  # prepare whatever is missing
#   scripts/harness-env.sh --print          # the same, then print the values
#   scripts/harness-env.sh --check          # change nothing: exit 1 with a one-line reason when not ready
#   scripts/harness-env.sh --check --print  # ... and print the values when ready
#
# --print writes shell-sourceable lines on stdout (nothing else ever goes
# there; progress goes to stderr), for `eval "$(scripts/harness-env.sh --print)"`:
#
#   BENCHWARDEN_HARNESS_BIN=<venv>/bin              tb, harbor (put it first on PATH for the harness only)
#   BENCHWARDEN_HARNESS_DOCKER_CONFIG=<dir>         DOCKER_CONFIG with cli-plugins/docker-compose (v2)
#   BENCHWARDEN_HARNESS_BASE_IMAGE=benchwarden-harness-base:bookworm
#
# Where: ${BENCHWARDEN_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/benchwarden-tests}
# holds venv-<hash> (installed from tests/harnesses/requirements.lock, <hash>
# being that file's, then byte-compiled, since PYTHONDONTWRITEBYTECODE would
# otherwise make every harness start compile its imports) and
# docker-config-<hash> beside it. Python is pyenv's newest 3.12, else a
# python3.12 on PATH. ~/.docker is never touched.
#
# The base image is Debian bookworm (debootstrap minbase with tmux, python3,
# python3-pytest, asciinema: what the harnesses and the tasks' tests need
# inside, since containers cannot reach PyPI) imported with `docker import`
# (nothing can be pulled). It carries the label io.benchwarden.harness-base.recipe,
# the hash of its recipe, and is rebuilt only when that label differs or the
# image is missing. The mirror is BENCHWARDEN_DEBIAN_MIRROR, else the Debian
# mirror the machine's apt sources name, else http://deb.debian.org/debian.
# debootstrap is installed with apt-get when missing (as root, or via sudo).
#
# Exit codes: 0 ready, 1 not ready (--check) or a step failed, 2 bad usage or
# a missing prerequisite (Python 3.12, docker).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

check=false
print=false
for argument in "$@"; do
    case $argument in
        --check) check=true ;;
        --print) print=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "harness-env: unknown argument: $argument" >&2
            usage >&2
            exit 2
            ;;
    esac
done

cache=${BENCHWARDEN_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/benchwarden-tests}
[[ $cache == /* ]] || cache=$PWD/$cache
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lock=tests/harnesses/requirements.lock
hash=$(sha256sum "$lock" | cut -c1-12)
venv=$cache/venv-$hash
ready_marker=$venv/.benchwarden-ready
docker_config=$cache/docker-config-$hash
compose_binary=$venv/lib/python3.12/site-packages/compose/docker-compose
compose_plugin=$docker_config/cli-plugins/docker-compose

image=benchwarden-harness-base:bookworm
recipe_label=io.benchwarden.harness-base.recipe
suite=bookworm
packages=tmux,python3,python3-pytest,asciinema
image_changes=('ENV LANG=C.UTF-8' 'CMD ["bash"]')
# Left out of the image: the downloaded packages and the package lists.
image_excludes=('./var/cache/apt/archives/*.deb' './var/lib/apt/lists/*')
recipe=$(printf '%s\n' "debootstrap --variant=minbase $suite" "$packages" "${image_changes[@]}" "${image_excludes[@]}" |
    sha256sum | cut -c1-12)

say() {
    echo "harness-env: $*" >&2
}

as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

# --- what is there -------------------------------------------------------

venv_ready() {
    [[ -f $ready_marker && -x $venv/bin/python && -x $venv/bin/tb && -x $venv/bin/harbor && -x $compose_binary ]]
}

plugin_ready() {
    [[ -L $compose_plugin && $(readlink "$compose_plugin") == "$compose_binary" ]]
}

# "recipe=<the image's label>", or nothing when there is no image.
image_recipe() {
    docker image inspect --format "recipe={{index .Config.Labels \"$recipe_label\"}}" "$image" 2>/dev/null || true
}

# The first reason the environment is not ready, or nothing.
not_ready_reason() {
    if ! venv_ready; then
        echo "no harness virtualenv at $venv"
    elif ! plugin_ready; then
        echo "no compose v2 plugin at $compose_plugin"
    elif ! docker info >/dev/null 2>&1; then
        echo "the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} does not answer"
    else
        local found
        found=$(image_recipe)
        if [[ -z $found ]]; then
            echo "no image $image"
        elif [[ $found != "recipe=$recipe" ]]; then
            echo "image $image is not of recipe $recipe (its label $recipe_label is '${found#recipe=}')"
        fi
    fi
}

print_values() {
    local name value
    for name in BENCHWARDEN_HARNESS_BIN BENCHWARDEN_HARNESS_DOCKER_CONFIG BENCHWARDEN_HARNESS_BASE_IMAGE; do
        case $name in
            BENCHWARDEN_HARNESS_BIN) value=$venv/bin ;;
            BENCHWARDEN_HARNESS_DOCKER_CONFIG) value=$docker_config ;;
            BENCHWARDEN_HARNESS_BASE_IMAGE) value=$image ;;
        esac
        if [[ $value =~ ^[A-Za-z0-9_./:@%+,-]+$ ]]; then
            printf '%s=%s\n' "$name" "$value"
        else
            printf "%s='%s'\n" "$name" "${value//\'/\'\\\'\'}"
        fi
    done
}

# --- making it -----------------------------------------------------------

# pyenv's newest 3.12, else a python3.12 on PATH.
find_python() {
    local root newest="" candidate
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for candidate in "$root"/versions/3.12.*; do
        [[ ${candidate##*/} =~ ^3\.12\.[0-9]+$ && -x $candidate/bin/python3.12 ]] || continue
        if [[ -z $newest ]] || [[ $(printf '%s\n' "${newest##*/}" "${candidate##*/}" | sort -V | tail -n 1) == "${candidate##*/}" ]]; then
            newest=$candidate
        fi
    done
    if [[ -n $newest ]]; then
        echo "$newest/bin/python3.12"
    elif command -v python3.12 >/dev/null; then
        command -v python3.12
    else
        return 1
    fi
}

make_venv() {
    local python started=$SECONDS
    if ! python=$(find_python); then
        echo "error: the harnesses need Python 3.12 and none was found: install it with pyenv" \
            "(pyenv install 3.12) or the system's packages (python3.12 python3.12-venv), then run this again" >&2
        exit 2
    fi
    say "creating $venv with $python ($("$python" --version 2>&1)); installing $lock takes a few minutes"
    rm -rf "$venv"
    mkdir -p "$cache"
    if ! "$python" -m venv "$venv" >&2; then
        echo "error: $python cannot create a virtualenv (Debian/Ubuntu: install python3.12-venv)" >&2
        exit 2
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$lock" >&2
    say "byte-compiling the virtualenv (PYTHONDONTWRITEBYTECODE is honoured at run time)"
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # A few packages ship files that are not Python 3 (test data); those stay uncompiled.
    "$venv/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || say "note: some files of $site did not compile"
    if [[ ! -x $venv/bin/tb || ! -x $venv/bin/harbor || ! -x $compose_binary ]]; then
        echo "error: $venv lacks tb, harbor or $compose_binary after installing $lock" >&2
        exit 1
    fi
    "$python" --version >"$ready_marker" 2>&1
    say "virtualenv ready in $((SECONDS - started)) s"
}

make_plugin() {
    say "linking the compose v2 plugin into $docker_config"
    mkdir -p "$docker_config/cli-plugins"
    ln -sfn "$compose_binary" "$compose_plugin"
    DOCKER_CONFIG=$docker_config docker compose version >&2
}

# The Debian mirror the machine's apt sources name (a .../debian URI on a
# main suite, not -security or -updates), else deb.debian.org.
debian_mirror() {
    if [[ -n ${BENCHWARDEN_DEBIAN_MIRROR:-} ]]; then
        echo "$BENCHWARDEN_DEBIAN_MIRROR"
        return
    fi
    local file found=""
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $file ]] || continue
        if [[ $file == *.sources ]]; then
            found=$(awk 'BEGIN { RS = ""; FS = "\n" }
                {
                    types = ""; uri = ""; suite = ""; enabled = ""
                    for (i = 1; i <= NF; i++) {
                        split($i, word, /[ \t]+/)
                        if (word[1] == "Types:") types = " " $i " "
                        if (word[1] == "URIs:") uri = word[2]
                        if (word[1] == "Suites:") suite = word[2]
                        if (word[1] == "Enabled:") enabled = word[2]
                    }
                    if (types ~ /[ \t]deb[ \t]/ && enabled != "no" && uri ~ /^https?:\/\/.*\/debian\/?$/ && suite != "" && suite !~ /-/) {
                        print uri; exit
                    }
                }' "$file")
        else
            found=$(awk '$1 == "deb" {
                    i = 2
                    if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($i ~ /^https?:\/\/.*\/debian\/?$/ && $(i + 1) !~ /-/) { print $i; exit }
                }' "$file")
        fi
        if [[ -n $found ]]; then
            echo "${found%/}"
            return
        fi
    done
    echo http://deb.debian.org/debian
}

build_dir=""
remove_build_dir() {
    [[ -n $build_dir && -d $build_dir ]] || return 0
    # debootstrap unmounts what it mounted; should it have been stopped first, unmount here.
    local mountpoint
    while read -r mountpoint; do
        as_root umount -l "$mountpoint" || true
    done < <(awk -v dir="$build_dir/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r)
    as_root rm -rf --one-file-system "$build_dir"
}

make_image() {
    if ! command -v debootstrap >/dev/null && [[ ! -x /usr/sbin/debootstrap ]]; then
        say "installing debootstrap (the harness base image is made with it)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap debian-archive-keyring
    fi
    local debootstrap keyring=() mirror old change changes=() exclude excludes=() started=$SECONDS
    debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
    [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
        keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    mirror=$(debian_mirror)
    old=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    say "building $image (recipe $recipe): debootstrap $suite from $mirror, about a minute"
    build_dir=$(mktemp -d "${TMPDIR:-/tmp}/benchwarden-harness-base.XXXXXX")
    trap remove_build_dir EXIT
    if ! as_root "$debootstrap" --variant=minbase --include="$packages" "${keyring[@]}" \
        "$suite" "$build_dir/root" "$mirror" >"$build_dir/debootstrap.out" 2>&1; then
        tail -n 20 "$build_dir/debootstrap.out" >&2
        as_root tail -n 20 "$build_dir/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
        echo "error: debootstrap of $suite from $mirror failed (see above)" >&2
        exit 1
    fi
    for change in "${image_changes[@]}" "LABEL $recipe_label=$recipe"; do
        changes+=(--change "$change")
    done
    for exclude in "${image_excludes[@]}"; do
        excludes+=("--exclude=$exclude")
    done
    as_root tar --numeric-owner "${excludes[@]}" -C "$build_dir/root" -c . |
        docker import "${changes[@]}" - "$image" >/dev/null
    remove_build_dir
    build_dir=""
    # The image it replaces goes too, unless something still uses it.
    if [[ -n $old && $old != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    say "built $image in $((SECONDS - started)) s"
}

# --- main ----------------------------------------------------------------

if $check; then
    reason=$(not_ready_reason)
    if [[ -n $reason ]]; then
        echo "harness environment not ready: $reason; run scripts/harness-env.sh (scripts/test.sh runs it)" >&2
        exit 1
    fi
    if $print; then print_values; fi
    exit 0
fi

if ! command -v docker >/dev/null; then
    echo "error: the docker CLI is missing; the harnesses need Docker (engine and CLI)" >&2
    exit 2
fi
if ! docker info >/dev/null 2>&1; then
    echo "error: the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} does not answer" >&2
    exit 2
fi

mkdir -p "$cache"
# Two preparations at once (two test runs) take turns.
exec 9>"$cache/.lock"
if command -v flock >/dev/null; then flock 9; fi

venv_ready || make_venv
plugin_ready || make_plugin
[[ $(image_recipe) == "recipe=$recipe" ]] || make_image

if $print; then print_values; fi
