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

for file in "${files[@]}"; do
    dir=$(dirname "$file")
    in_fence=0
    n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        if [[ $line =~ ^[[:space:]]*(\`\`\`|~~~) ]]; then
            in_fence=$((1 - in_fence))
            continue
        fi
        ((in_fence)) && continue
        # [text](target)
        while IFS= read -r target; do
            [[ -n $target ]] || continue
            target=${target#*](}
            target=${target%)}
            target=${target%% *}
            case $target in
                http://* | https://* | mailto:* | '#'*) continue ;;
            esac
            path=${target%%#*}
            if ! exists_from "$dir" "$path"; then
                echo "$file:$n: link to missing file $target"
                bad=$((bad + 1))
            fi
        done < <(grep -oE '\]\([^)]+\)' <<<"$line" || true)
        # `file names`
        while IFS= read -r span; do
            [[ -n $span ]] || continue
            span=${span#\`}
            span=${span%\`}
            [[ $span =~ [][*\<\>{}\$[:space:]] ]] && continue
            [[ $span == /* || $span == ./* || $span == ../* ]] && continue
            if [[ $span =~ ^($TOP_DIRS)/ || $span =~ ^[A-Za-z0-9_./-]+\.($FILE_EXT)$ ]]; then
                path=${span%%:*}
                if ! exists_from "$dir" "$path"; then
                    echo "$file:$n: names missing file \`$span\`"
                    bad=$((bad + 1))
                fi
            fi
        done < <(grep -oE '`[^`]+`' <<<"$line" || true)
        # Markdown file names in prose ("see DESIGN.md"), outside code spans.
        while IFS= read -r name; do
            [[ -n $name ]] || continue
            name=${name#[[:space:](]}
            if ! exists_from "$dir" "$name"; then
                echo "$file:$n: names missing file $name"
                bad=$((bad + 1))
            fi
        done < <(sed -E 's/`[^`]*`//g; s/\]\([^)]*\)/]/g; s#https?://[^ )]*##g' <<<"$line" |
            grep -oE '(^|[[:space:](])[A-Za-z0-9_./-]+\.md\b' || true)
    done <"$file"
done

if ((bad)); then
    echo "check-links: $bad reference(s) to files that do not exist in this repository" >&2
    exit 1
fi
echo "check-links: ${#files[@]} files, every linked file exists"
