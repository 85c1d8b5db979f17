package envflag_test

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/envflag"
)

func TestName(t *testing.T) {
	if got := envflag.Name("limit-max-tensors"); got != "CONVERTER_LIMIT_MAX_TENSORS" {
		t.Errorf("Name = %q", got)
	}
}

// TestBind checks the precedence command line > environment > default, that only the named
// flags fall back, and that a bad value is an error naming its variable.
func TestBind(t *testing.T) {
	env := map[string]string{"CONVERTER_ADDR": "[::1]:1", "CONVERTER_WAIT": "2m", "CONVERTER_FORCE": "true", "CONVERTER_N": "3"}
	newSet := func(env map[string]string) (*flag.FlagSet, *string, *time.Duration, *bool, *int, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		addr := fs.String("addr", "127.0.0.1:0", "listen address")
		wait := fs.Duration("wait", time.Second, "wait")
		force := fs.Bool("force", false, "replace files")
		n := fs.Int("n", 1, "count")
		err := envflag.Bind(fs, func(k string) string { return env[k] }, "addr", "wait", "n")
		return fs, addr, wait, force, n, err
	}
	fs, addr, wait, force, n, err := newSet(env)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-n", "5"}); err != nil {
		t.Fatal(err)
	}
	if *addr != "[::1]:1" || *wait != 2*time.Minute || *force || *n != 5 {
		t.Errorf("addr %q wait %s force %v n %d; want the environment's addr and wait, force unbound, the flag's n", *addr, *wait, *force, *n)
	}
	if u := fs.Lookup("wait").Usage; !strings.Contains(u, "CONVERTER_WAIT") {
		t.Errorf("usage %q does not name its variable", u)
	}
	if _, _, _, _, _, err := newSet(map[string]string{"CONVERTER_WAIT": "soon", "CONVERTER_N": "x"}); err == nil ||
		!strings.Contains(err.Error(), "CONVERTER_WAIT") || !strings.Contains(err.Error(), "CONVERTER_N") {
		t.Errorf("bad values: %v; want an error naming both variables", err)
	}
}
