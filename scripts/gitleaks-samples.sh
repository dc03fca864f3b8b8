#!/usr/bin/env bash
# Regenerates tests/redact/gitleaks/ from gitleaks' sources at a pinned commit:
#   gitleaks.toml  gitleaks' default configuration (config/gitleaks.toml), with a
#                  provenance header; the test reads its rule ids
#   samples.json   every gitleaks rule's true and false positives, exactly as the
#                  rule's generator (cmd/generate/config/rules/*.go) validates them
#   LICENSE        gitleaks' MIT license
#
# A developer step, not run by CI (CI has no Go): needs git and Go >= 1.19, and
# network access to clone gitleaks and lucasjones/reggen (set GITLEAKS_REPO /
# REGGEN_REPO to local clones to work offline).
#
# How: gitleaks' rule generators call utils.Validate(rule, tps, fps) (and
# ValidateWithPaths); this script builds them with a utils/validate.go that records
# the samples instead of running gitleaks' detector, stub `config` and `regexp`
# packages (the generators only build rule structs), and a main that calls every
# generator of cmd/generate/config/main.go and prints the records as JSON. Random
# samples come from reggen (github.com/lucasjones/reggen, the version gitleaks' go.sum
# pins), patched to draw its seeds from a fixed sequence, so the output is
# reproducible; GenerateSampleSecrets' map of templates is sorted for the same
# reason. Nothing of gitleaks is committed but the configuration and its license.
set -euo pipefail

