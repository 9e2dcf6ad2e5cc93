#!/bin/sh
# The smoke benchmark's harness: each task misbehaves in its own way, the way
# real harnesses do, so that `benchwarden run` has something to clean up.
#
#   smoke-harness.sh TASK
#
# Tasks: two-containers (creates two, exits 0), fails (creates one, exits 1),
# hangs (creates one, then never ends), double-fork (leaves a background
# process that keeps creating containers, and exits 0).
#
# Containers carry the label bench.smoke.owner=$BENCHWARDEN_RUN_ID.$BENCHWARDEN_TASK_ID,
# which smoke.yaml names as a selector. The image is built on first use from
# a 129-byte static x86-64 program that waits for signals forever, imported
# with `docker import`: no registry is needed.
set -eu

task=${1:?usage: smoke-harness.sh TASK}
image=benchwarden-smoke:1
owner="${BENCHWARDEN_RUN_ID:-adhoc}.${BENCHWARDEN_TASK_ID:-$task}"

build_image() {
    docker image inspect "$image" >/dev/null 2>&1 && return 0
    case "$(uname -m)" in
        x86_64|amd64) ;;
        *) echo "smoke-harness: the smoke image is built for x86-64; this machine is $(uname -m)" >&2; exit 2 ;;
    esac
    dir=$(mktemp -d)
    # ELF header, one PT_LOAD program header, then: loop { pause() } (mov eax,34; syscall; jmp loop).
    printf '\177ELF\002\001\001\000\000\000\000\000\000\000\000\000' >"$dir/pause"
    printf '\002\000\076\000\001\000\000\000\170\000\100\000\000\000\000\000' >>"$dir/pause"
    printf '\100\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' >>"$dir/pause"
    printf '\000\000\000\000\100\000\070\000\001\000\000\000\000\000\000\000' >>"$dir/pause"
    printf '\001\000\000\000\005\000\000\000\000\000\000\000\000\000\000\000' >>"$dir/pause"
    printf '\000\000\100\000\000\000\000\000\000\000\100\000\000\000\000\000' >>"$dir/pause"
    printf '\201\000\000\000\000\000\000\000\201\000\000\000\000\000\000\000' >>"$dir/pause"
    printf '\000\020\000\000\000\000\000\000' >>"$dir/pause"
    printf '\270\042\000\000\000\017\005\353\367' >>"$dir/pause"
    chmod 755 "$dir/pause"
    tar -C "$dir" -cf - pause | docker import --change 'CMD ["/pause"]' - "$image" >/dev/null
    rm -rf "$dir"
}

start_container() {
    docker run -d --label "bench.smoke.owner=$owner" --label bench.smoke.task="$task" "$image" >/dev/null
}

build_image
case "$task" in
    two-containers)
        start_container
        start_container
        echo "two containers started"
        ;;
    fails)
        start_container
        echo "something went wrong in the task" >&2
        exit 1
        ;;
    hangs)
        start_container
        echo "waiting for an answer that never comes"
        while :; do sleep 1; done
        ;;
    double-fork)
        # The grandchild outlives its parent and this script: it is adopted by
        # benchwarden (a child subreaper), which must kill it before teardown.
        ( ( exec 0</dev/null >/dev/null 2>&1; while :; do start_container || true; sleep 1; done ) & ) &
        start_container
        echo "left a background process behind"
        ;;
    *)
        echo "smoke-harness: unknown task $task (expected two-containers, fails, hangs, double-fork)" >&2
        exit 2
        ;;
esac
