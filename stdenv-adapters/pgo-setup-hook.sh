# shellcheck shell=bash
# Setup hook of pgod's stdenv adapters: withPgoProfile and withPgoOptimize
# (stdenv-adapters/default.nix) add this file to nativeBuildInputs and set
# `pgoVariant`:
#
#   profile,  every output gets nix-support/pgo.json: the GNU build-ids of all
#   cs-profile  ELF files of all outputs, the instrumentation kind
#             ($pgoInstrumentation: fe, ir or cs-ir), the llvm-profdata
#             ($pgoLlvmProfdata) that can merge the raw profiles they write,
#             and live reporting ($pgoLiveDumpIntervalSeconds: the dump
#             interval, empty when off).
#   optimize  clang's profile-match warnings are logged while building
#             (CC_LOG_DIAGNOSTICS) and counted into nix-support/pgo-warnings.json
#             of every output.
#
# It relies only on what nixpkgs' setup.sh offers (runHook hook arrays,
# $outputs or getAllOutputNames, $READELF), and works with `set -eu -o pipefail`.

_pgoBuildTop="${NIX_BUILD_TOP:-${TMPDIR:-/tmp}}"
_pgoDiagnosticsLog="$_pgoBuildTop/pgo-diagnostics.log"

# The store paths of this build's outputs, one a line.
_pgoOutputPaths() {
    local name
    if declare -F getAllOutputNames >/dev/null; then
        for name in $(getAllOutputNames); do printf '%s\n' "${!name}"; done
    else
        for name in ${outputs:-out}; do printf '%s\n' "${!name}"; done
    fi
}

_pgoIsElf() {
    local magic=""
    read -r -n 4 magic <"$1" 2>/dev/null || true
    [ "$magic" = $'\177ELF' ]
}

# The GNU build-ids (lowercase hex, sorted, unique) of the ELF files under the
# given directories.
_pgoBuildIds() {
    local readelf="${READELF:-readelf}" file
    find "$@" -type f -print0 | while IFS= read -r -d '' file; do
        _pgoIsElf "$file" || continue
        LC_ALL=C "$readelf" -n "$file" 2>/dev/null \
            | sed -n 's/^[[:space:]]*Build ID:[[:space:]]*\([0-9a-fA-F][0-9a-fA-F]*\).*$/\1/p' || true
    done | tr 'A-F' 'a-f' | sort -u
}