GITLEAKS_COMMIT=b58d3f102cf3a2c84cb7f923d05c25c9b1aed84b
REGGEN_COMMIT=37ba4fa293bb40d3e1d805ba3545bfaab688d669 # v0.0.0-20200904144131-37ba4fa293bb
GITLEAKS_REPO=${GITLEAKS_REPO:-https://github.com/gitleaks/gitleaks.git}
REGGEN_REPO=${REGGEN_REPO:-https://github.com/lucasjones/reggen.git}

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/tests/redact/gitleaks
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

checkout() { # repository commit directory
    git clone --quiet --no-checkout "$1" "$3"
    git -C "$3" -c advice.detachedHead=false checkout --quiet "$2"
}
checkout "$GITLEAKS_REPO" "$GITLEAKS_COMMIT" "$work/gitleaks"
checkout "$REGGEN_REPO" "$REGGEN_COMMIT" "$work/reggen"
gl=$work/gitleaks
mod=$work/module

# reggen: seeds from a fixed sequence instead of the clock.
sed -i 's/rand\.NewSource(time\.Now()\.UnixNano())/rand.NewSource(seedCounter())/' "$work/reggen/reggen.go"
cat >>"$work/reggen/reggen.go" <<'EOF'

// Patched for reproducible sample extraction: a fixed sequence of seeds.
var seedState int64 = 0x05EC2E75

func seedCounter() int64 { seedState++; _ = time.Now; return seedState }
EOF
grep -q 'rand.NewSource(seedCounter())' "$work/reggen/reggen.go"

mkdir -p "$mod/cmd/generate/config" "$mod/cmd/dump" "$mod/config" "$mod/regexp"
cp -r "$gl/cmd/generate/config/rules" "$gl/cmd/generate/config/utils" "$mod/cmd/generate/config/"
cp -r "$gl/cmd/generate/secrets" "$mod/cmd/generate/"
rm -f "$mod"/cmd/generate/config/utils/*_test.go "$mod/cmd/generate/config/rules/config.tmpl"

# GenerateSampleSecrets ranges over a map: sort its cases.
perl -0pi -e 's/import \(\n/import (\n\t"sort"\n/; s/(\t\tcases = append\(cases, replacer\.Replace\(v\)\)\n\t\}\n)/$1\tsort.Strings(cases)\n/' \
    "$mod/cmd/generate/config/utils/generate.go"
grep -q 'sort.Strings(cases)' "$mod/cmd/generate/config/utils/generate.go"

cat >"$mod/cmd/generate/config/utils/validate.go" <<'EOF'
package utils

import (
	"sort"

	"github.com/zricethezav/gitleaks/v8/config"
)

type Sample struct {
	Text string `json:"text"`
	Path string `json:"path,omitempty"`
}

type Record struct {
	RuleID string   `json:"rule"`
	TPs    []Sample `json:"tps"`
	FPs    []Sample `json:"fps"`
}

var Records []Record

func list(xs []string) []Sample {
	out := []Sample{}
	for _, x := range xs {
		out = append(out, Sample{Text: x})
	}
	return out
}

func paths(m map[string]string) []Sample {
	out := []Sample{}
	for p, x := range m {
		out = append(out, Sample{Text: x, Path: p})
	}
	return out
}

func sorted(xs []Sample) []Sample {
	sort.Slice(xs, func(i, j int) bool { return xs[i].Path+xs[i].Text < xs[j].Path+xs[j].Text })
	return xs
}

func Validate(rule config.Rule, truePositives []string, falsePositives []string) *config.Rule {
	Records = append(Records, Record{rule.RuleID, sorted(list(truePositives)), sorted(list(falsePositives))})
	return &rule
}

func ValidateWithPaths(rule config.Rule, truePositives map[string]string, falsePositives map[string]string) *config.Rule {
	Records = append(Records, Record{rule.RuleID, sorted(paths(truePositives)), sorted(paths(falsePositives))})
	return &rule
}
EOF

cat >"$mod/config/config.go" <<'EOF'
package config

import (
	"strings"

	"github.com/zricethezav/gitleaks/v8/regexp"
)

type AllowlistMatchCondition int

const (
	AllowlistMatchOr AllowlistMatchCondition = iota
	AllowlistMatchAnd
)

type Allowlist struct {
	Description    string
	MatchCondition AllowlistMatchCondition
	Commits        []string
	Paths          []*regexp.Regexp
	RegexTarget    string
	Regexes        []*regexp.Regexp
	StopWords      []string
}

type Rule struct {
	RuleID      string
	Description string
	Entropy     float64
	SecretGroup int
	Regex       *regexp.Regexp
	Path        *regexp.Regexp
	Tags        []string
	Keywords    []string
	Allowlists  []*Allowlist
	SkipReport  bool
}

func (a *Allowlist) ContainsStopWord(s string) (bool, string) {
	if a == nil || s == "" {
		return false, ""
	}
	s = strings.ToLower(s)
	for _, stopWord := range a.StopWords {
		if strings.Contains(s, stopWord) {
			return true, stopWord
		}
	}
	return false, ""
}
EOF

cat >"$mod/regexp/regexp.go" <<'EOF'
package regexp

import re "regexp"

type Regexp = re.Regexp

func MustCompile(s string) *Regexp { return re.MustCompile(s) }
EOF

# Every generator gitleaks' own config generator calls, in its order.
{
    cat <<'EOF'
package main

import (
	"encoding/json"
	"os"

	"github.com/zricethezav/gitleaks/v8/cmd/generate/config/rules"
	"github.com/zricethezav/gitleaks/v8/cmd/generate/config/utils"
	"github.com/zricethezav/gitleaks/v8/config"
)

func main() {
	_ = []*config.Rule{
EOF
    awk '/configRules := \[\]\*config\.Rule\{/ { on = 1; next } on && /^\t\}/ { exit } on { print }' \
        "$gl/cmd/generate/config/main.go"
    cat <<'EOF'
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(utils.Records)
}
EOF
} >"$mod/cmd/dump/main.go"

cat >"$mod/go.mod" <<'EOF'
module github.com/zricethezav/gitleaks/v8

go 1.19

require github.com/lucasjones/reggen v0.0.0-20200904144131-37ba4fa293bb

replace github.com/lucasjones/reggen => ../reggen
EOF
[ -f "$work/reggen/go.mod" ] || printf 'module github.com/lucasjones/reggen\n\ngo 1.14\n' >"$work/reggen/go.mod"

(cd "$mod" && GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off go build -o "$work/dump" ./cmd/dump)

mkdir -p "$out"
"$work/dump" >"$out/samples.json"
{
    cat <<EOF
# gitleaks' default configuration, vendored from
#   https://github.com/gitleaks/gitleaks/blob/$GITLEAKS_COMMIT/config/gitleaks.toml
# Copyright (c) 2019 Zachary Rice, MIT License (see LICENSE in this directory).
# Read by tests/redact/gitleaks.rs for the ids of gitleaks' default rules; every id
# must be mapped to a rule of ours (\`gitleaks = [...]\` in rules.toml) or excluded
# with a reason (exclusions.toml). Regenerated by scripts/gitleaks-samples.sh.

EOF
    cat "$gl/config/gitleaks.toml"
} >"$out/gitleaks.toml"
cp "$gl/LICENSE" "$out/LICENSE"
echo "wrote $out/samples.json, $out/gitleaks.toml and $out/LICENSE (gitleaks $GITLEAKS_COMMIT)"
