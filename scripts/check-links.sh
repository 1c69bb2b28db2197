#!/usr/bin/env bash
# Links in README.md and docs/*.md must name files that exist in this
# repository (`make lint`): the docs have to stand alone. Checked:
#   - Markdown links [text](target) that are not URLs or in-page anchors,
#     resolved from the linking file's directory (an anchor after # is
#     ignored);
#   - file names in code spans (`docs/api.md`, `deploy/dev.toml`, `API.md`):
#     a span naming a file by its extension, or a path under one of the
#     repository's top-level directories, resolved from the repository root
#     or the linking file's directory. Spans holding a glob, a placeholder
#     or a blank (`refs/heads/*`, `<name>.git`) are not file names.
# Prints every dangling one as FILE:LINE: TARGET and fails if there is any.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly TOP_DIRS='crates|docs|scripts|deploy|proto-schemas|migrations|tests|fuzz'
readonly FILE_EXT='md|toml|yaml|yml|rs|sh|sql|proto|py'

files=(README.md docs/*.md)
[[ $# -gt 0 ]] && files=("$@")
bad=0

exists_from() {
    local dir=$1 target=$2
    [[ -e $dir/$target || -e $target ]]
}

# candidates FILE: one "KIND<TAB>LINE<TAB>TARGET" per reference outside
# fenced code blocks (KIND: link, span or prose). One awk pass per file: a
# shell loop per line took half a minute on the docs.
candidates() {
    ${AWK:-awk} -v top="^($TOP_DIRS)/" -v ext="^[A-Za-z0-9_./-]+[.]($FILE_EXT)\$" '
        /^[ \t]*(```|~~~)/ { fence = !fence; next }
        fence { next }
        {
            line = $0
            rest = line
            while (match(rest, /\]\([^)]+\)/)) {
                t = substr(rest, RSTART + 2, RLENGTH - 3)
                sub(/ .*/, "", t)
                print "link\t" NR "\t" t
                rest = substr(rest, RSTART + RLENGTH)
            }
            rest = line
            while (match(rest, /`[^`]+`/)) {
                t = substr(rest, RSTART + 1, RLENGTH - 2)
                rest = substr(rest, RSTART + RLENGTH)
                if (t ~ /[][*<>{}$ \t]/ || t ~ /^(\/|\.\/|\.\.\/)/) continue
                if (t ~ top || t ~ ext) { sub(/:.*/, "", t); print "span\t" NR "\t" t }
            }
            # Prose .md names ("see DESIGN.md"): not in spans, links or URLs.
            rest = line
            gsub(/`[^`]*`/, "", rest)
            gsub(/\]\([^)]*\)/, "]", rest)
            gsub(/https?:\/\/[^ )]*/, "", rest)
            while (match(rest, /(^|[ \t(])[A-Za-z0-9_.\/-]+[.]md([^A-Za-z0-9_]|$)/)) {
                t = substr(rest, RSTART, RLENGTH)
                rest = substr(rest, RSTART + RLENGTH)
                sub(/^[ \t(]/, "", t)
                sub(/[^A-Za-z0-9_]$/, "", t)
                print "prose\t" NR "\t" t
            }
        }' "$1"
}

for file in "${files[@]}"; do
    dir=$(dirname "$file")
    while IFS=$'\t' read -r kind n target; do
        case $kind:$target in
            link:http://* | link:https://* | link:mailto:* | link:'#'*) continue ;;
        esac
        path=${target%%#*}
        exists_from "$dir" "$path" && continue
        case $kind in
            link) echo "$file:$n: link to missing file $target" ;;
            span) echo "$file:$n: names missing file \`$target\`" ;;
            prose) echo "$file:$n: names missing file $target" ;;
        esac
        bad=$((bad + 1))
    done < <(candidates "$file")
done

if ((bad)); then
    echo "check-links: $bad reference(s) to files that do not exist in this repository" >&2
    exit 1
fi
echo "check-links: ${#files[@]} files, every linked file exists"
