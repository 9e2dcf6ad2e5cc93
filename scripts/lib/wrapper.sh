# The half that the wrappers keeping the old cleanup scripts' flags share:
# finding the benchwarden binary, refusing unknown flags, and running (with
# -v, printing) the command a flag maps to. Sourced, not run.

# The benchwarden to run: $BENCHWARDEN, else one on PATH, else this
# repository's release or debug build.
wrapper_binary() {
    if [[ -n ${BENCHWARDEN:-} ]]; then
        printf '%s\n' "$BENCHWARDEN"
        return
    fi
    if command -v benchwarden >/dev/null 2>&1; then
        command -v benchwarden
        return
    fi
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    for build in release debug; do
        if [[ -x $root/target/$build/benchwarden ]]; then
            printf '%s\n' "$root/target/$build/benchwarden"
            return
        fi
    done
    echo "$wrapper_name: no benchwarden binary: build one with \`cargo build --release\`, or set BENCHWARDEN" >&2
    exit 2
}

# Says what was wrong, shows the usage, exits 2.
wrapper_refuse() {
    echo "$wrapper_name: $1" >&2
    usage >&2
    exit 2
}

# A flag's value, or a refusal when it is missing or not a whole number.
wrapper_number() {
    local flag=$1 value=${2:-}
    [[ $value =~ ^[0-9]+$ ]] || wrapper_refuse "$flag needs a whole number, got '${value}'"
    printf '%s\n' "$value"
}

# Runs benchwarden with the given arguments, printing the command first with -v.
wrapper_run() {
    local binary
    binary=$(wrapper_binary)
    if ((wrapper_verbose)); then
        printf '+ %q' "$binary" >&2
        printf ' %q' "$@" >&2
        printf '\n' >&2
    fi
    exec "$binary" "$@"
}
