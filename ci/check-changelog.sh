#!/usr/bin/env bash
# Check CHANGELOG.md (Keep a Changelog form) before a release.
#
#   ci/check-changelog.sh            "## [Unreleased]" exists
#   ci/check-changelog.sh v1.2.3     "## [1.2.3] - YYYY-MM-DD" exists and lists changes,
#                                    and pyproject.toml's version is 1.2.3
#
# A tag is vMAJOR.MINOR.PATCH, optionally with a pre-release (v1.2.3-rc.1). In CI,
# pass the pushed tag (e.g. "$GITHUB_REF_NAME"). Exit 0 when fine, 1 when the
# changelog or version is not ready, 2 on a usage error.
#
# Environment (for tests): CHANGELOG_FILE, PYPROJECT_FILE (default: the repo's files).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
changelog=${CHANGELOG_FILE:-$root/CHANGELOG.md}
pyproject=${PYPROJECT_FILE:-$root/pyproject.toml}

fail() {
    printf 'check-changelog: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

case ${1-} in
-h | --help) usage ;;
esac
[[ $# -le 1 ]] || usage
tag=${1-}

[[ -f $changelog ]] || fail "$changelog not found"
grep -q '^# Changelog' "$changelog" || fail "$changelog: first heading should be '# Changelog'"
grep -q '^## \[Unreleased\]' "$changelog" ||
    fail "$changelog: no '## [Unreleased]' section (Keep a Changelog keeps one at the top)"

if [[ -z $tag ]]; then
    printf 'check-changelog: ok (%s has an [Unreleased] section)\n' "${changelog##*/}"
    exit 0
fi

semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$'
if [[ ! $tag =~ $semver ]]; then
    printf 'check-changelog: %s is not a release tag (want vMAJOR.MINOR.PATCH, e.g. v1.2.3)\n' "$tag" >&2
    exit 2
fi
version=${tag#v}
quoted=${version//./\\.}

header=$(grep -E "^## \[$quoted\]" "$changelog" || true)
[[ -n $header ]] || fail "$changelog: no '## [$version]' section for tag $tag"
[[ $(printf '%s\n' "$header" | wc -l) -eq 1 ]] || fail "$changelog: '## [$version]' appears more than once"
[[ $header =~ ^\#\#\ \[$quoted\]\ -\ [0-9]{4}-[0-9]{2}-[0-9]{2}[[:space:]]*$ ]] ||
    fail "$changelog: write the release date as '## [$version] - YYYY-MM-DD' (found '$header')"

# the section must say something: at least one list item before the next heading
entries=$(awk -v want="$header" '
    $0 == want { inside = 1; next }
    inside && /^## / { exit }
    inside && /^[[:space:]]*[-*] / { n++ }
    END { print n + 0 }
' "$changelog")
[[ $entries -gt 0 ]] || fail "$changelog: the [$version] section lists no changes"

[[ -f $pyproject ]] || fail "$pyproject not found"
declared=$(sed -n '/^\[project\]/,/^\[/ s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$pyproject" | head -n 1)
[[ $declared == "$version" ]] ||
    fail "pyproject.toml says version \"${declared:-?}\" but the tag is $tag: bump [project].version first"

printf 'check-changelog: ok (%s has [%s] with %s entr%s; pyproject.toml agrees)\n' \
    "${changelog##*/}" "$version" "$entries" "$([[ $entries -eq 1 ]] && echo y || echo ies)"