_pgoJsonString() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# A store path as a JSON string that Nix's reference scanner does not see: the
# last character of its 32-character hash is written as a \u escape, which every
# JSON reader decodes back. (The last: the scanner needs the whole hash in one
# run of base-32 characters, and after the escape's "\u" comes "00XY-", which
# cannot finish one; an escaped first digit would, "\u0032" ending in "2".)
# pgo.json names the llvm-profdata matching the compiler, but a package must not
# keep all of LLVM in its runtime closure for that: the daemon's side (the NixOS
# module's config.toml) holds the real reference.
_pgoJsonUnreferencedPath() {
    local path="$1" store="${NIX_STORE:-/nix/store}/" rest
    rest="${path#"$store"}"
    if [[ "$path" != "$store"* ]] || ((${#rest} < 33)) || [[ "${rest:32:1}" != "-" ]]; then
        _pgoJsonString "$path"
        return
    fi
    printf '"%s%s\\u%04x%s"' "$store" "${rest:0:31}" "'${rest:31:1}" "${rest:32}"
}

# Write the same JSON document to nix-support/$1 of every output.
_pgoWriteToOutputs() {
    local file="$1" json="$2" dir
    while IFS= read -r dir; do
        [ -d "$dir" ] || continue
        mkdir -p "$dir/nix-support"
        printf '%s\n' "$json" >"$dir/nix-support/$file"
    done < <(_pgoOutputPaths)
}

pgoWriteProfileManifest() {
    local dirs=() ids=() dir id idList=""
    while IFS= read -r dir; do
        [ -d "$dir" ] && dirs+=("$dir")
    done < <(_pgoOutputPaths)
    if ((${#dirs[@]} > 0)); then
        mapfile -t ids < <(_pgoBuildIds "${dirs[@]}")
    fi
    for id in ${ids[@]+"${ids[@]}"}; do
        idList+="${idList:+, }\"$id\""
    done
    local live=null
    if [[ "${pgoLiveDumpIntervalSeconds:-}" =~ ^[0-9]+$ ]]; then
        live="{\"dump_interval_s\": $pgoLiveDumpIntervalSeconds}"
    fi
    _pgoWriteToOutputs pgo.json "{\"version\": 1, \"name\": $(_pgoJsonString "${pname:-$name}"), \"variant\": $(_pgoJsonString "${pgoVariant:-profile}"), \"instrumentation\": $(_pgoJsonString "${pgoInstrumentation:-fe}"), \"llvm_profdata\": $(_pgoJsonUnreferencedPath "${pgoLlvmProfdata:-}"), \"live\": $live, \"build_ids\": [$idList]}"
    if ((${#ids[@]} == 0)); then
        echo "pgo: warning: no ELF file with a GNU build-id in any output of ${pname:-$name}; pgod cannot attribute its profiles" >&2
    else
        echo "pgo: nix-support/pgo.json lists ${#ids[@]} build-id(s)"
    fi
}

pgoStartDiagnosticsLog() {
    # clang appends every compile's diagnostics to this file (a plist-like log),
    # from the build phase on: configure checks would only add noise.
    export CC_LOG_DIAGNOSTICS=1
    export CC_LOG_DIAGNOSTICS_FILE="$_pgoDiagnosticsLog"
}

# Prints "units functions mismatched missing unprofiled" counted from a clang
# diagnostics log: translation units with a profile warning, the functions in
# those units (as clang reports them for front-end profiles; IR profiles'
# warnings carry no such total), functions whose profile no longer matches
# their code (-Wprofile-instr-out-of-date; for IR profiles "hash mismatch"
# under -Wbackend-plugin), functions without profile data
# (-Wprofile-instr-missing; IR: "No profile data available"), files without
# any (-Wprofile-instr-unprofiled).
_pgoCountWarnings() {
    awk '
        function value(line) {
            sub(/^[[:space:]]*<(string|integer)>/, "", line)
            sub(/<\/(string|integer)>[[:space:]]*$/, "", line)
            return line
        }
        function counted(message,   rest, words) {
            # "profile data may be out of date: of 12 functions, 3 have mismatched data …"
            rest = message
            sub(/^.*: of /, "", rest)
            split(rest, words, " ")
            if (words[1] + 0 > unitFunctions[unit]) unitFunctions[unit] = words[1] + 0
            warned[unit] = 1
            return words[3] + 0
        }
        /<key>main-file<\/key>/ { unit++; want = "file"; next }
        /<key>message<\/key>/ { want = "message"; next }
        /<key>WarningOption<\/key>/ { want = "option"; next }
        want != "" && /<(string|integer)>/ {
            v = value($0)
            if (want == "message") message = v
            else if (want == "option") {
                if (v == "profile-instr-out-of-date") mismatched += counted(message)
                else if (v == "profile-instr-missing") missing += counted(message)
                else if (v == "profile-instr-unprofiled") { unprofiled++; warned[unit] = 1 }
                # IR profiles: LLVM reports each function on its own, with no per-unit total.
                else if (v == "backend-plugin" && message ~ /hash mismatch/) { mismatched++; warned[unit] = 1 }
                else if (v == "backend-plugin" && message ~ /[Nn]o profile data available/) { missing++; warned[unit] = 1 }
            }
            want = ""
        }
        END {
            for (u in warned) { units++; total += unitFunctions[u] }
            printf "%d %d %d %d %d\n", units, total, mismatched, missing, unprofiled
        }
    ' "$1"
}

pgoWriteWarningsReport() {
    local counts="0 0 0 0 0" profileFunctions="" units functions mismatched missing unprofiled
    if [ -f "$_pgoDiagnosticsLog" ]; then
        counts=$(_pgoCountWarnings "$_pgoDiagnosticsLog")
    fi
    read -r units functions mismatched missing unprofiled <<<"$counts"
    if [ -n "${pgoLlvmProfdata:-}" ] && [ -x "$pgoLlvmProfdata" ]; then
        profileFunctions=$("$pgoLlvmProfdata" show "$pgoProfile" 2>/dev/null \
            | sed -n 's/^Total functions:[[:space:]]*\([0-9][0-9]*\).*$/\1/p') || true
    fi
    _pgoWriteToOutputs pgo-warnings.json "{\"version\": 1, \"name\": $(_pgoJsonString "${pname:-$name}"), \"variant\": \"optimize\", \"profile\": $(_pgoJsonString "$pgoProfile"), \"profile_functions\": ${profileFunctions:-null}, \"translation_units_warned\": $units, \"functions_in_warned_units\": $functions, \"mismatched_functions\": $mismatched, \"missing_functions\": $missing, \"unprofiled_files\": $unprofiled}"
    echo "pgo: profile $pgoProfile: $mismatched mismatched and $missing missing function(s), $unprofiled file(s) without data, in $units warned translation unit(s)"
}

case "${pgoVariant:-}" in
    profile | cs-profile)
        # Instrumented programs run by the build itself (test suites) write
        # here, not to the baked-in spool of whatever machine builds them,
        # at exit only: live reporting (stdenv-adapters/live) stays off, so a
        # test suite sees no extra thread and no live files.
        export LLVM_PROFILE_FILE="$_pgoBuildTop/pgo-build-%p.profraw"
        export PGOD_LIVE_INTERVAL_S=0
        postFixupHooks+=(pgoWriteProfileManifest)
        ;;
    optimize)
        preBuildHooks+=(pgoStartDiagnosticsLog)
        preInstallHooks+=(pgoStartDiagnosticsLog)
        postFixupHooks+=(pgoWriteWarningsReport)
        ;;
esac
