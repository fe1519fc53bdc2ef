// Package golden compares a rollout record with a golden file in the
// calling package's testdata, after replacing what changes from run to run
// (IDs, times, durations, the owner) with placeholders. Run the tests with
// FLEETROLL_UPDATE_GOLDEN=1 to rewrite the files.
package golden

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var (
	timeRe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`)
	idRe   = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// Normalize returns the document with volatile values replaced.
func Normalize(t testing.TB, doc []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("golden: not JSON: %v\n%s", err, doc)
	}
	out, err := json.MarshalIndent(normalize("", v), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func normalize(key string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			x[k] = normalize(k, c)
		}
		return x
	case []any:
		for i, c := range x {
			x[i] = normalize(key, c)
		}
		return x
	case string:
		switch {
		case timeRe.MatchString(x):
			return "TIME"
		case idRe.MatchString(x):
			return "ID"
		case key == "by":
			return "BY"
		}
		return x
	case float64:
		if key == "stop_seconds" || key == "start_seconds" || key == "total_seconds" {
			return "SECONDS"
		}
		return x
	}
	return v
}

// Check compares doc with testdata/NAME after normalizing.
func Check(t testing.TB, name string, doc []byte) {
	t.Helper()
	got := Normalize(t, doc)
	file := filepath.Join("testdata", name)
	if os.Getenv("FLEETROLL_UPDATE_GOLDEN") != "" {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("golden %s: %v (FLEETROLL_UPDATE_GOLDEN=1 writes it)", file, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the record differs from %s:\n%s\nwant\n%s", file, got, want)
	}
}
